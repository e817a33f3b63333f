"""``rounds = N > 1``: N rounds of sample -> distill -> evaluate, each round's tuned model the
next round's expert (:func:`run_rounds`)."""

from __future__ import annotations

import copy
import logging

from omegaconf import DictConfig, open_dict

from lightreasoner.core.config import to_plain
from lightreasoner.data.records import RunState
from lightreasoner.methods import method_inputs
from lightreasoner.models.spec import pair_specs
from lightreasoner.run.stages import distill_stage, evaluate_stage, take_training_data, timed_stage
from lightreasoner.training.checkpoints import merge_adapter

log = logging.getLogger("lightreasoner")

__all__ = ["run_rounds"]


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
            with timed_stage(state, name, round_cfg):
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
