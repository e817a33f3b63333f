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
when samples are read (:mod:`lightreasoner.selection`).

Records are stored and looked up per problem id, so sampling more problems later reuses the
ones already done. Shards are written batch by batch as the sampler produces them (a
``TraceWriter`` prediction-writer callback; each DDP rank writes its own), atomically (tmp
file + ``os.replace``), and batches are fixed by problem index, so an interrupted run resumes
with only the missing batches and ends with the same samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import re
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from .models import ModelSpec, check_pair_tokenizers, load_tokenizer
from .prompts import encode_prompts, template_fingerprint
from .records import SCORED_TRACE_KEYS, Problem
from .sampling import ContrastiveSampler, SamplingSettings, make_batch, question_sha

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the scored-trace record/shard format; part of every key."""

KL_NEAR_ZERO = 0.01
"""KL below this counts as "near zero" in the manifest's statistics."""

MANIFEST_BETAS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Betas at which the manifest reports the kept-step fraction (besides the configured one)."""


# ----------------------------------------------------------------------------- keys
def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


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
    settings: SamplingSettings,
) -> dict:
    """Everything that determines the scored traces (and nothing that does not)."""
    return {
        "format_version": FORMAT_VERSION,
        "expert": expert.identity(),
        "amateur": amateur.identity(),
        "dataset": json.loads(canonical_json(dict(dataset_identity))),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt_template": template_fingerprint(tokenizer, settings.system_prompt),
        "system_prompt": settings.system_prompt or "",
        "generation": settings.key_fields(),
    }


def trace_key(fields: Mapping) -> str:
    """sha256 (hex, 64 chars) of the canonical JSON of the key fields."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


# ----------------------------------------------------------------------------- files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _safe(s: str, n: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[-n:]


def shard_name(problem_ids: Sequence[str]) -> str:
    """File name of a shard, from the problems it holds (first, last, count, hash of all)."""
    h = hashlib.sha256("\x1f".join(problem_ids).encode()).hexdigest()[:12]
    return f"{_safe(problem_ids[0])}--{_safe(problem_ids[-1])}-n{len(problem_ids)}-{h}.pt"


class TraceCache:
    """One key directory of the scored-trace cache."""

    def __init__(self, path: str | os.PathLike, key: str | None = None, fields: Mapping | None = None) -> None:
        self.path = Path(path)
        """The key directory ``{cache_dir}/traces/{key}``."""
        self.key = key or self.path.name
        """The cache key (sha256 hex)."""
        self._fields = dict(fields) if fields is not None else None
        self._index: dict[str, Path] = {}
        self._indexed: set[str] = set()

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
            self._fields = json.loads((self.path / "key.json").read_text())
        return self._fields

    @property
    def alpha_min(self) -> float:
        """The smallest alpha the stored candidates support."""
        return float(self.fields["generation"]["alpha_min"])

    @property
    def manifest(self) -> dict:
        p = self.path / "manifest.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def init_dir(self) -> None:
        """Create the directory and ``key.json`` (idempotent, atomic)."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        if not (self.path / "key.json").is_file():
            atomic_write_json(self.path / "key.json", self.fields)

    # -------------------------------------------------------------- shards
    def shard_paths(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        return sorted(p for p in self.shard_dir.iterdir() if p.suffix == ".pt" and not p.name.startswith("."))

    def index(self) -> dict[str, Path]:
        """problem id -> shard holding it (new shards are picked up on each call)."""
        for p in self.shard_paths():
            if p.name in self._indexed:
                continue
            payload = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
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
            missing = [k for k in SCORED_TRACE_KEYS if k not in r]
            if missing:
                raise ValueError(f"trace cache: scored trace {r.get('problem_id')!r} lacks {missing}")
        ids = [str(r["problem_id"]) for r in records]
        payload = {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "problem_ids": ids,
            "records": [{k: _to_cpu(r[k]) for k in SCORED_TRACE_KEYS} for r in records],
        }
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
            raise KeyError(
                f"trace cache {self.path}: {len(missing)} of {len(problem_ids)} problems not sampled yet "
                f"(e.g. {missing[:3]}); run the sample stage for them"
            )
        by_shard: dict[Path, list[str]] = {}
        for pid in problem_ids:
            by_shard.setdefault(index[pid], []).append(pid)
        found: dict[str, dict] = {}
        for path, wanted in by_shard.items():
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"trace cache: {path} has format {payload.get('format_version')}, expected {FORMAT_VERSION}")
            want = set(wanted)
            for rec in payload["records"]:
                if rec["problem_id"] in want:
                    found.setdefault(rec["problem_id"], rec)
        return [found[pid] for pid in problem_ids]

    def read_all(self) -> list[dict]:
        """Every stored scored trace, in problem-id order."""
        return self.read(sorted(self.index()))

    def select(self, beta: float, alpha: float, first_step: int = 1, problem_ids: Sequence[str] | None = None):
        """:func:`selection.select` over the cached traces (all, or ``problem_ids`` in order)."""
        from .selection import select

        records = self.read(problem_ids) if problem_ids is not None else self.read_all()
        return select(records, beta=beta, alpha=alpha, first_step=first_step, alpha_min=self.alpha_min)

    # -------------------------------------------------------------- manifest
    def write_manifest(self, config: Mapping, run_info: Mapping | None = None) -> dict:
        """Recompute the manifest over every stored trace and publish it atomically."""
        records = self.read_all()
        beta = float(config.get("beta", 0.4))
        first_step = int(config.get("first_step", 1))
        old = self.manifest
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest = {
            "key": self.key,
            "format_version": FORMAT_VERSION,
            "key_fields": self.fields,
            "config": dict(config),
            "counts": trace_counts(records),
            "kl": kl_statistics(records),
            "kept_step_fraction": kept_fraction(records, beta, first_step),
            "kept_step_fraction_by_beta": {str(b): kept_fraction(records, b, first_step) for b in MANIFEST_BETAS},
            "selection": {"beta": beta, "first_step": first_step},
            "versions": library_versions(),
            "git_commit": git_commit(),
            "created": old.get("created", now),
            "updated": now,
            "runs": list(old.get("runs", [])) + ([dict(run_info)] if run_info else []),
        }
        atomic_write_json(self.path / "manifest.json", manifest)
        return manifest


def _to_cpu(x: Any) -> Any:
    return x.detach().cpu().contiguous() if isinstance(x, torch.Tensor) else x


# ----------------------------------------------------------------------------- statistics
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
    from . import contrast

    total = sum(int(r["kl"].numel()) for r in records)
    if total == 0:
        return 0.0
    kept = sum(int(contrast.keep_steps(r["kl"], beta, first_step).sum()) for r in records)
    return kept / total


def library_versions() -> dict:
    import lightning
    import transformers

    from . import __version__

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


# ----------------------------------------------------------------------------- writing
class TraceWriter(BasePredictionWriter):
    """Streams each predicted batch of scored traces into the cache (every rank its own shards)."""

    def __init__(self, cache: TraceCache) -> None:
        super().__init__(write_interval="batch")
        self.cache = cache
        self.shards_written = 0
        """Shards this process published during the current run."""

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if prediction:
            self.cache.write_shard(prediction)
            self.shards_written += 1


class _BatchList(Dataset):
    """Each item is one whole (pre-built, index-fixed) batch of problems."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _unwrap(items: list[dict]) -> dict:
    return items[0]


def _env_rank() -> int:
    """Global rank of this process as launched (0 for the launching/main process)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    return local + node


def _selection_cfg(cfg: Mapping) -> dict:
    return {k: cfg[k] for k in ("beta", "alpha", "first_step") if k in cfg}


def run_sampling(
    expert: ModelSpec | Mapping | str,
    amateur: ModelSpec | Mapping | str,
    problems: Sequence[Problem],
    dataset_identity: Mapping,
    sampling_cfg: Mapping | SamplingSettings,
    cache_dir: str | os.PathLike,
    trainer_kwargs: Mapping | None = None,
    models: tuple | None = None,
) -> TraceCache:
    """Make sure every problem has a scored trace in the cache; return the cache.

    Only problems without a stored record are sampled, by ``lightning.Trainer.predict`` with a
    :class:`TraceWriter` (batches of ``sampling_cfg.batch_size`` fixed by problem index). A
    filelock per key makes concurrent runs wait and then find the work done. ``models`` may be
    ``(expert_model, amateur_model, tokenizer)`` already built (tests); the specs still
    provide the identities for the key. All settings are validated before anything is written.
    """
    from .selection import validate_selection

    cfg = dict(sampling_cfg) if not isinstance(sampling_cfg, SamplingSettings) else dataclass_dict(sampling_cfg)
    settings = SamplingSettings.from_cfg(cfg)
    sel = _selection_cfg(cfg)
    validate_selection(
        beta=sel.get("beta", 0.4), alpha=sel.get("alpha", 0.2), first_step=sel.get("first_step", 1), alpha_min=settings.alpha_min
    )
    batch_size = cfg.get("batch_size", 16)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"sampling.batch_size: expected an integer >= 1, got {batch_size!r}")
    expert, amateur = ModelSpec.from_any(expert), ModelSpec.from_any(amateur)
    problems = list(problems)
    if not problems:
        raise ValueError("run_sampling: no problems to sample")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"run_sampling: duplicate problem ids {dup}")

    if models is not None:
        expert_model, amateur_model, tokenizer = models
        amateur_tokenizer = tokenizer
    else:
        expert_model = amateur_model = None
        tokenizer = load_tokenizer(expert, "model_pair.expert")
        amateur_tokenizer = load_tokenizer(amateur, "model_pair.amateur")
    check_pair_tokenizers(tokenizer, amateur_tokenizer, expert.display_name(), amateur.display_name())

    fields = trace_key_fields(expert, amateur, dataset_identity, tokenizer, settings)
    key = trace_key(fields)
    cache = TraceCache(Path(os.path.expanduser(cache_dir)) / "traces" / key, key, fields)
    if not cache.missing(ids) and (cache.path / "manifest.json").is_file():
        log.info("trace cache %s: all %d problems already scored", key[:12], len(ids))
        return cache

    cache.init_dir()
    rank = _env_rank()
    config = {**cfg, **dataclass_dict(settings), "batch_size": batch_size}
    lock = None
    if rank == 0:
        from filelock import FileLock

        lock = FileLock(str(cache.lock_path))
        lock.acquire()
    try:
        missing = set(cache.missing(ids))
        run_info = None
        if missing:
            t0 = time.time()
            prompt_ids = encode_prompts(tokenizer, [problems[i].question for i in range(len(problems))], settings.system_prompt)
            batches = []
            for start in range(0, len(problems), batch_size):
                group = [i for i in range(start, min(start + batch_size, len(problems))) if ids[i] in missing]
                if group:
                    batches.append(
                        make_batch(
                            [ids[i] for i in group],
                            [question_sha(problems[i].question) for i in group],
                            [prompt_ids[i] for i in group],
                        )
                    )
            log.info("trace cache %s: sampling %d of %d problems in %d batches", key[:12], len(missing), len(ids), len(batches))
            sampler = ContrastiveSampler(
                expert,
                amateur,
                settings,
                expert_model=expert_model,
                amateur_model=amateur_model,
                tokenizer=tokenizer if models is not None else None,
            )
            writer = TraceWriter(cache)
            trainer = _make_trainer(trainer_kwargs, writer)
            loader = DataLoader(_BatchList(batches), batch_size=1, shuffle=False, collate_fn=_unwrap, num_workers=0)
            trainer.predict(sampler, loader, return_predictions=False)
            trainer.strategy.barrier()
            if not trainer.is_global_zero:
                return cache
            run_info = {
                "sampled_problems": len(missing),
                "batches": len(batches),
                "wall_s": round(time.time() - t0, 3),
                "device": str(trainer.strategy.root_device),
                "world_size": trainer.world_size,
                "dtype": {"expert": expert.dtype, "amateur": amateur.dtype},
                "seed": settings.seed,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        still = cache.missing(ids)
        if still:
            raise RuntimeError(f"trace cache {cache.path}: {len(still)} problems still missing after sampling (e.g. {still[:3]})")
        cache.write_manifest(config, run_info)
    finally:
        if lock is not None:
            lock.release()
    return cache


def dataclass_dict(obj: Any) -> dict:
    """A dataclass instance as a plain dict."""
    return dataclasses.asdict(obj)


def _make_trainer(trainer_kwargs: Mapping | None, writer: TraceWriter):
    import lightning

    kwargs: dict[str, Any] = dict(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    user = dict(trainer_kwargs or {})
    callbacks = list(user.pop("callbacks", None) or [])
    # training-only keys a shared trainer config may carry; meaningless for predict
    for k in ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "val_check_interval", "log_every_n_steps"):
        user.pop(k, None)
    kwargs.update(user)
    kwargs["callbacks"] = callbacks + [writer]
    return lightning.Trainer(**kwargs)
