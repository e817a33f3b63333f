"""The stages behind ``train.py``: sample -> distill -> evaluate, driven by a composed config.

Each stage is a function of the config (plus what the previous stage produced), so tests can
call them on a config composed with Hydra's compose API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from lightreasoner.config import PROJECT_ROOT
from lightreasoner.models import ModelSpec

log = logging.getLogger("lightreasoner")

STAGES = ("sample", "distill", "evaluate", "all")


@dataclass
class RunState:
    """What the stages of one run hand each other, and the figures of the final summary."""

    out_dir: Path
    samples: list | None = None
    sample_key: str | None = None
    selection: dict = field(default_factory=dict)
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    tuned_tokens: int | None = None
    is_global_zero: bool = True
    report: dict | None = None
    wall_s: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def validate(cfg: DictConfig) -> None:
    """Check user-facing settings before any work; one clear error naming the field."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage: expected one of {list(STAGES)}, got {cfg.stage!r}")
    s = cfg.sampling
    if int(s.max_new_tokens) < 1:
        raise ValueError(f"sampling.max_new_tokens: expected an integer >= 1, got {s.max_new_tokens}")
    if float(s.beta) < 0:
        raise ValueError(f"sampling.beta: expected beta >= 0, got {s.beta}")
    if not (0.0 < float(s.alpha) <= 1.0):
        raise ValueError(f"sampling.alpha: expected 0 < alpha <= 1, got {s.alpha}")
    if not (0.0 < float(s.alpha_min) <= 1.0):
        raise ValueError(f"sampling.alpha_min: expected 0 < alpha_min <= 1, got {s.alpha_min}")
    if float(s.alpha) < float(s.alpha_min):
        raise ValueError(
            f"sampling.alpha: {s.alpha} is below sampling.alpha_min={s.alpha_min}, the smallest alpha the "
            "scored traces keep candidates for; lower sampling.alpha_min to re-score"
        )
    if int(s.batch_size) < 1:
        raise ValueError(f"sampling.batch_size: expected an integer >= 1, got {s.batch_size}")
    if int(cfg.distill.steps_per_batch) < 1:
        raise ValueError(f"distill.steps_per_batch: expected an integer >= 1, got {cfg.distill.steps_per_batch}")
    if int(cfg.trainer.max_steps) < 1:
        raise ValueError(f"trainer.max_steps: expected an integer >= 1, got {cfg.trainer.max_steps}")
    if cfg.eval.max_new_tokens is not None and int(cfg.eval.max_new_tokens) < 1:
        raise ValueError(f"eval.max_new_tokens: expected an integer >= 1 or null, got {cfg.eval.max_new_tokens}")
    for name in cfg.eval.benchmarks:
        if not (PROJECT_ROOT / "conf" / "dataset" / f"{name}.yaml").is_file():
            known = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "dataset").glob("*.yaml"))
            raise ValueError(f"eval.benchmarks: unknown benchmark {name!r}; expected some of {known}")


# --------------------------------------------------------------------------- helpers


def expert_spec(cfg: DictConfig) -> ModelSpec:
    return ModelSpec.from_any(OmegaConf.to_container(cfg.model_pair.expert, resolve=True))


def amateur_spec(cfg: DictConfig) -> ModelSpec:
    return ModelSpec.from_any(OmegaConf.to_container(cfg.model_pair.amateur, resolve=True))


def benchmark_config(cfg: DictConfig, name: str) -> dict:
    """``conf/dataset/{name}.yaml`` resolved against this run's ``paths`` (the training set's
    own node when ``name`` is it, so its overrides apply)."""
    from lightreasoner.benchmarks import dataset_config

    if name == cfg.dataset.name:
        return OmegaConf.to_container(cfg.dataset, resolve=True)
    return dataset_config(name, paths=OmegaConf.to_container(cfg.paths, resolve=True))


def trainer_placement(cfg: DictConfig) -> dict:
    """The Trainer settings sampling shares with distillation (where to run, not how to train)."""
    t = cfg.trainer
    return {"accelerator": t.accelerator, "devices": t.devices, "strategy": t.strategy}


def build_logger(cfg: DictConfig):
    from hydra.utils import instantiate

    if cfg.logger is None or cfg.logger.get("_target_") is None:
        return False
    kwargs: dict[str, Any] = {}
    if "WandbLogger" in str(cfg.logger._target_) and not cfg.logger.get("offline", False):
        if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") or _wandb_logged_in()):
            log.warning("logger: wandb is not logged in here; logging offline (sync later with `wandb sync`)")
            kwargs["offline"] = True
    return instantiate(cfg.logger, **kwargs)


def _wandb_logged_in() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


@contextlib.contextmanager
def _stage(state: RunState, name: str, seed: int):
    """Time one stage into ``state.wall_s``, starting it from ``seed``.

    Every stage is re-seeded, so its random draws (LoRA init, shuffles, dropout) do not depend
    on what ran before it in the process: a cold run that trained the demo pair or sampled
    traces gives the same adapter as a warm run that found them in the cache.
    """
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)
    t = time.perf_counter()
    try:
        yield
    finally:
        state.wall_s[name] = round(time.perf_counter() - t, 2)


class TunedTokenCounter(Callback):
    """Counts the kept steps (= tuned tokens) the fine-tune trained on; survives resume."""

    def __init__(self):
        self.tuned_tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tuned_tokens += int(batch["num_steps"])

    def state_dict(self):
        return {"tuned_tokens": self.tuned_tokens}

    def load_state_dict(self, state_dict):
        self.tuned_tokens = int(state_dict["tuned_tokens"])


# --------------------------------------------------------------------------- stages


def prepare(cfg: DictConfig) -> None:
    """Build the offline demo world when the config asks for it, and point the config at it."""
    if cfg.get("demo") is None:
        return
    from lightreasoner.demo import prepare_demo

    dirs = prepare_demo(cfg.demo, Path(cfg.paths.cache_dir))
    with open_dict(cfg):
        cfg.paths.demo_dir = str(dirs["data_dir"])
        cfg.model_pair.expert.name_or_path = str(dirs["expert_dir"])
        cfg.model_pair.amateur.name_or_path = str(dirs["amateur_dir"])


def sample_stage(cfg: DictConfig, state: RunState) -> None:
    """Contrastive sampling through the trace cache, then selection at (beta, alpha)."""
    from lightreasoner.benchmarks import dataset_identity, load_problems
    from lightreasoner.selection import select, selection_stats
    from lightreasoner.trace_cache import run_sampling

    ds = cfg.dataset
    problems = load_problems(ds, split=ds.split, max_problems=ds.max_problems, shuffle=ds.shuffle, seed=cfg.seed)
    cache = run_sampling(
        expert=expert_spec(cfg),
        amateur=amateur_spec(cfg),
        problems=problems,
        dataset_identity=dataset_identity(ds, ds.split),
        sampling_cfg=cfg.sampling,
        cache_dir=Path(cfg.paths.cache_dir),
        trainer_kwargs=trainer_placement(cfg),
    )
    records = cache.read([p.id for p in problems])
    s = cfg.sampling
    samples = select(records, beta=float(s.beta), alpha=float(s.alpha), first_step=int(s.first_step), alpha_min=float(s.alpha_min))
    stats = selection_stats(records, samples)
    state.samples, state.sample_key = samples, cache.key
    state.selection = {"trace_cache": str(cache.path), "problems": len(problems), **stats}
    if cfg.distill.export_published:
        from lightreasoner.models import load_tokenizer
        from lightreasoner.selection import export_samples

        questions = {p.id: p.question for p in problems}
        tokenizer = load_tokenizer(expert_spec(cfg), "model_pair.expert")
        export_samples(samples, state.out_dir / "samples.jsonl", tokenizer, questions)
    log.info("selection: %s", json.dumps(state.selection))


def distill_stage(cfg: DictConfig, state: RunState) -> None:
    """LoRA distillation at the kept steps; saves the adapter (and a merged model)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lightreasoner.datamodule import DistillDataModule
    from lightreasoner.distill import DistillModule, merge_adapter, save_adapter
    from lightreasoner.models import load_tokenizer

    expert = expert_spec(cfg)
    tokenizer = load_tokenizer(expert, "model_pair.expert")
    samples = state.samples
    if cfg.distill.import_published:
        from lightreasoner.selection import import_samples

        samples = import_samples(cfg.distill.import_published, tokenizer, system_prompt=cfg.sampling.system_prompt)
        state.sample_key = f"published:{Path(cfg.distill.import_published).name}"
    if not samples:
        raise ValueError(
            "sampling.beta: no step passed the selection (0 kept steps); lower sampling.beta or sample more problems"
        )
    dm = DistillDataModule(
        samples,
        steps_per_batch=int(cfg.distill.steps_per_batch),
        accumulate_grad_batches=int(cfg.trainer.accumulate_grad_batches),
        packing=bool(cfg.distill.packing),
        pad_token_id=int(tokenizer.pad_token_id),
        padding_side=str(cfg.distill.padding_side),
        seed=int(cfg.seed),
        num_workers=int(cfg.distill.num_workers),
    )
    module = DistillModule(
        expert=expert,
        lora=OmegaConf.to_container(cfg.peft, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        max_steps=int(cfg.trainer.max_steps),
        sample_key=state.sample_key,
    )
    ckpt_dir = state.out_dir / "checkpoints"
    logger = build_logger(cfg)
    counter = TunedTokenCounter()
    callbacks = [counter]
    if cfg.trainer.get("enable_checkpointing", True):
        every = max(1, int(cfg.trainer.max_steps) // 5)
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=every))
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
    import torch

    # under DDP each rank counted its own micro-batches; saving and evaluating is rank 0's job
    state.tuned_tokens = int(trainer.strategy.reduce(torch.tensor(float(counter.tuned_tokens)), reduce_op="sum"))
    state.is_global_zero = trainer.is_global_zero
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
    if cfg.distill.merge:
        state.merged_dir = merge_adapter(state.adapter_dir, state.out_dir / "merged")


def resolve_eval_models(cfg: DictConfig, state: RunState) -> list[dict]:
    """Turn ``eval.models`` entries into ``{"name", "ref"}`` for evaluate()."""
    models = []
    for entry in cfg.eval.models:
        entry = str(entry)
        if entry == "base":
            models.append({"name": "base", "ref": expert_spec(cfg).to_dict()})
        elif entry == "amateur":
            models.append({"name": "amateur", "ref": amateur_spec(cfg).to_dict()})
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


def evaluate_stage(cfg: DictConfig, state: RunState) -> None:
    from lightreasoner.evaluate import evaluate, log_report

    benches = []
    for name in cfg.eval.benchmarks:
        b = benchmark_config(cfg, name)
        b["split"] = cfg.eval.split if cfg.eval.split in (b.get("files") or {}) or not b.get("files") else b["split"]
        b["max_problems"] = cfg.eval.max_problems
        b["shuffle"] = False
        benches.append(b)
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    state.report = evaluate(resolve_eval_models(cfg, state), benches, eval_cfg, state.out_dir / "eval")
    logger = build_logger(cfg)
    if logger:
        log_report(state.report, logger)


def run(cfg: DictConfig) -> RunState:
    """Run the configured stages; returns what they produced (also written to summary.json).

    Each stage seeds itself with ``cfg.seed`` (:func:`_stage`).
    """
    validate(cfg)
    seed = int(cfg.seed)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(out_dir=out_dir)
    with _stage(state, "prepare", seed):
        prepare(cfg)
    stage = cfg.stage
    if stage in ("sample", "distill", "all") and not cfg.distill.import_published:
        with _stage(state, "sample", seed):
            sample_stage(cfg, state)
    if stage in ("distill", "all"):
        with _stage(state, "distill", seed):
            distill_stage(cfg, state)
    if not state.is_global_zero:
        return state
    if stage in ("evaluate", "all"):
        with _stage(state, "evaluate", seed):
            evaluate_stage(cfg, state)
    write_summary(cfg, state)
    return state


def write_summary(cfg: DictConfig, state: RunState) -> None:
    summary = {
        "stage": cfg.stage,
        "model_pair": cfg.model_pair.name,
        "dataset": cfg.dataset.name,
        "beta": cfg.sampling.beta,
        "alpha": cfg.sampling.alpha,
        "sample_key": state.sample_key,
        "selection": state.selection,
        "adapter_dir": str(state.adapter_dir) if state.adapter_dir else None,
        "merged_dir": str(state.merged_dir) if state.merged_dir else None,
        "tuned_tokens": state.tuned_tokens,
        "wall_s": state.wall_s,
        "eval": (state.report or {}).get("summary") if state.report else None,
    }
    tmp = state.out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(state.out_dir / "summary.json")
    print_summary(summary)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lightreasoner run", show_header=False)
    sel = summary.get("selection") or {}
    rows = [
        ("pair", summary["model_pair"]),
        ("dataset", summary["dataset"]),
        ("beta / alpha", f"{summary['beta']} / {summary['alpha']}"),
    ]
    for k in ("problems", "steps", "kept_steps", "kept_step_fraction", "kept_steps_per_trace", "mean_kl_kept"):
        if k in sel:
            rows.append((k, f"{sel[k]:.4g}" if isinstance(sel[k], float) else str(sel[k])))
    if summary.get("tuned_tokens") is not None:
        rows.append(("tuned tokens (kept steps trained)", str(summary["tuned_tokens"])))
    if summary.get("adapter_dir"):
        rows.append(("adapter", summary["adapter_dir"]))
    if summary.get("merged_dir"):
        rows.append(("merged", summary["merged_dir"]))
    for stage, secs in summary["wall_s"].items():
        rows.append((f"wall {stage}", f"{secs:.1f} s"))
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)
