"""The scored-trace cache: resume, reuse across beta/alpha, keys, concurrency, bad input."""

import json
import threading
import time

import pytest
import torch

from lightreasoner.sampling import sampler as sampling_mod
from lightreasoner.sampling import trace_cache as tc
from lightreasoner.models.spec import ModelSpec
from lightreasoner.sampling.sampler import SamplingSettings
from lightreasoner.selection.select import select

from _tiny_pair import build_pair, problems

EXPERT = ModelSpec("tiny/expert-seed0")
AMATEUR = ModelSpec("tiny/amateur-seed1")
DATASET = {"name": "toy", "split": "train", "sha256": "0" * 16}
CFG = dict(max_new_tokens=6, alpha_min=0.1, max_candidates=12, vocab_chunk=4, batch_size=2, beta=0.4, alpha=0.2, first_step=1,
           system_prompt="Please reason step by step.")
TRAINER = dict(accelerator="cpu", devices=1, enable_progress_bar=False)


@pytest.fixture(scope="module")
def pair():
    return build_pair()


def run(pair, cache_dir, probs, **over):
    tok, e, a = pair
    return sampling_mod.run_sampling(EXPERT, AMATEUR, probs, DATASET, {**CFG, **over}, cache_dir, trainer_kwargs=TRAINER, models=(e, a, tok))


class CountCalls:
    """Counts predict_step calls (and problems), optionally failing on call number ``fail_at``."""

    def __init__(self, monkeypatch, fail_at=None):
        self.calls, self.problems = 0, 0
        orig = sampling_mod.ContrastiveSampler.predict_step

        def wrapped(sampler, batch, batch_idx=0, dataloader_idx=0):
            self.calls += 1
            if fail_at is not None and self.calls == fail_at:
                raise RuntimeError("simulated crash")
            self.problems += len(batch["problem_id"])
            return orig(sampler, batch, batch_idx, dataloader_idx)

        monkeypatch.setattr(sampling_mod.ContrastiveSampler, "predict_step", wrapped)


def assert_same_samples(recs_a, recs_b, beta=0.0, alpha=0.1):
    """The issue's equality: same kept steps and candidate ids; KL and weights within 1e-4."""
    sa, sb = select(recs_a, beta, alpha, 0, 0.1), select(recs_b, beta, alpha, 0, 0.1)
    assert [s.problem_id for s in sa] == [s.problem_id for s in sb]
    for x, y in zip(sa, sb):
        assert x.steps.tolist() == y.steps.tolist() and x.input_ids.tolist() == y.input_ids.tolist()
        torch.testing.assert_close(x.kl, y.kl, atol=1e-4, rtol=0)
        for i, j, w, v in zip(x.target_ids, y.target_ids, x.target_w, y.target_w):
            assert i.tolist() == j.tolist()
            torch.testing.assert_close(w, v, atol=1e-4, rtol=0)


def test_interrupted_run_resumes_to_the_same_samples(pair, tmp_path, monkeypatch):
    probs = problems(7)
    ids = [p.id for p in probs]
    full = run(pair, tmp_path / "a", probs)
    assert len(full.shard_paths()) == 4  # batches of 2 fixed by problem index: 2+2+2+1

    counter = CountCalls(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(pair, tmp_path / "b", probs)
    key_dir = tmp_path / "b" / "traces" / full.key
    assert len(list((key_dir / "shards").glob("*.pt"))) == 1  # the first batch was written as produced
    assert not (key_dir / "manifest.json").exists()

    counter = CountCalls(monkeypatch)
    resumed = run(pair, tmp_path / "b", probs)
    assert resumed.key == full.key
    assert counter.calls == 3 and counter.problems == 5  # only the missing problems
    assert_same_samples(full.read(ids), resumed.read(ids))
    # bit-for-bit the same traces here (same batches)
    for x, y in zip(full.read(ids), resumed.read(ids)):
        assert x["trace_ids"].tolist() == y["trace_ids"].tolist()


def test_beta_alpha_changes_reuse_traces_without_models(pair, tmp_path, monkeypatch):
    probs = problems(4)
    first = run(pair, tmp_path, probs)

    def boom(*a, **k):
        raise AssertionError("the models were called")

    monkeypatch.setattr(sampling_mod.ContrastiveSampler, "predict_step", boom)
    monkeypatch.setattr(sampling_mod.ContrastiveSampler, "configure_model", boom)
    again = run(pair, tmp_path, probs, beta=0.9, alpha=0.5, first_step=2, batch_size=3)
    assert again.key == first.key and again.path == first.path
    ids = [p.id for p in probs]
    loose = select(again.read(ids), 0.0, 0.1, 0, alpha_min=again.alpha_min)
    tight = select(again.read(ids), 0.9, 0.5, 2, alpha_min=again.alpha_min)
    n_loose, n_tight = sum(s.num_steps for s in loose), sum(s.num_steps for s in tight)
    assert n_loose == sum(len(r["kl"]) for r in again.read(ids))  # beta=0, first_step=0 keeps every step
    assert n_tight < n_loose


def test_more_problems_later_reuses_the_ones_done(pair, tmp_path, monkeypatch):
    run(pair, tmp_path, problems(3))
    counter = CountCalls(monkeypatch)
    cache = run(pair, tmp_path, problems(5))
    assert counter.problems == 2  # 3 and 4 only
    assert [r["problem_id"] for r in cache.read(["toy/train/4", "toy/train/0"])] == ["toy/train/4", "toy/train/0"]
    with pytest.raises(KeyError, match="not sampled"):
        cache.read(["toy/train/9"])


def test_key_changes_with_what_determines_the_traces(pair):
    tok, _, _ = pair
    base_settings = SamplingSettings.from_cfg(CFG)

    def key(expert=EXPERT, amateur=AMATEUR, dataset=DATASET, tokenizer=tok, **settings):
        s = SamplingSettings.from_cfg({**CFG, **settings})
        return tc.trace_key(tc.trace_key_fields(expert, amateur, dataset, tokenizer, s))

    k0 = key()
    assert k0 == tc.trace_key(tc.trace_key_fields(EXPERT, AMATEUR, DATASET, tok, base_settings))
    # not part of the key: selection and scheduling
    assert key(beta=0.1, alpha=0.9, first_step=3, batch_size=7, vocab_chunk=1) == k0
    # greedy ignores temperature/top_p/seed
    assert key(temperature=0.5, top_p=0.9, seed=3) == k0
    changed = [
        key(expert=ModelSpec("tiny/expert-seed2")),
        key(expert=ModelSpec("tiny/expert-seed0", revision="v2")),
        key(expert=ModelSpec("tiny/expert-seed0", dtype="bfloat16")),
        key(amateur=ModelSpec("tiny/amateur-seed9")),
        key(dataset={**DATASET, "split": "test"}),
        key(system_prompt="Think."),
        key(alpha_min=0.05),
        key(max_candidates=5),
        key(max_new_tokens=7),
        key(do_sample=True, seed=1),
    ]
    assert len(set(changed + [k0])) == len(changed) + 1
    # the chat template is part of the key
    import copy

    tok2 = copy.deepcopy(tok)
    tok2.chat_template = tok.chat_template.replace("<|im_start|>assistant", "<|im_start|>bot")
    assert key(tokenizer=tok2) != k0


def test_local_model_identity_changes_with_the_file(tmp_path):
    from lightreasoner.models import tiny

    tok = tiny.build_char_tokenizer()
    m = tiny.build_tiny_model(tok, seed=0, hidden_size=8, num_layers=1, num_heads=2)
    d = tiny.save_pair_member(m, tok, tmp_path / "m")
    ident = ModelSpec(str(d)).identity()
    with torch.no_grad():
        m.lm_head.weight.add_(1.0)
    time.sleep(0.01)
    tiny.save_pair_member(m, tok, d)
    assert ModelSpec(str(d)).identity() != ident


def test_manifest(pair, tmp_path):
    cache = run(pair, tmp_path, problems(3))
    man = json.loads((cache.path / "manifest.json").read_text())
    assert man["key"] == cache.key and man["key_fields"]["generation"]["alpha_min"] == 0.1
    assert man["counts"]["problems"] == 3 and man["counts"]["steps"] == sum(len(r["kl"]) for r in cache.read_all())
    # independent of any job's selection (issue 30): the kept fraction as a curve over beta
    curve = man["kept_step_fraction_by_beta"]
    assert "kept_step_fraction" not in man and "selection" not in man and curve["0.0"] >= curve["0.4"] >= curve["1.0"]
    assert set(man["kl"]) >= {"mean", "quantiles", "fraction_near_zero"}
    assert {"torch", "transformers", "lightning"} <= set(man["versions"])
    assert "git_commit" in man and man["created"] and man["updated"]
    run_info = man["runs"][-1]
    assert run_info["device"] == "cpu" and run_info["dtype"] == {"expert": "float32", "amateur": "float32"}
    assert run_info["sampled_problems"] == 3 and "seed" in run_info
    assert man["config"]["batch_size"] == 2
    assert cache.alpha_min == 0.1 and tc.TraceCache.open(tmp_path, cache.key).alpha_min == 0.1


def test_waits_for_a_concurrent_run_then_finds_everything_done(pair, tmp_path, monkeypatch):
    """Another run holds the key's lock; ours waits, then finds the traces and calls no model."""
    from filelock import FileLock

    probs = problems(3)
    ids = [p.id for p in probs]
    donor = run(pair, tmp_path / "donor", probs)
    records = donor.read(ids)
    key_dir = tmp_path / "shared" / "traces" / donor.key
    target = tc.TraceCache(key_dir, donor.key, donor.fields)
    target.init_dir()
    other = FileLock(str(target.lock_path))
    other.acquire()  # "the other sweep run" is sampling

    counter = CountCalls(monkeypatch)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("cache", run(pair, tmp_path / "shared", probs)))
    th.start()
    time.sleep(1.0)
    assert th.is_alive()  # waiting on the lock
    target.write_shard(records[:2])  # the other run publishes its batches ...
    target.write_shard(records[2:])
    other.release()  # ... and finishes
    th.join(timeout=60)
    assert not th.is_alive()
    assert counter.calls == 0
    assert [r["trace_ids"].tolist() for r in result["cache"].read(ids)] == [r["trace_ids"].tolist() for r in records]
    assert (key_dir / "manifest.json").is_file()


def test_publish_is_atomic(pair, tmp_path):
    probs = problems(2)
    cache = run(pair, tmp_path, probs)
    records = cache.read([p.id for p in probs])
    # a crashed writer's temporary file is invisible
    (cache.shard_dir / ".half-written.pt.123.abcd.tmp").write_bytes(b"\x00garbage")
    fresh = tc.TraceCache(cache.path)
    assert len(fresh.read([p.id for p in probs])) == 2
    # concurrent writers of the same shard: readers always see a complete file
    errors = []

    def writer():
        for _ in range(15):
            cache.write_shard(records)

    def reader():
        for _ in range(30):
            try:
                tc.TraceCache(cache.path).read([p.id for p in probs])
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=f) for f in (writer, writer, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in cache.shard_dir.iterdir() if p.name.endswith(".tmp")] == [".half-written.pt.123.abcd.tmp"]


@pytest.mark.parametrize(
    "over,field",
    [
        (dict(max_new_tokens=0), "sampling.max_new_tokens"),
        (dict(batch_size=0), "sampling.batch_size"),
    ],
)
def test_bad_input_writes_nothing(pair, tmp_path, monkeypatch, over, field):
    counter = CountCalls(monkeypatch)
    with pytest.raises(ValueError, match=field):
        run(pair, tmp_path / "cache", problems(2), **over)
    assert not (tmp_path / "cache").exists()
    assert counter.calls == 0


def test_alpha_below_cached_alpha_min_says_how_to_rescore(pair, tmp_path):
    cache = run(pair, tmp_path, problems(2))
    with pytest.raises(ValueError, match=r"alpha_min.*Re-score with sampling.alpha_min <= 0.05"):
        select(cache.read_all(), 0.4, 0.05, alpha_min=cache.alpha_min)


def test_alpha_zero_is_the_widest_candidate_set_the_cache_holds(pair, tmp_path):
    from lightreasoner.selection.select import SelectionSettings

    cache = run(pair, tmp_path, problems(3))
    assert SelectionSettings.from_cfg({"alpha": 0.0}, alpha_min=cache.alpha_min).alpha == cache.alpha_min
    with pytest.raises(ValueError, match="alpha_min"):
        SelectionSettings.from_cfg({"alpha": 0.0})
