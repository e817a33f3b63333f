"""A damaged trace cache never gives a silently wrong selection (issue 15).

Each kind of damage ends in one of two outcomes, both tested here: the sampling run rebuilds
only the damaged part (re-samples exactly the problems of the damaged shard, and the selection
equals the undamaged one), or reading says so in one error naming the file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import zipfile

import pytest
import torch

from lightreasoner.core import files
from lightreasoner.sampling import sampler as sampling_mod
from lightreasoner.sampling import shards
from lightreasoner.sampling import trace_cache as tc
from lightreasoner.models.spec import ModelSpec
from lightreasoner.selection.select import select

from _tiny_pair import build_pair, problems

EXPERT = ModelSpec("tiny/expert-seed0")
AMATEUR = ModelSpec("tiny/amateur-seed1")
DATASET = {"name": "toy", "split": "train", "sha256": "0" * 16}
CFG = dict(max_new_tokens=5, alpha_min=0.1, max_candidates=12, vocab_chunk=4, batch_size=2, beta=0.4, alpha=0.2, first_step=1)
TRAINER = dict(accelerator="cpu", devices=1, enable_progress_bar=False)
PROBS = problems(6)  # three shards of two problems
IDS = [p.id for p in PROBS]


@pytest.fixture(scope="module")
def pair():
    return build_pair()


@pytest.fixture(scope="module")
def clean(pair, tmp_path_factory):
    """One undamaged cache, sampled once; each test copies it."""
    root = tmp_path_factory.mktemp("clean")
    cache = run(pair, root)
    return root, cache.key, {r["problem_id"]: r for r in cache.read(IDS)}


def run(pair, cache_dir, **over):
    tok, e, a = pair
    return sampling_mod.run_sampling(EXPERT, AMATEUR, PROBS, DATASET, {**CFG, **over}, cache_dir, trainer_kwargs=TRAINER, models=(e, a, tok))


@pytest.fixture
def cache_copy(clean, tmp_path):
    """A private copy of the clean cache: (cache dir, key dir, shard paths)."""
    import shutil

    root, key, _ = clean
    shutil.copytree(root, tmp_path / "c")
    key_dir = tmp_path / "c" / "traces" / key
    return tmp_path / "c", key_dir, sorted((key_dir / "shards").glob("*.pt"))


class Sampled:
    """The problem ids the sampler is asked for (no call: the cache was enough)."""

    def __init__(self, monkeypatch):
        self.ids: list[str] = []
        orig = sampling_mod.ContrastiveSampler.predict_step

        def wrapped(sampler, batch, batch_idx=0, dataloader_idx=0):
            self.ids += list(batch["problem_id"])
            return orig(sampler, batch, batch_idx, dataloader_idx)

        monkeypatch.setattr(sampling_mod.ContrastiveSampler, "predict_step", wrapped)


def shard_ids(path) -> list[str]:
    return torch.load(path, weights_only=True)["problem_ids"]


def assert_same_selection(records, reference, exact=True):
    """The same records (bit for bit when the batches are the same; else tokens and candidates
    equal, values within 1e-4), hence the same selection."""
    assert [r["problem_id"] for r in records] == IDS
    for r in records:
        ref = reference[r["problem_id"]]
        for k in ("trace_ids", "cand_ids", "cand_offsets"):
            assert torch.equal(r[k], ref[k]), k
        for k in ("kl", "cand_logp_e", "cand_logp_a"):
            if exact:
                assert torch.equal(r[k], ref[k]), k
            else:
                torch.testing.assert_close(r[k], ref[k], atol=1e-4, rtol=0)
    got = select(records, 0.0, 0.2, 0, 0.1)
    want = select([reference[i] for i in IDS], 0.0, 0.2, 0, 0.1)
    assert [s.steps.tolist() for s in got] == [s.steps.tolist() for s in want]


def flip_tensor_byte(path) -> None:
    """Change one byte inside the largest tensor of a shard; the zip stays loadable."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def damage(kind: str, path) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(512))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped byte":
        flip_tensor_byte(path)
    elif kind == "malformed record":  # shapes broken, digest recomputed: only the shape check sees it
        payload = torch.load(path, weights_only=True)
        payload["records"][0]["kl"] = payload["records"][0]["kl"][:-1]
        payload["digest"] = shards.records_digest(payload["problem_ids"], payload["records"])
        torch.save(payload, path)
    elif kind == "another key":
        payload = torch.load(path, weights_only=True)
        payload["key"] = "f" * 64
        torch.save(payload, path)
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "flipped byte", "malformed record", "another key"])
def test_damaged_shard_is_resampled_alone(pair, clean, cache_copy, monkeypatch, caplog, kind):
    cache_dir, key_dir, shards = cache_copy
    victim = shards[1]
    lost = shard_ids(victim)
    damage(kind, victim)
    sampled = Sampled(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="lightreasoner.sampling.shards"):
        cache = run(pair, cache_dir)
    assert sampled.ids == lost  # only the damaged shard's problems ran through the models again
    assert any("damaged shard" in r.getMessage() and victim.name in r.getMessage() for r in caplog.records)
    assert_same_selection(cache.read(IDS), clean[2])
    assert sorted(p.name for p in (key_dir / "shards").iterdir()) == [p.name for p in shards]  # rewritten in place, no leftovers
    assert not tc.TraceCache(key_dir).damaged


def test_a_flipped_byte_loads_without_error_so_only_the_digest_catches_it(cache_copy):
    """Why shards carry a digest: torch.load does not check the zip's CRCs."""
    _, key_dir, shards = cache_copy
    before = torch.load(shards[0], weights_only=True)
    flip_tensor_byte(shards[0])
    after = torch.load(shards[0], weights_only=True)  # no error ...
    changed = [k for r, s in zip(before["records"], after["records"]) for k in r if isinstance(r[k], torch.Tensor) and not torch.equal(r[k], s[k])]
    assert changed  # ... but a different value
    payload, problem = tc.TraceCache(key_dir).load_shard(shards[0])
    assert payload is None and "digest" in problem


def test_reading_a_shard_damaged_after_indexing_is_one_error_naming_it(cache_copy):
    _, key_dir, shards = cache_copy
    cache = tc.TraceCache(key_dir)
    cache.index()
    damage("truncated", shards[2])
    with pytest.raises(ValueError, match=rf"damaged shard .*{shards[2].name} \(unreadable") as err:
        cache.read(IDS)
    assert "\n" not in str(err.value)


def test_reading_problems_of_a_damaged_shard_names_the_shard(cache_copy):
    _, key_dir, shards = cache_copy
    damage("garbage", shards[0])
    cache = tc.TraceCache(key_dir)
    with pytest.raises(ValueError, match=rf"2 of 6 problems not sampled yet or unreadable.*damaged shard .*{shards[0].name}.*run the sample stage"):
        cache.read(IDS)
    assert cache.read(IDS[2:])  # the sound shards still read


def test_damaged_shard_of_another_batching_is_deleted_once_its_problems_are_resampled(pair, clean, cache_copy, monkeypatch):
    cache_dir, key_dir, shards = cache_copy
    lost = shard_ids(shards[1])  # problems 2 and 3: with batches of 3 they land in two new shards
    damage("garbage", shards[1])
    sampled = Sampled(monkeypatch)
    cache = run(pair, cache_dir, batch_size=3)
    assert sampled.ids == lost
    assert not shards[1].exists()  # deleted by the manifest writer, with a warning
    assert len(list((key_dir / "shards").glob("*.pt"))) == 4
    assert_same_selection(cache.read(IDS), clean[2], exact=False)  # other batches: padding moves the last bits


def test_listed_shard_missing_is_resampled_with_a_warning(pair, clean, cache_copy, monkeypatch, caplog):
    cache_dir, key_dir, shards = cache_copy
    assert sorted(json.loads((key_dir / "manifest.json").read_text())["shards"]) == [p.name for p in shards]
    lost = shard_ids(shards[2])
    shards[2].unlink()
    sampled = Sampled(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="lightreasoner.sampling.shards"):
        cache = run(pair, cache_dir)
    assert sampled.ids == lost
    assert any("listed in manifest.json are missing" in r.getMessage() and shards[2].name in r.getMessage() for r in caplog.records)
    assert_same_selection(cache.read(IDS), clean[2])


@pytest.mark.parametrize("garble", [None, b"{\"key\": ", b"\xff\xfe not text", b"[1, 2]"])
def test_missing_or_garbled_manifest_is_rebuilt_without_the_models_and_its_cost_is_unknown(pair, clean, cache_copy, monkeypatch, garble):
    cache_dir, key_dir, _ = cache_copy
    manifest = key_dir / "manifest.json"
    assert tc.TraceCache(key_dir).recorded_cost()["problems"] == 6
    if garble is None:
        manifest.unlink()
    else:
        manifest.write_bytes(garble)
    sampled = Sampled(monkeypatch)
    cache = run(pair, cache_dir)
    assert sampled.ids == []
    rebuilt = json.loads(manifest.read_text())
    assert rebuilt["counts"]["problems"] == 6 and rebuilt["runs_incomplete"] is True
    assert (key_dir / "manifest.json.damaged").exists() == (garble is not None)
    cost = cache.recorded_cost()
    assert cost["problems"] is None and cost["wall_s"] is None  # unknown, never a free-looking 0
    assert_same_selection(cache.read(IDS), clean[2])


def test_garbled_key_file_is_one_error_naming_it_and_sampling_rewrites_it(pair, cache_copy):
    cache_dir, key_dir, _ = cache_copy
    (key_dir / "key.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"key\.json is damaged"):
        tc.TraceCache.open(cache_dir, key_dir.name).alpha_min
    run(pair, cache_dir)
    assert tc.TraceCache.open(cache_dir, key_dir.name).alpha_min == CFG["alpha_min"]


def _no_space(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_sampling_leaves_no_file_that_looks_complete(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", _no_space)
    with pytest.raises(OSError, match=r"cannot write .*: No space left on device") as err:
        run(pair, tmp_path)
    assert err.value.errno == errno.ENOSPC
    key_dir = next((tmp_path / "traces").iterdir())
    assert [p.name for p in key_dir.rglob("*") if p.is_file() and p.name != ".lock"] == []  # no shard, no tmp, no manifest, no key.json
    monkeypatch.undo()
    assert len(run(pair, tmp_path).read(IDS)) == 6  # and the next run simply samples


def test_full_disk_at_the_manifest_keeps_the_shards_and_the_next_run_only_writes_it(pair, tmp_path, monkeypatch):
    real = shards.atomic_write_json

    def full(path, obj, **kw):
        if path.name == "manifest.json":
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        return real(path, obj, **kw)

    monkeypatch.setattr(shards, "atomic_write_json", full)
    with pytest.raises(OSError, match=r"manifest\.json: No space left"):
        run(pair, tmp_path)
    key_dir = next((tmp_path / "traces").iterdir())
    assert not (key_dir / "manifest.json").exists() and len(list((key_dir / "shards").glob("*.pt"))) == 3
    assert not [p for p in key_dir.rglob("*.tmp")]
    monkeypatch.undo()
    sampled = Sampled(monkeypatch)
    run(pair, tmp_path)
    assert sampled.ids == [] and (key_dir / "manifest.json").is_file()
