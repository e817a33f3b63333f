"""The scored-trace cache: ``{cache_dir}/traces/{key}/``.

Layout of one key directory::

    key.json        the key's fields (what determines the traces), written once
    manifest.json   counts, KL statistics, kept-step fractions, versions, device, timestamps
    .lock           filelock held while a run samples into this key
    shards/*.pt     one file per sampled batch: {"format_version", "key", "problem_ids", "records"}

The key is the sha256 of the canonical JSON of everything that determines the scored traces
(:func:`trace_key_fields`): both models' ``ModelSpec.identity()`` (dtype included), the
tokenizer's vocabulary, the dataset identity, the prompt template fingerprint and system
prompt, the generation settings, ``alpha_min``, ``max_candidates`` and
:data:`FORMAT_VERSION` — not ``beta``/``alpha``/``first_step``/batch size, which only matter
when samples are read (:mod:`lightreasoner.selection.select`).

Records are stored and looked up per problem id, so sampling more problems later reuses the
ones already done. Shards are written batch by batch as the sampler produces them (the
``sampling.TraceWriter`` prediction-writer callback; each DDP rank writes its own), atomically (tmp
file + ``os.replace``), and batches are fixed by problem index, so an interrupted run resumes
with only the missing batches and ends with the same samples as an uninterrupted one.

A damaged cache never gives a silently wrong selection. Each shard carries a sha256 of its
problem ids and record values (``digest``); reading checks it and the records' shapes. A shard
that cannot be read, fails its digest, holds another key's traces or has malformed records is
*damaged*: it is left out of the index with a warning naming the file, so its problems count as
not sampled and the next sampling run re-samples exactly those (and deletes the damaged file
when it writes the manifest); :meth:`TraceCache.read` of such a problem is one ``ValueError``
naming the file. A shard the manifest lists but that is gone is re-sampled the same way. A
manifest that is not valid JSON is moved aside (``manifest.json.damaged``) and rebuilt from
the shards; the cost of runs it recorded is then unknown (``runs_incomplete``), never 0.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lightreasoner.core import alignment

from lightreasoner.core import contrast
from lightreasoner.core.files import atomic_write_bytes, atomic_write_json, canonical_json
from lightreasoner.models.spec import ModelSpec
from lightreasoner.data.prompts import template_fingerprint
from lightreasoner.data.records import SCORED_TRACE_KEYS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the scored-trace record/shard format; part of every key."""

KL_NEAR_ZERO = 0.01
"""KL below this counts as "near zero" in the manifest's statistics."""

MANIFEST_BETAS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Betas at which the manifest reports the kept-step fraction (besides the configured one)."""


# ----------------------------------------------------------------------------- keys
def tokenizer_fingerprint(tokenizer) -> str:
    """sha256[:16] of the tokenizer's vocabulary (token -> id) and special tokens."""
    h = hashlib.sha256()
    h.update(canonical_json(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])).encode())
    h.update(canonical_json(sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))).encode())
    return h.hexdigest()[:16]


def trace_key_fields(
    expert: ModelSpec,
    amateur: ModelSpec,
    dataset_identity: Mapping,
    tokenizer,
    settings: Any,
    engine: Mapping | None = None,
    pair: Mapping | None = None,
) -> dict:
    """Everything that determines the scored traces (and nothing that does not).

    ``settings`` is the run's ``sampling.SamplingSettings`` (its ``key_fields()`` and
    ``system_prompt``); ``engine`` the generation engine's key identity
    (``generation.engine_key``), absent for transformers at the model's precision, so caches
    made before engines were configurable keep their keys; ``pair`` the pair's kind
    (``pairs.PairSettings.key_fields``: a non-``shared`` alignment, an ``early_exit`` amateur
    and its layer), absent for the default pair for the same reason."""
    fields = {
        "format_version": FORMAT_VERSION,
        "expert": expert.identity(),
        "amateur": amateur.identity(),
        "dataset": json.loads(canonical_json(dict(dataset_identity))),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt_template": template_fingerprint(tokenizer, settings.system_prompt),
        "system_prompt": settings.system_prompt or "",
        "generation": settings.key_fields(),
    }
    if engine is not None:
        fields["engine"] = dict(engine)
    if pair:
        fields["pair"] = json.loads(canonical_json(dict(pair)))
    return fields


def trace_key(fields: Mapping) -> str:
    """sha256 (hex, 64 chars) of the canonical JSON of the key fields."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


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


def record_problem(rec: Mapping) -> str | None:
    """What is wrong with a stored scored trace's shapes (None: nothing), so a malformed record
    is never read as a shorter or shifted trace."""
    t = rec["trace_ids"]
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        return "trace_ids is not a 1-D tensor"
    steps = t.numel()
    for k in ("kl", "max_logp_e"):
        if not isinstance(rec[k], torch.Tensor) or rec[k].shape != (steps,):
            return f"{k} does not have one value per step ({steps})"
    off = rec["cand_offsets"]
    if not isinstance(off, torch.Tensor) or off.shape != (steps + 1,):
        return f"cand_offsets does not have {steps + 1} entries"
    n = int(off[-1])
    if int(off[0]) != 0 or bool((off[1:] < off[:-1]).any()):
        return "cand_offsets do not rise from 0"
    for k in ("cand_ids", "cand_logp_e", "cand_logp_a"):
        if not isinstance(rec[k], torch.Tensor) or rec[k].shape != (n,):
            return f"{k} does not have the {n} entries cand_offsets count"
    return None


class CacheMiss(KeyError, ValueError):
    """Problems without a readable record (a ``KeyError`` for lookups, a ``ValueError`` for the
    command line's one-line error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TraceCache:
    """One key directory of the scored-trace cache."""

    def __init__(
        self,
        path: str | os.PathLike,
        key: str | None = None,
        fields: Mapping | None = None,
        record_keys: Sequence[str] = SCORED_TRACE_KEYS,
    ) -> None:
        self.record_keys = tuple(record_keys)
        """The keys every stored record has (scored traces by default; the SFT baseline's
        sampled solutions use the same store with their own keys)."""
        self.path = Path(path)
        """The key directory ``{cache_dir}/traces/{key}``."""
        self.key = key or self.path.name
        """The cache key (sha256 hex)."""
        self._fields = dict(fields) if fields is not None else None
        self.sampled_now = 0
        """Problems the producer sampled into this cache in the current call (0: all cached)."""
        self._index: dict[str, Path] = {}
        self._indexed: set[str] = set()
        self.damaged: dict[str, tuple[tuple[int, int], str]] = {}
        """Damaged shards left out of the index: file name -> ((size, mtime_ns), what is wrong)."""
        self._listing_checked = False

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, key: str) -> "TraceCache":
        """An existing key directory (error if there is none)."""
        path = Path(os.path.expanduser(cache_dir)) / "traces" / key
        if not (path / "key.json").is_file():
            raise FileNotFoundError(f"trace cache: no scored traces under {path}")
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
                raise ValueError(f"trace cache: {p} is damaged ({e}); delete {self.path} to sample these traces again") from None
        return self._fields

    @property
    def alpha_min(self) -> float:
        """The smallest alpha the stored candidates support."""
        return float(self.fields["generation"]["alpha_min"])

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
        log.warning("trace cache: %s is damaged (%s); moved aside to %s.damaged, rebuilt from the shards", p, problem, p.name)
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
                log.warning("trace cache: %s is damaged; rewritten from the run's key fields", p)
            atomic_write_json(p, self.fields)

    # -------------------------------------------------------------- shards
    def shard_paths(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        return sorted(p for p in self.shard_dir.iterdir() if p.suffix == ".pt" and not p.name.startswith(".") and p.is_file())

    def load_shard(self, path: Path, mmap: bool = False) -> tuple[dict | None, str | None]:
        """``(payload, None)`` for a sound shard, ``(None, what is wrong)`` for a damaged one:
        unreadable, another format or key, ids and records that disagree, a record without its
        keys or with malformed shapes, or content that fails the shard's digest."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - truncated zip, garbage, unpickling: all mean damaged
            return None, f"unreadable: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            return None, "not a shard of scored records"
        if payload.get("format_version") != FORMAT_VERSION:
            return None, f"format {payload.get('format_version')}, expected {FORMAT_VERSION}"
        if payload.get("key") != self.key:
            return None, f"holds the traces of another key ({str(payload.get('key'))[:12]}...)"
        ids, records = payload.get("problem_ids"), payload["records"]
        if not isinstance(ids, list) or len(ids) != len(records):
            return None, "problem_ids and records disagree"
        for pid, rec in zip(ids, records):
            if not isinstance(rec, dict) or rec.get("problem_id") != pid:
                return None, f"the record for {pid!r} is not where problem_ids says"
            lacks = [k for k in self.record_keys if k not in rec]
            if lacks:
                return None, f"record {pid!r} lacks {lacks}"
            if set(SCORED_TRACE_KEYS) <= set(rec):
                try:
                    problem = record_problem(rec)
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
                    "trace cache %s: %d shard(s) listed in manifest.json are missing (%s); their problems will be sampled again",
                    self.path, len(gone), ", ".join(gone[:3]) + (" ..." if len(gone) > 3 else ""),
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
                log.warning("trace cache: damaged shard %s (%s); its problems will be sampled again", p, problem)
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
        """Publish one batch of scored traces atomically; returns the shard path."""
        if not records:
            raise ValueError("trace cache: empty shard")
        for r in records:
            missing = [k for k in self.record_keys if k not in r]
            if missing:
                raise ValueError(f"trace cache: record {r.get('problem_id')!r} lacks {missing}")
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
        """Scored traces for ``problem_ids``, in that order (error naming any that are missing)."""
        index = self.index()
        missing = [pid for pid in problem_ids if pid not in index]
        if missing:
            damaged = "".join(f"; damaged shard {self.shard_dir / n} ({why})" for n, (_, why) in sorted(self.damaged.items())[:3])
            raise CacheMiss(
                f"trace cache {self.path}: {len(missing)} of {len(problem_ids)} problems not sampled yet or unreadable "
                f"(e.g. {missing[:3]}){damaged}; run the sample stage to sample them"
            )
        by_shard: dict[Path, list[str]] = {}
        for pid in problem_ids:
            by_shard.setdefault(index[pid], []).append(pid)
        found: dict[str, dict] = {}
        for path, wanted in by_shard.items():
            payload, problem = self.load_shard(path)
            if problem is not None:
                raise ValueError(f"trace cache: damaged shard {path} ({problem}); run the sample stage to sample its problems again")
            want = set(wanted)
            for rec in payload["records"]:
                if rec["problem_id"] in want:
                    found.setdefault(rec["problem_id"], rec)
        return [found[pid] for pid in problem_ids]

    def read_all(self) -> list[dict]:
        """Every stored scored trace, in problem-id order."""
        return self.read(sorted(self.index()))

    # -------------------------------------------------------------- manifest
    def write_manifest(self, config: Mapping, run_info: Mapping | None = None, stats: Mapping | None = None) -> dict:
        """Recompute the manifest over every stored record and publish it atomically.

        ``stats`` are the record statistics (default: :func:`scored_trace_stats` of the scored
        traces); ``run_info`` (what this run sampled and what it cost) is appended to ``runs``.
        """
        if stats is None:
            stats = scored_trace_stats(self.read_all())
        old = self.manifest
        index = self.index()
        for name, (sig, problem) in sorted(self.damaged.items()):
            p = self.shard_dir / name
            try:
                st = p.stat()
                if (st.st_size, st.st_mtime_ns) == sig:
                    p.unlink()
                    log.warning("trace cache: deleted damaged shard %s (%s)", p, problem)
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
        """What making this cache cost, summed over the runs that sampled into it (from the
        manifest): ``{"problems", "generated_tokens", "wall_s", "cpu_s", "runs"}``. A run that
        reads the cache reports this, marked as cached, so a warm run does not look free."""
        manifest = self.manifest
        runs = manifest.get("runs", [])
        total: dict[str, Any] = {"runs": len(runs)}
        for field, src, kind in (("problems", "sampled_problems", int), ("generated_tokens", "generated_tokens", int),
                                 ("wall_s", "wall_s", float), ("cpu_s", "cpu_s", float)):
            values = [r.get(src) for r in runs] + ([None] if manifest.get("runs_incomplete") or not runs else [])
            # a cache made before a figure was recorded reports it as unknown, never as 0
            total[field] = None if any(v is None for v in values) else round(sum(kind(v) for v in values), 3)
        return total


def _to_cpu(x: Any) -> Any:
    return x.detach().cpu().contiguous() if isinstance(x, torch.Tensor) else x


# ----------------------------------------------------------------------------- statistics
REFERENCE_SELECTION = {"beta": 0.4, "first_step": 1}
"""Where the manifest measures what depends on a selection (the cross-tokenizer coverage at kept
steps): the published beta, fixed, never a job's own (a run records its own in its summary)."""


def scored_trace_stats(records: Sequence[Mapping]) -> dict:
    """The manifest's statistics of scored traces, independent of any job's selection: counts,
    KL quantiles, the kept-step fraction as a curve over :data:`MANIFEST_BETAS` (from step 1),
    and for a cross-tokenizer pair (records with ``aligned_mass``) its coverage
    (:func:`lightreasoner.core.alignment.coverage`) at :data:`REFERENCE_SELECTION`."""
    first = REFERENCE_SELECTION["first_step"]
    stats = {
        "counts": trace_counts(records),
        "kl": kl_statistics(records),
        "kept_step_fraction_by_beta": {str(b): kept_fraction(records, b, first) for b in MANIFEST_BETAS},
    }
    if records and all(alignment.ALIGNMENT_KEYS[0] in r for r in records):
        stats["coverage"] = alignment.coverage(records, REFERENCE_SELECTION["beta"], first)
        stats["coverage_selection"] = dict(REFERENCE_SELECTION)
    return stats


def trace_counts(records: Sequence[Mapping]) -> dict:
    steps = sum(int(r["kl"].numel()) for r in records)
    return {
        "problems": len(records),
        "steps": steps,
        "finished": sum(bool(r["finished"]) for r in records),
        "mean_steps_per_trace": steps / len(records) if records else 0.0,
        "candidates": sum(int(r["cand_ids"].numel()) for r in records),
    }


def kl_statistics(records: Sequence[Mapping]) -> dict:
    if not records:
        return {}
    kl = torch.cat([r["kl"].float() for r in records])
    kl = kl[~torch.isnan(kl)]  # steps a cross-tokenizer pair does not score
    if kl.numel() == 0:
        return {}
    qs = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    qv = torch.quantile(kl.double(), torch.tensor(qs, dtype=torch.double)).tolist()
    return {
        "mean": float(kl.mean()),
        "max": float(kl.max()),
        "quantiles": {str(q): float(v) for q, v in zip(qs, qv)},
        "near_zero_threshold": KL_NEAR_ZERO,
        "fraction_near_zero": float((kl < KL_NEAR_ZERO).float().mean()),
    }


def kept_fraction(records: Sequence[Mapping], beta: float, first_step: int = 1) -> float:
    """Fraction of all steps with ``KL >= beta`` and ``t >= first_step``."""
    total = sum(int(r["kl"].numel()) for r in records)
    if total == 0:
        return 0.0
    kept = sum(int(contrast.keep_steps(r["kl"], beta, first_step).sum()) for r in records)
    return kept / total


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
