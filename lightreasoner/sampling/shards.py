"""The shard store: per-problem records sampled batch by batch into ``{cache_dir}/{kind}/{key}/``.

Two stages keep what they sample here: the scored traces (``traces/``,
:class:`~lightreasoner.sampling.trace_cache.TraceCache`) and the SFT baseline's sampled solutions
(``sft_solutions/``, :class:`~lightreasoner.methods.sft.SolutionStore`). Layout of one key
directory::

    key.json        the key's fields (what determines the records), written once
    manifest.json   the records' statistics, the runs that sampled them and their cost, versions, timestamps
    .lock           filelock held while a run samples into this key
    shards/*.pt     one file per sampled batch: {"format_version", "key", "problem_ids", "records", "digest"}

The key is the sha256 of the canonical JSON of everything that determines the records
(:func:`store_key`). Records are stored and looked up per problem id, so sampling more problems
later reuses the ones already done. :func:`fill_missing` samples only the missing problems, in
batches fixed by problem index, under a lock per key; shards are written atomically (tmp file +
``os.replace``) as each batch is produced, so an interrupted run resumes with only the missing
batches and ends with the same records as an uninterrupted one.

A damaged store never gives silently wrong records. Each shard carries a sha256 of its problem
ids and record values (``digest``); reading checks it and the records' keys (and the shapes a
subclass checks, :meth:`ShardStore.malformed`). A shard that cannot be read, fails its digest,
holds another key's records or has malformed records is *damaged*: it is left out of the index
with a warning naming the file, so its problems count as not sampled and the next sampling run
re-samples exactly those (and deletes the damaged file when it writes the manifest);
:meth:`ShardStore.read` of such a problem is one ``ValueError`` naming the file. A shard the
manifest lists but that is gone is re-sampled the same way. A manifest that is not valid JSON is
moved aside (``manifest.json.damaged``) and rebuilt from the shards; the cost of runs it recorded
is then unknown (``runs_incomplete``), never 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from lightreasoner.core.files import atomic_write_bytes, atomic_write_json, canonical_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the record/shard format; part of every key."""


# ----------------------------------------------------------------------------- keys
def store_key(fields: Mapping) -> str:
    """sha256 (hex, 64 chars) of the canonical JSON of the key fields."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256[:16] of the tokenizer's vocabulary (token -> id) and special tokens."""
    h = hashlib.sha256()
    h.update(canonical_json(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])).encode())
    h.update(canonical_json(sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- shards
def _safe(s: str, n: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[-n:]


def shard_name(problem_ids: Sequence[str]) -> str:
    """File name of a shard, from the problems it holds (first, last, count, hash of all)."""
    h = hashlib.sha256("\x1f".join(problem_ids).encode()).hexdigest()[:12]
    return f"{_safe(problem_ids[0])}--{_safe(problem_ids[-1])}-n{len(problem_ids)}-{h}.pt"


def records_digest(problem_ids: Sequence[str], records: Sequence[Mapping]) -> str:
    """sha256 of a shard's problem ids and every record value (tensors: dtype, shape and raw
    bytes; other values: canonical JSON), stored in the shard so that any changed byte is found."""
    h = hashlib.sha256(canonical_json(list(problem_ids)).encode())
    for rec in records:
        _digest_value(h, rec)
    return h.hexdigest()


def _digest_value(h, v: Any) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        h.update(f"\x1dT{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(v, Mapping):
        h.update(b"\x1dD")
        for k in sorted(v):
            h.update(f"\x1e{k}\x1f".encode())
            _digest_value(h, v[k])
    elif isinstance(v, (list, tuple)):
        h.update(f"\x1dL{len(v)}".encode())
        for x in v:
            _digest_value(h, x)
    else:
        h.update(b"\x1dJ" + canonical_json(v).encode())


class CacheMiss(KeyError, ValueError):
    """Problems without a readable record (a ``KeyError`` for lookups, a ``ValueError`` for the
    command line's one-line error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShardStore:
    """One key directory ``{cache_dir}/{kind}/{key}`` of per-problem records in shards.

    A subclass names its ``kind`` (the directory under ``cache_dir``), the ``label`` and ``what``
    its messages use, the ``record_keys`` every record has, and may check a record's shapes
    (:meth:`malformed`) and give the manifest's statistics (:meth:`stats`)."""

    kind: str
    """The directory under ``cache_dir`` holding this store's key directories."""
    label: str
    """How messages name the store (``"trace cache"``)."""
    what: str
    """How messages name its records (``"scored traces"``)."""
    record_keys: tuple[str, ...]
    """The keys every stored record has (``problem_id`` among them)."""

    def __init__(
        self,
        path: str | os.PathLike,
        key: str | None = None,
        fields: Mapping | None = None,
        record_keys: Sequence[str] | None = None,
    ) -> None:
        if record_keys is not None:
            self.record_keys = tuple(record_keys)
        self.path = Path(path)
        """The key directory ``{cache_dir}/{kind}/{key}``."""
        self.key = key or self.path.name
        """The cache key (sha256 hex)."""
        self._fields = dict(fields) if fields is not None else None
        self.sampled_now = 0
        """Problems the producer sampled into this store in the current call (0: all cached)."""
        self._index: dict[str, Path] = {}
        self._indexed: set[str] = set()
        self.damaged: dict[str, tuple[tuple[int, int], str]] = {}
        """Damaged shards left out of the index: file name -> ((size, mtime_ns), what is wrong)."""
        self._listing_checked = False

    @classmethod
    def at(cls, cache_dir: str | os.PathLike, fields: Mapping, record_keys: Sequence[str] | None = None):
        """The key directory of ``fields`` under ``cache_dir`` (created when records are written)."""
        key = store_key(fields)
        return cls(Path(os.path.expanduser(cache_dir)) / cls.kind / key, key, fields, record_keys=record_keys)

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, key: str):
        """An existing key directory (error if there is none)."""
        path = Path(os.path.expanduser(cache_dir)) / cls.kind / key
        if not (path / "key.json").is_file():
            raise FileNotFoundError(f"{cls.label}: no {cls.what} under {path}")
        return cls(path, key)

    # -------------------------------------------------------------- metadata
    @property
    def shard_dir(self) -> Path:
        return self.path / "shards"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def fields(self) -> dict:
        """The key fields (from ``key.json`` when not given)."""
        if self._fields is None:
            p = self.path / "key.json"
            try:
                self._fields = json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.label}: {p} is damaged ({e}); delete {self.path} to sample these {self.what} again") from None
        return self._fields

    @property
    def manifest(self) -> dict:
        """``manifest.json`` ({} when absent). One that is not a JSON object is moved aside to
        ``manifest.json.damaged`` with a warning, so the next sampling run rebuilds it."""
        p = self.path / "manifest.json"
        if not p.is_file():
            return {}
        try:
            manifest = json.loads(p.read_text())
            if isinstance(manifest, dict):
                return manifest
            problem = f"a JSON {type(manifest).__name__}, not an object"
        except (ValueError, UnicodeDecodeError) as e:
            problem = str(e)
        log.warning("%s: %s is damaged (%s); moved aside to %s.damaged, rebuilt from the shards", self.label, p, problem, p.name)
        try:
            os.replace(p, p.with_name(p.name + ".damaged"))
        except OSError:
            pass  # another reader moved it first
        return {}

    def init_dir(self) -> None:
        """Create the directory and ``key.json`` (idempotent, atomic; a damaged ``key.json`` is rewritten)."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_key_file()

    def _ensure_key_file(self) -> None:
        p = self.path / "key.json"
        try:
            ok = json.loads(p.read_text()) == json.loads(canonical_json(self.fields))
        except (OSError, ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            if p.exists():
                log.warning("%s: %s is damaged; rewritten from the run's key fields", self.label, p)
            atomic_write_json(p, self.fields)

    # -------------------------------------------------------------- shards
    def malformed(self, rec: Mapping) -> str | None:
        """What is wrong with a stored record's values (None: nothing); the base store checks none."""
        return None

    def shard_paths(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        return sorted(p for p in self.shard_dir.iterdir() if p.suffix == ".pt" and not p.name.startswith(".") and p.is_file())

    def load_shard(self, path: Path, mmap: bool = False) -> tuple[dict | None, str | None]:
        """``(payload, None)`` for a sound shard, ``(None, what is wrong)`` for a damaged one:
        unreadable, another format or key, ids and records that disagree, a record without its
        keys or with malformed values (:meth:`malformed`), or content that fails the shard's digest."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - truncated zip, garbage, unpickling: all mean damaged
            return None, f"unreadable: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            return None, "not a shard of scored records"
        if payload.get("format_version") != FORMAT_VERSION:
            return None, f"format {payload.get('format_version')}, expected {FORMAT_VERSION}"
        if payload.get("key") != self.key:
            return None, f"holds the {self.what} of another key ({str(payload.get('key'))[:12]}...)"
        ids, records = payload.get("problem_ids"), payload["records"]
        if not isinstance(ids, list) or len(ids) != len(records):
            return None, "problem_ids and records disagree"
        for pid, rec in zip(ids, records):
            if not isinstance(rec, dict) or rec.get("problem_id") != pid:
                return None, f"the record for {pid!r} is not where problem_ids says"
            lacks = [k for k in self.record_keys if k not in rec]
            if lacks:
                return None, f"record {pid!r} lacks {lacks}"
            try:
                problem = self.malformed(rec)
            except Exception as e:  # noqa: BLE001
                problem = f"unreadable values ({type(e).__name__})"
            if problem:
                return None, f"record {pid!r}: {problem}"
        digest = payload.get("digest")
        if digest is not None and digest != records_digest(ids, records):
            return None, "content does not match its sha256 digest"
        return payload, None

    def index(self) -> dict[str, Path]:
        """problem id -> shard holding it (new shards are picked up on each call). Damaged
        shards are left out with a warning naming the file (see the module docstring)."""
        if not self._listing_checked:
            self._listing_checked = True
            if self._fields is not None and self.path.is_dir():
                self._ensure_key_file()
            listed = self.manifest.get("shards") or {}
            gone = sorted(name for name in listed if not (self.shard_dir / name).is_file())
            if gone:
                log.warning(
                    "%s %s: %d shard(s) listed in manifest.json are missing (%s); their problems will be sampled again",
                    self.label, self.path, len(gone), ", ".join(gone[:3]) + (" ..." if len(gone) > 3 else ""),
                )
        for p in self.shard_paths():
            if p.name in self._indexed:
                continue
            try:
                st = p.stat()
            except OSError:
                continue  # removed since the listing
            sig = (st.st_size, st.st_mtime_ns)
            if p.name in self.damaged and self.damaged[p.name][0] == sig:
                continue  # already reported, unchanged
            payload, problem = self.load_shard(p, mmap=True)
            if problem is not None:
                self.damaged[p.name] = (sig, problem)
                log.warning("%s: damaged shard %s (%s); its problems will be sampled again", self.label, p, problem)
                continue
            self.damaged.pop(p.name, None)
            for pid in payload["problem_ids"]:
                self._index.setdefault(pid, p)
            self._indexed.add(p.name)
        return self._index

    def done_ids(self) -> set[str]:
        return set(self.index())

    def missing(self, problem_ids: Sequence[str]) -> list[str]:
        """The ids (in the given order) with no stored record yet."""
        done = self.index()
        return [pid for pid in problem_ids if pid not in done]

    def write_shard(self, records: Sequence[Mapping]) -> Path:
        """Publish one batch of records atomically; returns the shard path."""
        if not records:
            raise ValueError(f"{self.label}: empty shard")
        for r in records:
            missing = [k for k in self.record_keys if k not in r]
            if missing:
                raise ValueError(f"{self.label}: record {r.get('problem_id')!r} lacks {missing}")
        ids = [str(r["problem_id"]) for r in records]
        payload = {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "problem_ids": ids,
            "records": [{k: _to_cpu(r[k]) for k in self.record_keys} for r in records],
        }
        payload["digest"] = records_digest(ids, payload["records"])
        buf = io.BytesIO()
        torch.save(payload, buf)
        path = self.shard_dir / shard_name(ids)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def read(self, problem_ids: Sequence[str]) -> list[dict]:
        """Records for ``problem_ids``, in that order (error naming any that are missing)."""
        index = self.index()
        missing = [pid for pid in problem_ids if pid not in index]
        if missing:
            damaged = "".join(f"; damaged shard {self.shard_dir / n} ({why})" for n, (_, why) in sorted(self.damaged.items())[:3])
            raise CacheMiss(
                f"{self.label} {self.path}: {len(missing)} of {len(problem_ids)} problems not sampled yet or unreadable "
                f"(e.g. {missing[:3]}){damaged}; run the sample stage to sample them"
            )
        by_shard: dict[Path, list[str]] = {}
        for pid in problem_ids:
            by_shard.setdefault(index[pid], []).append(pid)
        found: dict[str, dict] = {}
        for path, wanted in by_shard.items():
            payload, problem = self.load_shard(path)
            if problem is not None:
                raise ValueError(f"{self.label}: damaged shard {path} ({problem}); run the sample stage to sample its problems again")
            want = set(wanted)
            for rec in payload["records"]:
                if rec["problem_id"] in want:
                    found.setdefault(rec["problem_id"], rec)
        return [found[pid] for pid in problem_ids]

    def read_all(self) -> list[dict]:
        """Every stored record, in problem-id order."""
        return self.read(sorted(self.index()))

    # -------------------------------------------------------------- manifest
    def stats(self, records: Sequence[Mapping]) -> dict:
        """The manifest's statistics of the stored records (the base store: their count)."""
        return {"counts": {"problems": len(records)}}

    def write_manifest(self, config: Mapping, run_info: Mapping | None = None) -> dict:
        """Recompute the manifest over every stored record (:meth:`stats`) and publish it
        atomically; ``run_info`` (what this run sampled and what it cost) is appended to ``runs``."""
        stats = self.stats(self.read_all())
        old = self.manifest
        index = self.index()
        for name, (sig, problem) in sorted(self.damaged.items()):
            p = self.shard_dir / name
            try:
                st = p.stat()
                if (st.st_size, st.st_mtime_ns) == sig:
                    p.unlink()
                    log.warning("%s: deleted damaged shard %s (%s)", self.label, p, problem)
            except OSError:
                pass
        shards: dict[str, int] = {}
        for p in index.values():
            shards[p.name] = shards.get(p.name, 0) + 1
        # a manifest rebuilt over shards of runs it never recorded (damaged, or an interrupted
        # run) does not know what they cost: recorded_cost() then says unknown, not 0
        sampled = int((run_info or {}).get("sampled_problems") or 0)
        incomplete = bool(old.get("runs_incomplete")) or (not old.get("runs") and len(index) > sampled)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest = {
            "key": self.key,
            "format_version": FORMAT_VERSION,
            "key_fields": self.fields,
            "config": dict(config),
            **stats,
            "versions": library_versions(),
            "git_commit": git_commit(),
            "created": old.get("created", now),
            "updated": now,
            "runs": list(old.get("runs", [])) + ([dict(run_info)] if run_info else []),
            "runs_incomplete": incomplete,
            "shards": dict(sorted(shards.items())),
        }
        atomic_write_json(self.path / "manifest.json", manifest)
        return manifest

    def recorded_cost(self) -> dict:
        """What making this store cost, summed over the runs that sampled into it (from the
        manifest): ``{"problems", "generated_tokens", "wall_s", "cpu_s", "runs"}``. A run that
        reads the store reports this, marked as cached, so a warm run does not look free."""
        manifest = self.manifest
        runs = manifest.get("runs", [])
        total: dict[str, Any] = {"runs": len(runs)}
        for field, src, kind in (("problems", "sampled_problems", int), ("generated_tokens", "generated_tokens", int),
                                 ("wall_s", "wall_s", float), ("cpu_s", "cpu_s", float)):
            values = [r.get(src) for r in runs] + ([None] if manifest.get("runs_incomplete") or not runs else [])
            # a store made before a figure was recorded reports it as unknown, never as 0
            total[field] = None if any(v is None for v in values) else round(sum(kind(v) for v in values), 3)
        return total


def _to_cpu(x: Any) -> Any:
    return x.detach().cpu().contiguous() if isinstance(x, torch.Tensor) else x


# ----------------------------------------------------------------------------- sampling into a store
def fill_missing(
    store: ShardStore,
    problem_ids: Sequence[str],
    batch_size: int,
    sample: Callable[[list[list[int]]], Mapping | None],
    config: Mapping,
    lock: bool = True,
) -> dict | None:
    """Make sure every id of ``problem_ids`` has a record in ``store``; return its manifest.

    Only the ids without a readable record are sampled: ``sample(groups)`` gets them as groups of
    indices into ``problem_ids`` (batches of ``batch_size`` fixed by index, so a resumed run draws
    what an uninterrupted one would), writes their records into ``store`` and returns what the
    run adds to its entry in the manifest's ``runs`` (``generated_tokens`` at least), or None in a
    process that leaves the manifest to another (a DDP rank other than 0): ``fill_missing`` then
    returns None. With ``lock`` a filelock per key makes concurrent runs wait and then find the
    work done. The manifest (``config``, the store's statistics, this run's cost) is rewritten
    whenever something was missing."""
    n = len(problem_ids)
    if not store.missing(problem_ids) and (store.path / "manifest.json").is_file():
        log.info("%s %s: all %d problems already sampled", store.label, store.key[:12], n)
        return store.manifest
    store.init_dir()
    with FileLock(str(store.lock_path)) if lock else contextlib.nullcontext():
        missing = set(store.missing(problem_ids))
        run_info = None
        if missing:
            groups = [[i for i in range(s, min(s + batch_size, n)) if problem_ids[i] in missing] for s in range(0, n, batch_size)]
            groups = [g for g in groups if g]
            log.info("%s %s: sampling %d of %d problems in %d batches", store.label, store.key[:12], len(missing), n, len(groups))
            t0, c0 = time.time(), time.process_time()
            extra = sample(groups)
            if extra is None:
                return None
            run_info = {
                "sampled_problems": len(missing),
                **extra,
                "wall_s": round(time.time() - t0, 3),
                "cpu_s": round(time.process_time() - c0, 3),  # this process (rank 0) only
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            store.sampled_now = len(missing)
        still = store.missing(problem_ids)
        if still:
            raise RuntimeError(f"{store.label} {store.path}: {len(still)} problems still missing after sampling (e.g. {still[:3]})")
        return store.write_manifest(config, run_info)


# ----------------------------------------------------------------------------- provenance
def library_versions() -> dict:
    import lightning
    import transformers

    from lightreasoner import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "lightreasoner": __version__,
    }


def git_commit() -> str | None:
    """The checkout's HEAD commit (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None
