"""LightReasoner: contrastive sampling through the trace cache, then read-time step selection.

The steps and labels are the ``selection`` group's (:class:`~lightreasoner.selection.select.SelectionSettings`,
its rule registry and label shaping); the ablations are presets over it (``conf/selection/``),
which ``method=<name>`` applies and names the run after, all reading the same trace cache (a
grid over them runs the two models once):

- ``random_steps`` (``selection.rule: random``): as many steps per trace as beta keeps, drawn
  uniformly (seeded) among the eligible steps — isolates the value of KL selection;
- ``no_contrast`` (``selection.target: expert``): the expert's own distribution over the
  plausible set, renormalised — isolates the amateur;
- ``no_selection`` (``selection.beta: 0``): every eligible step;
- ``no_tail`` (``selection.alpha: 0``): the widest candidate set the cache holds;
- ``format_only`` (``selection.rule: answer_span``): every eligible step inside each trace's
  final-answer span, no KL threshold, with the method's labels — a control: a gain that
  survives it is the answer's format, not reasoning.

Every run of the family reports ``kept_in_answer_span`` (the share of its kept steps inside
that span) in its ``selection`` statistics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from lightreasoner.core.alignment import coverage
from lightreasoner.training.loggers import log_trace_media
from lightreasoner.models.spec import load_tokenizer
from lightreasoner.sampling.sampler import run_sampling
from lightreasoner.selection.select import (
    SelectionSettings,
    answer_span_starts,
    export_samples,
    kept_step_profile,
    select,
    selection_stats,
    verify_traces,
)

from .base import Method, MethodInputs, TrainingData

log = logging.getLogger("lightreasoner")


@dataclass
class LightReasoner(Method):
    """Contrastive sampling through the trace cache, then read-time selection (``selection.*``)."""

    name: str = "lightreasoner"

    def prepare(self, inputs: MethodInputs) -> TrainingData:
        problems = inputs.problems
        cache = run_sampling(
            expert=inputs.expert,
            amateur=inputs.amateur,
            problems=problems,
            dataset_identity=inputs.dataset_identity,
            sampling_cfg=inputs.sampling,
            cache_dir=inputs.cache_dir,
            trainer_kwargs=inputs.trainer_placement,
            generation=inputs.generation,
            pair=inputs.pair,
        )
        records = cache.read([p.id for p in problems])
        sel = SelectionSettings.from_cfg(inputs.selection, alpha_min=cache.alpha_min)
        tokenizer = load_tokenizer(inputs.expert, "model_pair.expert")
        verified = verify_traces(records, problems, tokenizer) if sel.verified_only else None
        spans = answer_span_starts(records, tokenizer)
        counts: dict = {}
        samples = select(records, alpha_min=cache.alpha_min, seed=inputs.seed, selector=sel, verified=verified,
                         report=counts, span_starts=spans)
        statistics = {
            "trace_cache": str(cache.path), "problems": len(problems), "beta": sel.beta, "alpha": sel.alpha,
            **selection_stats(records, samples, junk_pe=sel.junk_pe),
            **counts,
        }
        statistics.update(kept_step_profile(records, samples, tokenizer, span_starts=spans))
        if records and "aligned_mass" in records[0]:  # a cross-tokenizer pair: its coverage at this run's beta
            statistics["coverage"] = coverage(records, sel.beta, sel.first_step)
        if inputs.export_published or inputs.logger:
            log_trace_media(inputs.logger, records, tokenizer, sel.beta, sel.alpha, sel.first_step)
            if inputs.export_published and inputs.out_dir is not None:
                export_samples(samples, inputs.out_dir / "samples.jsonl", tokenizer, {p.id: p.question for p in problems})
        log.info("selection: %s", json.dumps(statistics))
        return TrainingData(samples=samples, sample_key=cache.key, statistics=statistics,
                            cost={**cache.recorded_cost(), "cached": not cache.sampled_now}, training_problems=len(problems))
