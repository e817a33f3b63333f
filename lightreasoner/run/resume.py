"""Resumable runs: ``run_name=NAME`` gives a run a fixed output directory, and rerunning the same
command continues where it stopped.

What each stage resumes from (nothing here duplicates it):

- sampling: the shared trace cache (finished per-batch shards are read, not regenerated);
- distillation: ``<run>/checkpoints/last.ckpt`` (LoRA weights, optimizer, schedule, the data
  loader's position and the RNG state, so a resumed fine-tune equals an uninterrupted one);
- evaluation: the per-problem records under ``<run>/eval/`` (finished problems are not
  regenerated; the report is recomputed from them).

A finished fine-tune is recorded in ``<run>/stages.json`` with what the summary needs from
it (:func:`record_finished_training`); a rerun finds the record and skips sampling and
distillation (:func:`restore_finished_training`). The record carries a hash of
the settings that determine the fine-tune (:data:`TRAINING_GROUPS`): rerunning a name with
different settings is one clear error, never a silent mix of two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightreasoner.core.config import to_plain
from lightreasoner.core.files import atomic_write_json
from lightreasoner.data.records import RunState
from lightreasoner.sampling.trace_cache import canonical_json
from lightreasoner.training.checkpoints import merge_adapter

log = logging.getLogger("lightreasoner")

__all__ = ["TRAINING_GROUPS", "training_identity", "StageRecord", "TRAINING_FIELDS", "record_finished_training",
           "restore_finished_training"]

TRAINING_GROUPS = ("model_pair", "dataset", "sampling", "selection", "method", "distill", "peft", "optimizer", "scheduler", "demo", "seed")
"""Config nodes whose values determine the fine-tune (``trainer`` adds its optimisation keys)."""

TRAINER_KEYS = ("max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision")
"""``trainer`` keys that change the fine-tune (placement, logging and progress bars do not)."""


UNHASHED = {"distill": ("checkpoint_every",), "demo": ("use_shipped",)}
"""Keys of :data:`TRAINING_GROUPS` that change no result (how often the fine-tune checkpoints;
whether the demo's default pair was installed from the package or built: the same pair)."""

BUILD_NODES = {
    ("distill", "module"): "lightreasoner.training.distill.DistillModule",
    ("scheduler",): "lightreasoner.training.distill.lr_schedule",
    ("distill", "datamodule"): "lightreasoner.training.datamodule.DistillDataModule",
}
"""``_target_`` nodes the fine-tune is built from (issue 30), with their shipped targets. They
are hashed by what they add: their interpolations (``${distill.packing}``, ``${optimizer}``) are
hashed where they point, the shipped ``_target_`` and the build flags (``_partial_``,
``_recursive_``) are left out. So the same settings keep the identity they had before the
fine-tune was built from config, and another target or an explicit value still changes it."""

MOVED = {"rounds": ("distill", "rounds")}
"""Top-level keys hashed where they were before they moved (issue 30: ``distill.rounds``)."""


def training_identity(cfg: Any) -> tuple[str, dict]:
    """(sha256[:16], the settings hashed) of what determines the run's fine-tune; take it before
    the demo's ``prepare`` points the pair at machine-local cache paths. Absolute paths are
    normalised (``/work/main/../shared/data`` is ``/work/shared/data``): how a path is spelled
    does not change the fine-tune."""
    d = {k: to_plain(cfg.get(k)) for k in TRAINING_GROUPS}
    for group, keys in UNHASHED.items():
        if isinstance(d.get(group), dict):
            d[group] = {k: v for k, v in d[group].items() if k not in keys}
    for path, target in BUILD_NODES.items():
        _hash_build_node(cfg, d, path, target)
    for key, (group, name) in MOVED.items():
        if isinstance(d.get(group), dict) and key in cfg:
            d[group][name] = to_plain(cfg.get(key))
    trainer = cfg.get("trainer") or {}
    d["trainer"] = {k: to_plain(trainer.get(k)) for k in TRAINER_KEYS}
    d = _normalise_paths(d)
    return _sha(d), d


LIGHTREASONER = "lightreasoner.methods.lightreasoner.LightReasoner"
SELECTION_DEFAULTS_BEFORE = {"beta": 0.4, "alpha": 0.2}
"""``sampling.beta`` / ``alpha`` as the ablation presets left them before issue 30."""


def legacy_identity(cfg: Any) -> tuple[str, dict]:
    """The identity a run with these settings had before step selection had one home (issue 30):
    ``beta`` / ``alpha`` / ``first_step`` under ``sampling``, the LightReasoner ablations as
    ``method`` fields (``target``, ``steps``, ``beta``, ``alpha``), the ``selection`` group not
    hashed. A run recorded then still resumes (:class:`StageRecord` accepts either identity)."""
    _, d = training_identity(cfg)
    sel = d.pop("selection", None)
    if not isinstance(sel, dict):  # no selection group: nothing moved
        return _sha(d), d
    sampling = dict(d.get("sampling") or {})
    for k in ("beta", "alpha", "first_step"):
        sampling[k] = sel.get(k)
    method = d.get("method")
    if isinstance(method, dict) and method.get("_target_") == LIGHTREASONER:
        method = dict(method)
        rule = sel.get("rule", "kl")
        method.update(target=sel.get("target", "contrast"), steps=rule if rule in ("random", "answer_span") else "kl",
                      beta=None, alpha=None)
        if method.get("name") == "no_selection":
            method["beta"], sampling["beta"] = sel.get("beta"), SELECTION_DEFAULTS_BEFORE["beta"]
        if method.get("name") == "no_tail":
            method["alpha"], sampling["alpha"] = "alpha_min", SELECTION_DEFAULTS_BEFORE["alpha"]
    d["sampling"], d["method"] = sampling, method
    return _sha(d), d


def _hash_build_node(cfg: Any, d: dict, path: tuple[str, ...], target: str) -> None:
    """``d`` at ``path`` (resolved) reduced to what the node adds (see :data:`BUILD_NODES`);
    dropped when that is nothing."""
    *parents, name = path
    holder = d
    for p in parents:
        holder = holder.get(p) if isinstance(holder, dict) else None
    if not isinstance(holder, dict) or not isinstance(holder.get(name), dict):
        return
    raw = cfg
    for p in path:
        raw = raw.get(p) if raw is not None else None
    raw = OmegaConf.to_container(raw, resolve=False) if OmegaConf.is_config(raw) else raw
    resolved = holder[name]
    kept = {}
    for k, v in resolved.items():
        r = (raw or {}).get(k) if isinstance(raw, Mapping) else None
        if k in ("_partial_", "_recursive_", "_convert_") or (k == "_target_" and v == target):
            continue
        if isinstance(r, str) and r.startswith("${") and r.endswith("}"):
            continue  # hashed where it points
        kept[k] = v
    if not parents:  # a group of its own (scheduler): its settings, as before
        holder[name] = kept
    elif kept:
        holder[name] = kept
    else:
        del holder[name]


def _sha(settings: Mapping) -> str:
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def _normalise_paths(value: Any) -> Any:
    """``value`` with every absolute path string normalised (``..``, ``.``, repeated slashes)."""
    if isinstance(value, Mapping):
        return {k: _normalise_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return os.path.normpath(value)
    return value


def _diff(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            keys += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.append(f"{prefix}{k}")
    return keys


class StageRecord:
    """``<run dir>/stages.json``: finished stages of a named run and what they produced."""

    FILE = "stages.json"

    def __init__(self, out_dir: Path, cfg: Any) -> None:
        self.path = Path(out_dir) / self.FILE
        self.sha, self.settings = training_identity(cfg)
        legacy_sha, legacy = legacy_identity(cfg)
        self.data: dict = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"run_name: {self.path} is not valid JSON ({err}); delete it to retrain") from err
            stored = _normalise_paths(self.data.get("training_settings") or {})
            # a record written before paths were normalised matches when its settings do, normalised
            known = {self.sha, legacy_sha}  # a record made before issue 30 has the legacy layout
            if self.data.get("training_sha") not in known and _sha(stored) not in known:
                changed = _diff(stored, self.settings if "selection" in stored else legacy)
                raise ValueError(
                    f"run_name: {self.path.parent} was trained with other settings (changed: "
                    f"{', '.join(changed[:8]) or 'unknown'}); rerun with the original settings, or choose another run_name"
                )

    def done(self, stage: str) -> dict | None:
        """What ``stage`` recorded when it finished, or None."""
        return (self.data.get("stages") or {}).get(stage)

    def finish(self, stage: str, record: Mapping) -> None:
        """Record ``stage`` as finished (atomically)."""
        self.data = {
            "training_sha": self.sha,
            "training_settings": self.settings,
            "stages": {**(self.data.get("stages") or {}), stage: dict(record)},
        }
        atomic_write_json(self.path, self.data, sort_keys=False)


TRAINING_FIELDS = ("selection", "sample_key", "sampling_cost", "training_problems", "optimisation", "tuned_tokens", "drift")
"""What a finished fine-tune leaves for the summary (recorded in ``stages.json``)."""


def record_finished_training(state: RunState) -> None:
    """Record the finished fine-tune in the run's ``stages.json`` (:class:`StageRecord`)."""
    state.stage_record.finish("distill", {
        **{k: getattr(state, k) for k in TRAINING_FIELDS},
        "adapter_dir": str(state.adapter_dir) if state.adapter_dir else None,
        "merged_dir": str(state.merged_dir) if state.merged_dir else None,
        "wall_s": {k: state.wall_s[k] for k in ("sample", "distill") if k in state.wall_s},
        "cpu_s": {k: state.cpu_s[k] for k in ("sample", "distill") if k in state.cpu_s},
    })


def restore_finished_training(state: RunState) -> bool:
    """A rerun of a named run whose fine-tune finished: take its results instead of training
    again (True). False when there is none, or its adapter is gone (then it trains again)."""
    done = state.stage_record.done("distill") if state.stage_record is not None else None
    if not done:
        return False
    adapter = done.get("adapter_dir")
    if not adapter or not Path(adapter).is_dir():
        log.warning("resume: %s records a finished fine-tune but its adapter %s is missing; training again", state.stage_record.path, adapter)
        return False
    for k in TRAINING_FIELDS:
        setattr(state, k, done.get(k))
    state.selection, state.drift = state.selection or {}, state.drift or {}
    state.adapter_dir = Path(adapter)
    merged = Path(done["merged_dir"]) if done.get("merged_dir") else None
    if merged is not None and not merged.is_dir():  # e.g. a run imported without its weights (cache_bundle)
        log.info("resume: rebuilding the merged model %s from the adapter", merged)
        merged = merge_adapter(state.adapter_dir, merged)
    state.merged_dir = merged
    state.wall_s.update(done.get("wall_s") or {})
    state.cpu_s.update(done.get("cpu_s") or {})
    log.info("resume: the fine-tune of this run finished earlier (%s); sampling and distillation skipped", adapter)
    return True
