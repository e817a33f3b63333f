"""The stages of a run: distill and evaluate, built from the composed config (Lightning wiring),
and the per-stage seed, timing and torch threads they run under (:func:`timed_stage`).

Sampling is the method's own (:meth:`~lightreasoner.methods.Method.prepare`); its
:class:`~lightreasoner.methods.TrainingData` enters the run through :func:`take_training_data`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lightreasoner.data.records import RunState
from lightreasoner.run.heldout import build_drift_guard
from lightreasoner.eval.evaluate import evaluate
from lightreasoner.eval.tables import log_report
from lightreasoner.methods import EVAL_ENTRIES, Method, TrainingData
from lightreasoner.models.spec import load_tokenizer, pair_specs
from lightreasoner.run.validation import benchmark_config, stage_threads
from lightreasoner.selection.select import import_samples
from lightreasoner.training.checkpoints import merge_adapter, save_adapter
from lightreasoner.training.distill import DistillSettings, TunedTokenCounter, build_callbacks
from lightreasoner.training.loggers import log_eval_samples

__all__ = ["timed_stage", "take_training_data", "distill_stage", "resolve_eval_models", "evaluate_stage", "objective"]


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def timed_stage(state: RunState, name: str, cfg: DictConfig):
    """Time one stage into ``state.wall_s``, starting it from ``cfg.seed`` with the stage's
    torch threads (:func:`~lightreasoner.run.validation.stage_threads`).

    Every stage is re-seeded, so its random draws (LoRA init, shuffles, dropout) do not depend
    on what ran before it in the process: a cold run that trained the demo pair or sampled
    traces gives the same adapter as a warm run that found them in the cache.
    """
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    t, c = time.perf_counter(), time.process_time()
    try:
        with _threads(stage_threads(cfg, name)):
            yield
    finally:
        state.wall_s[name] = round(time.perf_counter() - t, 2)
        state.cpu_s[name] = round(time.process_time() - c, 2)


def take_training_data(state: RunState, data: TrainingData) -> None:
    """A method's :class:`TrainingData` into the run's state (for distillation and the summary)."""
    state.samples, state.sample_key, state.selection = data.samples, data.sample_key, data.statistics
    state.sampling_cost, state.training_problems = data.cost, data.training_problems


# --------------------------------------------------------------------------- distill


def distill_stage(cfg: DictConfig, state: RunState) -> None:
    """LoRA distillation at the kept steps; saves the adapter (and a merged model)."""
    settings = DistillSettings.from_cfg(cfg.distill)
    method = state.method
    if method is not None and method.objective and method.objective != settings.loss:  # a method that brings its own objective
        settings = dataclasses.replace(settings, loss=method.objective)
        settings.validate()
    expert, _ = pair_specs(cfg)
    tokenizer = load_tokenizer(expert, "model_pair.expert")
    samples = _training_samples(cfg, state, settings, tokenizer)
    # built from config (distill.datamodule / distill.module: partials), given what only the run knows
    dm = instantiate(cfg.distill.datamodule, _partial_=True)(samples, pad_token_id=int(tokenizer.pad_token_id), seed=int(cfg.seed))
    module = instantiate(cfg.distill.module, _partial_=True)(
        expert=expert,
        settings=settings,
        max_steps=int(cfg.trainer.max_steps),
        sample_key=state.sample_key,
        softmax_width=int(tokenizer.vocab_size) if settings.published_softmax_width else None,
    )
    ckpt_dir = state.out_dir / "checkpoints"
    logger = state.logger
    callbacks = build_callbacks(cfg.get("callbacks"), ckpt_dir=ckpt_dir, max_steps=int(cfg.trainer.max_steps),
                                logger=bool(logger), checkpointing=cfg.trainer.get("enable_checkpointing", True))
    counter = next(cb for cb in callbacks if isinstance(cb, TunedTokenCounter))
    guard = build_drift_guard(cfg, state, tokenizer)  # built here: it needs the tokenizer and the run's problems
    if guard is not None:
        callbacks.append(guard)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)

    _record_fit(state, trainer, counter, samples, settings)
    if guard is not None:
        state.drift = guard.summary()
    if not trainer.is_global_zero:
        return
    state.adapter_dir = save_adapter(
        module,
        state.out_dir / "adapter",
        base_spec=expert,
        sample_key=state.sample_key,
        extra={"selection": state.selection, "max_steps": int(cfg.trainer.max_steps), "method": state.method.name if state.method else None},
        tokenizer=tokenizer,
    )
    if settings.merge:
        state.merged_dir = merge_adapter(state.adapter_dir, state.out_dir / "merged")


def _training_samples(cfg: DictConfig, state: RunState, settings: DistillSettings, tokenizer) -> list:
    """What the fine-tune trains on: the method's selection, or a published one
    (``distill.import_published``, which then names the run's sample key)."""
    samples = state.samples
    if settings.import_published:
        samples = import_samples(settings.import_published, tokenizer, system_prompt=cfg.sampling.system_prompt)
        state.sample_key = f"published:{Path(settings.import_published).name}"
    if not samples:
        raise ValueError(
            "selection.beta: no step passed the selection (0 kept steps); lower selection.beta or sample more problems"
        )
    return samples


def _record_fit(state: RunState, trainer: L.Trainer, counter: TunedTokenCounter, samples: list, settings: DistillSettings) -> None:
    """What the fine-tune really had, into ``state`` (tuned tokens, ``optimisation``, the rank)."""
    # under DDP each rank counted its own micro-batches; saving and evaluating is rank 0's job
    state.tuned_tokens = int(trainer.strategy.reduce(torch.tensor(float(counter.tuned_tokens)), reduce_op="sum"))
    available = sum(s.num_steps for s in samples)
    updates = int(trainer.global_step)
    state.optimisation = {  # what the fine-tune really had (packing changes the composition)
        "updates": updates,
        "kept_steps_available": available,
        "kept_steps_trained": state.tuned_tokens,
        "kept_steps_per_update": round(state.tuned_tokens / updates, 2) if updates else None,
        "epochs": round(state.tuned_tokens / available, 3) if available else None,
        "packing": settings.packing,
    }
    state.is_global_zero = trainer.is_global_zero


# --------------------------------------------------------------------------- evaluate


def resolve_eval_models(cfg: DictConfig, state: RunState, method: Method | None = None) -> list[dict]:
    """Turn ``eval.models`` entries into ``{"name", "ref"}`` for evaluate(): the method's own
    entries first (an inference-time method is evaluated in place of ``tuned``), then the named
    entries any run may list (:data:`~lightreasoner.methods.EVAL_ENTRIES`), the pair's models,
    and paths or hub ids."""
    expert, amateur = pair_specs(cfg)
    own = method.eval_models(cfg) if method is not None else {}
    models = []
    for entry in cfg.eval.models:
        entry = str(entry)
        if entry in own:
            models.append(own[entry])
        elif entry in EVAL_ENTRIES:
            models.append(EVAL_ENTRIES[entry](cfg))
        elif entry == "base":
            models.append({"name": "base", "ref": expert.to_dict()})
        elif entry == "amateur":
            models.append({"name": "amateur", "ref": amateur.to_dict()})
        elif entry == "tuned":
            tuned = state.merged_dir or state.adapter_dir or cfg.get("tuned")
            if tuned is None:
                if cfg.stage == "evaluate":
                    raise ValueError("eval.models: 'tuned' needs tuned=<adapter or merged dir> with stage=evaluate")
                continue
            models.append({"name": "tuned", "ref": str(tuned)})
        else:
            p = Path(os.path.expanduser(entry))
            models.append({"name": p.name if p.exists() else entry.replace("/", "_"), "ref": str(p) if p.exists() else entry})
    return models


def evaluate_stage(cfg: DictConfig, state: RunState, method: Method | None = None) -> None:
    benches = []
    for name in cfg.eval.benchmarks:
        b = benchmark_config(cfg, name)
        b["max_problems"] = cfg.eval.max_problems
        b["shuffle"] = False
        benches.append(b)
    models = resolve_eval_models(cfg, state, method)
    state.report = evaluate(
        models, benches, cfg.eval, state.out_dir / "eval", generation=cfg.get("generation"), cache_dir=Path(cfg.paths.cache_dir) / "eval"
    )
    if state.logger:
        log_report(state.report, state.logger)
        log_eval_samples(state.logger, state.report)
    state.objective = objective(state.report)


def objective(report: dict) -> float | None:
    """Mean accuracy of ``tuned`` (else the first evaluated model) over the benchmarks."""
    accs = report.get("summary") or {}
    if not accs:
        return None
    model = "tuned" if "tuned" in accs else next(iter(accs))
    values = list(accs[model].values())
    return sum(values) / len(values) if values else None
