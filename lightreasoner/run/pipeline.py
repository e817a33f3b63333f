"""The stages behind ``train.py``: sample -> distill -> evaluate, driven by a composed config.

A short orchestrator: each stage is a function of the config (plus the :class:`RunState` the
previous stage left), so tests can call them on a config composed with Hydra's compose API.
Each config group is validated once, by the settings class of the code it configures
(:func:`validate`); only checks that span groups live here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table

from lightreasoner.training.checkpoints import merge_adapter, save_adapter
from lightreasoner.core.config import to_plain
from lightreasoner.demo import prepare_demo
from lightreasoner.demo.pair import demo_amateur_dir
from lightreasoner.training.distill import DistillSettings, TunedTokenCounter, build_callbacks
from lightreasoner.eval.drift import build_drift_guard
from lightreasoner.eval.evaluate import evaluate
from lightreasoner.eval.tables import log_report
from lightreasoner.core.files import atomic_write_json
from lightreasoner.training.loggers import build_logger, finish_logger, log_eval_samples
from lightreasoner.methods import EVAL_ENTRIES, Method, TrainingData, method_inputs
from lightreasoner.models.spec import load_tokenizer, pair_specs
from lightreasoner.data.records import RunState
from lightreasoner.run.resume import StageRecord
from lightreasoner.selection.select import import_samples
from lightreasoner.run.validation import (  # noqa: F401  (validate and its helpers live there; re-exported)
    STAGE_NAMES,
    STAGES,
    TINY_THREADS,
    benchmark_config,
    check_rounds,
    is_demo_pair,
    stage_threads,
    validate,
)

log = logging.getLogger("lightreasoner")

__all__ = ["STAGES", "RunState", "validate", "run"]


# --------------------------------------------------------------------------- helpers


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
def _stage(state: RunState, name: str, cfg: DictConfig):
    """Time one stage into ``state.wall_s``, starting it from ``cfg.seed`` with the stage's
    torch threads (:func:`stage_threads`).

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


# --------------------------------------------------------------------------- stages


def prepare(cfg: DictConfig) -> None:
    """Build the offline demo world when the config asks for it, and point the config at it."""
    if cfg.get("demo") is None:
        return
    dirs = prepare_demo(cfg.demo, Path(cfg.paths.cache_dir))
    with open_dict(cfg):
        cfg.paths.demo_dir = str(dirs["data_dir"])
        if is_demo_pair(cfg):  # validation refused any other pair under the demo
            cfg.model_pair.expert.name_or_path = str(dirs["expert_dir"])
            cfg.model_pair.amateur.name_or_path = demo_amateur_dir(to_plain(cfg.model_pair.amateur), dirs)


def distill_stage(cfg: DictConfig, state: RunState) -> None:
    """LoRA distillation at the kept steps; saves the adapter (and a merged model)."""
    settings = DistillSettings.from_cfg(cfg.distill)
    method = state.method
    if method is not None and method.objective and method.objective != settings.loss:  # a method that brings its own objective
        settings = dataclasses.replace(settings, loss=method.objective)
        settings.validate()
    expert, _ = pair_specs(cfg)
    tokenizer = load_tokenizer(expert, "model_pair.expert")
    samples = state.samples
    if settings.import_published:
        samples = import_samples(settings.import_published, tokenizer, system_prompt=cfg.sampling.system_prompt)
        state.sample_key = f"published:{Path(settings.import_published).name}"
    if not samples:
        raise ValueError(
            "selection.beta: no step passed the selection (0 kept steps); lower selection.beta or sample more problems"
        )
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
        extra={"selection": state.selection, "max_steps": int(cfg.trainer.max_steps), "method": state.method.name if state.method else None},
        tokenizer=tokenizer,
    )
    if settings.merge:
        state.merged_dir = merge_adapter(state.adapter_dir, state.out_dir / "merged")


def take_training_data(state: RunState, data: TrainingData) -> None:
    """A method's :class:`TrainingData` into the run's state (for distillation and the summary)."""
    state.samples, state.sample_key, state.selection = data.samples, data.sample_key, data.statistics
    state.sampling_cost, state.training_problems = data.cost, data.training_problems


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
        state.stage_record = StageRecord(out_dir, cfg)  # before prepare() localises the demo's paths
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
    method = state.method
    with _stage(state, "prepare", cfg):
        prepare(cfg)
    stage = cfg.stage
    rounds = int(cfg.get("rounds", 1))
    if rounds > 1:
        run_rounds(cfg, state, rounds)
        return
    trained = restore_finished_training(state) if stage in ("distill", "evaluate", "all") and method.trains else False
    if stage in ("sample", "distill", "all") and method.trains and not cfg.distill.import_published and not trained:
        with _stage(state, "sample", cfg):
            take_training_data(state, method.prepare(method_inputs(cfg, state.out_dir, state.logger)))
    if stage in ("distill", "all") and method.trains and not trained:
        with _stage(state, "distill", cfg):
            distill_stage(cfg, state)
        if state.is_global_zero:
            record_finished_training(state)
    if not state.is_global_zero:
        return
    if stage in ("evaluate", "all"):
        with _stage(state, "evaluate", cfg):
            evaluate_stage(cfg, state, method)


# --------------------------------------------------------------------------- rounds


def run_rounds(cfg: DictConfig, state: RunState, rounds: int) -> None:
    """``rounds = N > 1``: N rounds of sample -> distill -> evaluate.

    Round 1 is the ordinary run. After round ``r`` its adapter is merged into a plain model
    (``round{r}/merged``, whatever ``distill.merge`` says) and that tuned expert is the expert of
    round ``r + 1``: it samples the training problems again and is scored against the amateur
    (its traces cached under their own key, the expert's identity being the merged model's; an
    ``early_exit`` amateur is a layer of it), and a new LoRA adapter on it trains on the new
    selection. Every round is evaluated against the original expert (``base``). Round ``r < N``
    writes under ``round{r}/``, the last round where a single round writes (``adapter/``,
    ``merged/``, ``eval/``); ``state.rounds`` lists every round for the summary, and the stage
    times are summed over the rounds. A rerun redoes the rounds (the first round's traces come
    from the cache).
    """
    method, out_dir = state.method, state.out_dir
    base = to_plain(cfg.model_pair.expert)
    round_cfg = cfg
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for r in range(1, rounds + 1):
        state.out_dir = out_dir if r == rounds else out_dir / f"round{r}"
        state.adapter_dir = state.merged_dir = None
        expert = pair_specs(round_cfg)[0]
        for name, work in (
            ("sample", lambda: take_training_data(state, method.prepare(method_inputs(round_cfg, state.out_dir, state.logger)))),
            ("distill", lambda: distill_stage(round_cfg, state)),
            ("evaluate", lambda: evaluate_stage(cfg, state, method)),  # base = the original expert
        ):
            if name == "evaluate" and r < rounds and state.merged_dir is None:
                state.merged_dir = merge_adapter(state.adapter_dir, state.out_dir / "merged")
            with _stage(state, name, round_cfg):
                work()
            wall[name] = round(wall.get(name, 0.0) + state.wall_s[name], 2)
            cpu[name] = round(cpu.get(name, 0.0) + state.cpu_s[name], 2)
        report = state.report or {}
        state.rounds.append({
            "round": r,
            "expert": expert.display_name(),
            "sample_key": state.sample_key,
            "selection": {k: v for k, v in state.selection.items() if k != "trace_cache"},
            "sampling_cost": state.sampling_cost,
            "tuned_tokens": state.tuned_tokens,
            "adapter_dir": str(state.adapter_dir) if state.adapter_dir else None,
            "merged_dir": str(state.merged_dir) if state.merged_dir else None,
            "eval": report.get("summary"),
            "comparisons": report.get("comparisons"),
            "objective": state.objective,
        })
        log.info("round %d of %d: expert %s, key %s, tuned accuracy %s", r, rounds, expert.display_name(),
                 (state.sample_key or "")[:12], state.objective)
        if r < rounds:  # the next round's expert: this round's tuned model
            round_cfg = copy.deepcopy(cfg)
            with open_dict(round_cfg):
                round_cfg.model_pair.expert = {"name_or_path": str(state.merged_dir), "dtype": base.get("dtype", "float32"),
                                               "device": base.get("device", "auto")}
    state.out_dir = out_dir
    state.wall_s.update(wall)
    state.cpu_s.update(cpu)


# --------------------------------------------------------------------------- resume

TRAINING_FIELDS = ("selection", "sample_key", "sampling_cost", "training_problems", "optimisation", "tuned_tokens", "drift")
"""What a finished fine-tune leaves for the summary (recorded in ``stages.json``)."""


def record_finished_training(state: RunState) -> None:
    """Record the finished fine-tune in the run's ``stages.json`` (see :mod:`lightreasoner.run.resume`)."""
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


# --------------------------------------------------------------------------- summary


def write_summary(cfg: DictConfig, state: RunState, error: BaseException | None = None) -> dict:
    """``summary.json`` of the run (atomically); printed as a table when the run finished."""
    report = state.report or {}
    summary = {
        "status": "failed" if error is not None else "finished",
        "error": None if error is None else f"{type(error).__name__}: {error}".splitlines()[0][:500],
        "stage": cfg.stage,
        "about": cfg.get("about"),
        "method": _evaluated_method(cfg) or (state.method.name if state.method is not None else _method_name(cfg)),
        "seed": int(cfg.seed),
        "model_pair": cfg.model_pair.name,
        "dataset": cfg.dataset.name,
        "beta": state.selection.get("beta", cfg.selection.beta),  # the effective values the selection used
        "alpha": state.selection.get("alpha", cfg.selection.alpha),
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
        **({"rounds": state.rounds} if state.rounds else {}),
    }
    state.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state.out_dir / "summary.json", summary, sort_keys=False)
    if error is None:
        print_summary(summary)
    return summary


def _evaluated_method(cfg: DictConfig) -> str | None:
    """``stage=evaluate tuned=DIR``: the method that trained DIR, as its run recorded it (an SFT
    adapter evaluated alone is labelled ``sft``, whatever ``method`` says), else None."""
    tuned = cfg.get("tuned")
    if cfg.stage != "evaluate" or tuned is None:
        return None
    meta = Path(os.path.expanduser(str(tuned))) / "lightreasoner.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if info.get("method"):
        return str(info["method"])
    selection = info.get("selection") or {}
    return "sft" if "solutions_accepted" in selection else None  # adapters saved before the method was recorded


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
    cov = sel.get("coverage")
    if cov:  # a cross-tokenizer pair (model_pair.alignment=string)
        mass = cov.get("aligned_mass_kept")
        rows.append(("coverage (steps scored / aligned mass at kept)",
                     f"{cov['steps_scored_fraction']:.1%} / {'-' if mass is None else f'{mass:.1%}'}"))
    for rnd in summary.get("rounds") or []:
        kept = (rnd.get("selection") or {}).get("kept_step_fraction")
        acc = rnd.get("objective")
        rows.append((f"round {rnd['round']} (kept fraction / tuned accuracy)",
                     f"{'-' if kept is None else f'{kept:.4g}'} / {'-' if acc is None else f'{acc:.4f}'}"))
    if summary.get("objective") is not None:
        rows.append(("objective (mean accuracy: tuned, else the first model)", f"{summary['objective']:.4f}"))
    for k, v in rows:
        table.add_row(k, str(v))
    console = Console()
    console.print(table)
    if summary.get("about"):  # what world the run is in (the demo presets label theirs)
        console.print(f"[bold]about this run:[/bold] {summary['about']}", highlight=False)
