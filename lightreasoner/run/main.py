"""The orchestrator behind ``train.py``: prepare -> sample -> distill -> evaluate, driven by a
composed config (:func:`run`).

Each stage is a function of the config (plus the :class:`RunState` the previous stage left), so
tests can call them on a config composed with Hydra's compose API: the stages and what they run
under in :mod:`~lightreasoner.run.stages`, ``rounds > 1`` in :mod:`~lightreasoner.run.rounds`,
resuming a named run in :mod:`~lightreasoner.run.resume`, ``summary.json`` in
:mod:`~lightreasoner.run.summary`. Each config group is validated once, by the settings class of
the code it configures (:func:`~lightreasoner.run.validation.validate`, where the checks that
span groups live).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from lightreasoner.core.config import to_plain
from lightreasoner.data.records import RunState
from lightreasoner.demo import prepare_demo
from lightreasoner.demo.pair import demo_amateur_dir
from lightreasoner.methods import method_inputs
from lightreasoner.run.resume import StageRecord, record_finished_training, restore_finished_training
from lightreasoner.run.rounds import run_rounds
from lightreasoner.run.stages import distill_stage, evaluate_stage, take_training_data, timed_stage
from lightreasoner.run.summary import write_summary
from lightreasoner.run.validation import is_demo_pair, validate
from lightreasoner.training.loggers import build_logger, finish_logger

__all__ = ["run", "prepare"]


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


def run(cfg: DictConfig) -> RunState:
    """Run the configured stages; returns what they produced (also written to summary.json).

    Each stage seeds itself with ``cfg.seed`` (:func:`~lightreasoner.run.stages.timed_stage`).
    The run's logger is built once and finished at the end, also when a stage fails; a failed
    run leaves a ``summary.json`` with ``status: failed`` and the error, so a sweep report lists it.
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
    with timed_stage(state, "prepare", cfg):
        prepare(cfg)
    stage = cfg.stage
    rounds = int(cfg.get("rounds", 1))
    if rounds > 1:
        run_rounds(cfg, state, rounds)
        return
    trained = restore_finished_training(state) if stage in ("distill", "evaluate", "all") and method.trains else False
    if stage in ("sample", "distill", "all") and method.trains and not cfg.distill.import_published and not trained:
        with timed_stage(state, "sample", cfg):
            take_training_data(state, method.prepare(method_inputs(cfg, state.out_dir, state.logger)))
    if stage in ("distill", "all") and method.trains and not trained:
        with timed_stage(state, "distill", cfg):
            distill_stage(cfg, state)
        if state.is_global_zero:
            record_finished_training(state)
    if not state.is_global_zero:
        return
    if stage in ("evaluate", "all"):
        with timed_stage(state, "evaluate", cfg):
            evaluate_stage(cfg, state, method)
