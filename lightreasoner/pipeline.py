"""The stages behind ``train.py``: sample -> distill -> evaluate, driven by a composed config.

A short orchestrator: each stage is a function of the config (plus the :class:`RunState` the
previous stage left), so tests can call them on a config composed with Hydra's compose API.
Each config group is validated once, by the settings class of the code it configures
(:func:`validate`); only checks that span groups live here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from lightreasoner.benchmarks import dataset_config
from lightreasoner.checkpoints import merge_adapter, save_adapter
from lightreasoner.config import to_plain
from lightreasoner.datamodule import DistillDataModule
from lightreasoner.demo import prepare_demo
from lightreasoner.distill import DistillModule, DistillSettings, TunedTokenCounter, lora_config
from lightreasoner.drift import DriftSettings, build_drift_guard
from lightreasoner.eval.evaluate import EvalSettings, evaluate
from lightreasoner.eval.tables import log_report
from lightreasoner.files import atomic_write_json
from lightreasoner.loggers import build_logger, finish_logger, log_eval_samples
from lightreasoner.methods import Method, build_method
from lightreasoner.methods.contrastive_decoding import EVAL_NAME as CONTRASTIVE_DECODING
from lightreasoner.methods.contrastive_decoding import contrastive_ref
from lightreasoner.models import load_tokenizer, pair_specs
from lightreasoner.records import RunState
from lightreasoner.sampling import SamplingSettings
from lightreasoner.selection import SelectionSettings, SelectorSettings, import_samples

log = logging.getLogger("lightreasoner")

STAGES = ("sample", "distill", "evaluate", "all")

__all__ = ["STAGES", "RunState", "validate", "run"]


# --------------------------------------------------------------------------- validation


def validate(cfg: DictConfig) -> Method:
    """Check every setting before any work; one clear error naming the field.

    Each group is checked by its own settings class; the checks here span groups.
    """
    if cfg.stage not in STAGES:
        raise ValueError(f"stage: expected one of {list(STAGES)}, got {cfg.stage!r}")
    sampling = SamplingSettings.from_cfg(to_plain(cfg.sampling))
    SelectionSettings.from_cfg(to_plain(cfg.sampling), alpha_min=sampling.alpha_min)
    distill = DistillSettings.from_cfg(cfg.distill)
    SelectorSettings.from_cfg(cfg.get("selection"))
    DriftSettings.from_cfg(cfg.get("drift"))
    EvalSettings.from_cfg(cfg.eval)
    lora_config(cfg.peft)
    method = build_method(cfg)
    if distill.loss == "reverse_kl" and method.name == "sft":
        raise ValueError("distill.loss: reverse_kl gives the sft method's one-hot targets zero loss; use forward_kl or jsd")
    if int(cfg.trainer.max_steps) < 1:
        raise ValueError(f"trainer.max_steps: expected an integer >= 1, got {cfg.trainer.max_steps}")
    return method


# --------------------------------------------------------------------------- helpers


def benchmark_config(cfg: DictConfig, name: str) -> dict:
    """``conf/dataset/{name}.yaml`` resolved against this run's ``paths`` (the training set's
    own node when ``name`` is it, so its overrides apply)."""
    if name == cfg.dataset.name:
        return to_plain(cfg.dataset)
    return dataset_config(name, paths=to_plain(cfg.paths))


@contextlib.contextmanager
def _stage(state: RunState, name: str, seed: int):
    """Time one stage into ``state.wall_s``, starting it from ``seed``.

    Every stage is re-seeded, so its random draws (LoRA init, shuffles, dropout) do not depend
    on what ran before it in the process: a cold run that trained the demo pair or sampled
    traces gives the same adapter as a warm run that found them in the cache.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        state.wall_s[name] = round(time.perf_counter() - t, 2)
        state.cpu_s[name] = round(time.process_time() - c, 2)


# --------------------------------------------------------------------------- stages


def prepare(cfg: DictConfig) -> None:
    """Build the offline demo world when the config asks for it, and point the config at it."""
    if cfg.get("demo") is None:
        return
    dirs = prepare_demo(cfg.demo, Path(cfg.paths.cache_dir))
    with open_dict(cfg):
        cfg.paths.demo_dir = str(dirs["data_dir"])
        cfg.model_pair.expert.name_or_path = str(dirs["expert_dir"])
        cfg.model_pair.amateur.name_or_path = str(dirs["amateur_dir"])


def distill_stage(cfg: DictConfig, state: RunState) -> None:
    """LoRA distillation at the kept steps; saves the adapter (and a merged model)."""
    settings = DistillSettings.from_cfg(cfg.distill)
    expert, _ = pair_specs(cfg)
    tokenizer = load_tokenizer(expert, "model_pair.expert")
    samples = state.samples
    if settings.import_published:
        samples = import_samples(settings.import_published, tokenizer, system_prompt=cfg.sampling.system_prompt)
        state.sample_key = f"published:{Path(settings.import_published).name}"
    if not samples:
        raise ValueError(
            "sampling.beta: no step passed the selection (0 kept steps); lower sampling.beta or sample more problems"
        )
    dm = DistillDataModule(
        samples,
        steps_per_batch=settings.steps_per_batch,
        accumulate_grad_batches=int(cfg.trainer.accumulate_grad_batches),
        packing=settings.packing,
        pad_token_id=int(tokenizer.pad_token_id),
        padding_side=settings.padding_side,
        seed=int(cfg.seed),
        num_workers=settings.num_workers,
        published_loss_column=settings.published_loss_column,
    )
    module = DistillModule(
        expert=expert,
        lora=to_plain(cfg.peft),
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.scheduler),
        max_steps=int(cfg.trainer.max_steps),
        sample_key=state.sample_key,
        softmax_width=int(tokenizer.vocab_size) if settings.published_softmax_width else None,
        loss=settings.loss,
        jsd_beta=settings.jsd_beta,
    )
    ckpt_dir = state.out_dir / "checkpoints"
    logger = state.logger
    counter = TunedTokenCounter()
    callbacks = [counter]
    if cfg.trainer.get("enable_checkpointing", True):
        every = max(1, int(cfg.trainer.max_steps) // 5)
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=every))
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    guard = build_drift_guard(cfg, state, tokenizer)
    if guard is not None:
        callbacks.append(guard)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)

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
    if guard is not None:
        state.drift = guard.summary()
    if not trainer.is_global_zero:
        return
    state.adapter_dir = save_adapter(
        module,
        state.out_dir / "adapter",
        base_spec=expert,
        sample_key=state.sample_key,
        extra={"selection": state.selection, "max_steps": int(cfg.trainer.max_steps)},
        tokenizer=tokenizer,
    )
    if settings.merge:
        state.merged_dir = merge_adapter(state.adapter_dir, state.out_dir / "merged")


def resolve_eval_models(cfg: DictConfig, state: RunState, method: Method | None = None) -> list[dict]:
    """Turn ``eval.models`` entries into ``{"name", "ref"}`` for evaluate(). An inference-time
    method (no fine-tune) is evaluated in place of ``tuned``."""
    expert, amateur = pair_specs(cfg)
    models = []
    for entry in cfg.eval.models:
        entry = str(entry)
        if entry == "tuned" and method is not None and method.eval_model(cfg) is not None:
            models.append(method.eval_model(cfg))
        elif entry == CONTRASTIVE_DECODING:
            models.append(method.eval_model(cfg) if method is not None and method.name == entry else contrastive_ref(cfg))
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
    state.report = evaluate(models, benches, cfg.eval, state.out_dir / "eval", generation=cfg.get("generation"))
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


def run(cfg: DictConfig) -> RunState:
    """Run the configured stages; returns what they produced (also written to summary.json).

    Each stage seeds itself with ``cfg.seed`` (:func:`_stage`). The run's logger is built once
    and finished at the end, also when a stage fails; a failed run leaves a ``summary.json``
    with ``status: failed`` and the error, so a sweep report lists it.
    """
    out_dir = Path(cfg.paths.output_dir)
    state = RunState(out_dir=out_dir)
    try:
        state.method = validate(cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        state.logger = build_logger(cfg)
        _run_stages(cfg, state)
    except Exception as err:
        if state.is_global_zero:
            write_summary(cfg, state, error=err)
        finish_logger(state.logger, None, failed=True)
        raise
    if state.is_global_zero:
        summary = write_summary(cfg, state)
        finish_logger(state.logger, summary)
    return state


def _run_stages(cfg: DictConfig, state: RunState) -> None:
    seed = int(cfg.seed)
    method = state.method
    with _stage(state, "prepare", seed):
        prepare(cfg)
    stage = cfg.stage
    if stage in ("sample", "distill", "all") and method.trains and not cfg.distill.import_published:
        with _stage(state, "sample", seed):
            method.training_samples(cfg, state)
    if stage in ("distill", "all") and method.trains:
        with _stage(state, "distill", seed):
            distill_stage(cfg, state)
    if not state.is_global_zero:
        return
    if stage in ("evaluate", "all"):
        with _stage(state, "evaluate", seed):
            evaluate_stage(cfg, state, method)


# --------------------------------------------------------------------------- summary


def write_summary(cfg: DictConfig, state: RunState, error: BaseException | None = None) -> dict:
    """``summary.json`` of the run (atomically); printed as a table when the run finished."""
    report = state.report or {}
    summary = {
        "status": "failed" if error is not None else "finished",
        "error": None if error is None else f"{type(error).__name__}: {error}".splitlines()[0][:500],
        "stage": cfg.stage,
        "method": state.method.name if state.method is not None else _method_name(cfg),
        "seed": int(cfg.seed),
        "model_pair": cfg.model_pair.name,
        "dataset": cfg.dataset.name,
        "beta": state.selection.get("beta", cfg.sampling.beta),
        "alpha": state.selection.get("alpha", cfg.sampling.alpha),
        "sample_key": state.sample_key,
        "selection": state.selection,
        "adapter_dir": str(state.adapter_dir) if state.adapter_dir else None,
        "merged_dir": str(state.merged_dir) if state.merged_dir else None,
        "tuned_tokens": state.tuned_tokens,
        "drift": state.drift or None,
        "efficiency": efficiency(state),
        "wall_s": state.wall_s,
        "cpu_s": state.cpu_s,
        "eval": report.get("summary"),
        "results": report.get("results"),
        "comparisons": report.get("comparisons"),
        "objective": state.objective,
    }
    state.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state.out_dir / "summary.json", summary, sort_keys=False)
    if error is None:
        print_summary(summary)
    return summary


def _method_name(cfg: DictConfig) -> str:
    """The method's name when validation failed before the method was built."""
    return str((cfg.get("method") or {}).get("name", "lightreasoner"))


def efficiency(state: RunState) -> dict:
    """The paper's efficiency accounting for this run: problems, tokens, time.

    ``sampling`` is what making the training data cost as recorded when it was made (a run
    that read it from the cache reports that cost too, marked ``cached``: a warm run is not
    free); ``stages`` are this run's own wall and CPU seconds."""
    cost = state.sampling_cost or {}
    return {
        "training_problems": state.training_problems,
        "optimisation": state.optimisation,
        "problems_sampled": cost.get("problems"),
        "tokens_generated": cost.get("generated_tokens"),
        "tuned_tokens": state.tuned_tokens,
        "sampling": {"cached": cost.get("cached"), "wall_s": cost.get("wall_s"), "cpu_s": cost.get("cpu_s")},
        "stages": {k: {"wall_s": state.wall_s[k], "cpu_s": state.cpu_s.get(k)} for k in state.wall_s},
    }


def print_summary(summary: dict) -> None:
    table = Table(title="lightreasoner run", show_header=False)
    sel = summary.get("selection") or {}
    rows = [
        ("method", summary.get("method")),
        ("pair", summary["model_pair"]),
        ("dataset", summary["dataset"]),
        ("beta / alpha", f"{summary['beta']} / {summary['alpha']}"),
    ]
    for k in ("problems", "steps", "kept_steps", "kept_step_fraction", "kept_steps_per_trace", "mean_kl_kept"):
        if k in sel:
            rows.append((k, f"{sel[k]:.4g}" if isinstance(sel[k], float) else str(sel[k])))
    eff = summary.get("efficiency") or {}
    if eff.get("problems_sampled") is not None:
        cached = " (cached)" if (eff.get("sampling") or {}).get("cached") else ""
        rows.append(("problems sampled / tokens generated", f"{eff['problems_sampled']} / {eff['tokens_generated']}{cached}"))
        secs = lambda x: "?" if x is None else f"{x:.1f} s"  # noqa: E731  (a cache made before CPU time was recorded)
        rows.append(("sampling cost (wall / cpu)", f"{secs(eff['sampling']['wall_s'])} / {secs(eff['sampling']['cpu_s'])}{cached}"))
    if summary.get("tuned_tokens") is not None:
        rows.append(("tuned tokens (kept steps trained)", str(summary["tuned_tokens"])))
    drift = summary.get("drift") or {}
    if drift:
        figures = ", ".join(f"{k} {v:.4g}" for k, v in (drift.get("final") or {}).items() if isinstance(v, (int, float)))
        rows.append((f"drift (update {drift.get('kept_step')})", figures))
        beyond = "; ".join(f"{e['figure']} {e['value']:.4g} > {e['limit']:.4g}" for e in drift.get("exceeded") or [])
        rows.append(("drift limits", f"BEYOND LIMIT: {beyond}" if beyond else ("within limits" if drift.get("limits") else "none set")))
    if summary.get("adapter_dir"):
        rows.append(("adapter", summary["adapter_dir"]))
    if summary.get("merged_dir"):
        rows.append(("merged", summary["merged_dir"]))
    for stage, secs in summary["wall_s"].items():
        rows.append((f"wall {stage}", f"{secs:.1f} s"))
    if summary.get("objective") is not None:
        rows.append(("objective (tuned accuracy)", f"{summary['objective']:.4f}"))
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)
