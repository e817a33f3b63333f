"""LightReasoner and its ablations over the same scored traces.

``lightreasoner``: the steps with ``KL >= beta``, trained towards ``softmax(log pE - log pA)``
over the plausible set. The ablations change one ingredient each and read the same trace cache
(a grid over them runs the two models once):

- ``random_steps`` (``steps: random``): as many steps per trace as beta keeps, drawn uniformly
  (seeded) among the eligible steps — isolates the value of KL selection;
- ``no_contrast`` (``target: expert``): the expert's own distribution over the plausible set,
  renormalised — isolates the amateur;
- ``no_selection`` (``beta: 0``): every eligible step;
- ``no_tail`` (``alpha: alpha_min``): the widest candidate set the cache holds.
- ``format_only`` (``steps: answer_span``): every eligible step inside each trace's
  final-answer span (from its last answer cue, ``\\boxed{`` / "The answer is" / "Answer:" ...,
  to the end; :func:`~lightreasoner.selection.answer_span_step`), no KL threshold, with the
  method's labels — a control: a gain that survives it is the answer's format, not reasoning.

Every run of the family reports ``kept_in_answer_span`` (the share of its kept steps inside
that span) in its ``selection`` statistics.

Every member reads the ``selection`` group too (:class:`~lightreasoner.selection.SelectorSettings`):
the rival selectors (``top_fraction``, ``expert_entropy``, ``verified_only``, ``match_count``)
and the target shaping (``tau``, ``top_k``), all at read time over the same traces.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightreasoner.alignment import coverage
from lightreasoner.benchmarks import dataset_identity, load_problems
from lightreasoner.config import to_plain
from lightreasoner.drift import DriftSettings
from lightreasoner.loggers import log_trace_media
from lightreasoner.models import load_tokenizer, pair_specs
from lightreasoner.pairs import PairSettings
from lightreasoner.sampling import run_sampling
from lightreasoner.selection import (
    STEP_RULES,
    TARGETS,
    SelectionSettings,
    SelectorSettings,
    answer_span_starts,
    export_samples,
    kept_step_profile,
    select,
    selection_stats,
    verify_traces,
)

from .base import Method

log = logging.getLogger("lightreasoner")


def trainer_placement(cfg: Any) -> dict:
    """The Trainer settings sampling shares with distillation (where to run, not how to train)."""
    t = cfg.trainer
    return {"accelerator": t.accelerator, "devices": t.devices, "strategy": t.strategy}


@dataclass
class LightReasoner(Method):
    """Contrastive sampling through the trace cache, then read-time selection."""

    name: str = "lightreasoner"
    target: str = "contrast"
    """``contrast``: softmax(log pE - log pA) over the plausible set; ``expert``: the expert's
    own renormalised distribution there (no contrast)."""
    steps: str = "kl"
    """``kl``: the steps ``selection.rule`` keeps (the method: KL >= beta); ``random``: the
    rule's count per trace at seeded random positions; ``answer_span``: every eligible step in
    the trace's final-answer span (``format_only``)."""
    beta: float | None = None
    """Overrides ``sampling.beta`` (null: use it; ``no_selection``: 0)."""
    alpha: float | str | None = None
    """Overrides ``sampling.alpha`` (null: use it; ``alpha_min``: the cache's widest set)."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"method.target: expected one of {list(TARGETS)}, got {self.target!r}")
        if self.steps not in STEP_RULES:
            raise ValueError(f"method.steps: expected one of {list(STEP_RULES)}, got {self.steps!r}")
        if self.alpha is not None and self.alpha != "alpha_min" and (
            isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1
        ):
            raise ValueError(f"method.alpha: expected a number 0 <= alpha <= 1, 'alpha_min' or null, got {self.alpha!r}")
        if self.beta is not None and (
            isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta < 0
        ):
            raise ValueError(f"method.beta: expected a number >= 0 or null, got {self.beta!r}")

    def selection_settings(self, sampling_cfg: dict, alpha_min: float) -> SelectionSettings:
        """``sampling``'s beta / alpha / first_step with this method's overrides, validated."""
        d = dict(sampling_cfg)
        if self.beta is not None:
            d["beta"] = float(self.beta)
        if self.alpha == "alpha_min":
            d["alpha"] = float(alpha_min)
        elif self.alpha is not None:
            d["alpha"] = float(self.alpha)
        return SelectionSettings.from_cfg(d, alpha_min=alpha_min)

    def training_samples(self, cfg: Any, state: Any) -> None:
        ds = cfg.dataset
        expert, amateur = pair_specs(cfg)
        sampling_cfg = to_plain(cfg.sampling)
        problems = load_problems(ds, split=ds.split, max_problems=ds.max_problems, shuffle=ds.shuffle, seed=cfg.seed)
        cache = run_sampling(
            expert=expert,
            amateur=amateur,
            problems=problems,
            dataset_identity=dataset_identity(ds, ds.split),
            sampling_cfg=sampling_cfg,
            cache_dir=Path(cfg.paths.cache_dir),
            trainer_kwargs=trainer_placement(cfg),
            generation=cfg.get("generation"),
            pair=PairSettings.from_cfg(cfg.model_pair),
        )
        records = cache.read([p.id for p in problems])
        sel = self.selection_settings(sampling_cfg, cache.alpha_min)
        rule = SelectorSettings.from_cfg(cfg.get("selection"))
        tokenizer = None
        verified = None
        if rule.verified_only:
            tokenizer = load_tokenizer(expert, "model_pair.expert")
            verified = verify_traces(records, problems, tokenizer)
        tokenizer = tokenizer or load_tokenizer(expert, "model_pair.expert")
        spans = answer_span_starts(records, tokenizer)
        counts: dict = {}
        samples = select(
            records, beta=sel.beta, alpha=sel.alpha, first_step=sel.first_step, alpha_min=cache.alpha_min,
            target=self.target, steps=self.steps, seed=int(cfg.seed), selector=rule, verified=verified, report=counts,
            span_starts=spans,
        )
        state.samples, state.sample_key = samples, cache.key
        state.selection = {
            "trace_cache": str(cache.path), "problems": len(problems), "beta": sel.beta, "alpha": sel.alpha,
            **selection_stats(records, samples, junk_pe=DriftSettings.from_cfg(cfg.get("drift")).junk_pe),
            **counts,
        }
        state.selection.update(kept_step_profile(records, samples, tokenizer, span_starts=spans))
        if records and "aligned_mass" in records[0]:  # a cross-tokenizer pair: its coverage at this run's beta
            state.selection["coverage"] = coverage(records, sel.beta, sel.first_step)
        state.training_problems = len(problems)
        state.sampling_cost = {**cache.recorded_cost(), "cached": not cache.sampled_now}
        if cfg.distill.export_published or state.logger:
            log_trace_media(state.logger, records, tokenizer, sel.beta, sel.alpha, sel.first_step)
            if cfg.distill.export_published:
                questions = {p.id: p.question for p in problems}
                export_samples(samples, state.out_dir / "samples.jsonl", tokenizer, questions)
        log.info("selection: %s", json.dumps(state.selection))
