"""The scored-trace cache: ``{cache_dir}/traces/{key}/``, a :class:`~lightreasoner.sampling.shards.ShardStore`
(layout, resume and damage handling there).

The key is the sha256 of the canonical JSON of everything that determines the scored traces
(:func:`trace_key_fields`): both models' ``ModelSpec.identity()`` (dtype included), the
tokenizer's vocabulary, the dataset identity, the prompt template fingerprint and system
prompt, the generation settings, ``alpha_min``, ``max_candidates`` and
:data:`~lightreasoner.sampling.shards.FORMAT_VERSION` — not ``beta``/``alpha``/``first_step``/batch
size, which only matter when samples are read (:mod:`lightreasoner.selection.select`).

Shards are written batch by batch as the sampler produces them (the ``sampler.TraceWriter``
prediction-writer callback; each DDP rank writes its own). Reading checks each record's shapes
(:func:`record_problem`) besides the store's digest, so a malformed record is never read as a
shorter or shifted trace. The manifest holds counts, KL statistics and the kept-step fraction
by beta (:func:`scored_trace_stats`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightreasoner.core import alignment, contrast
from lightreasoner.core.files import canonical_json
from lightreasoner.data.prompts import template_fingerprint
from lightreasoner.data.records import SCORED_TRACE_KEYS
from lightreasoner.models.spec import ModelSpec
from lightreasoner.sampling.shards import FORMAT_VERSION, ShardStore, store_key, tokenizer_fingerprint

KL_NEAR_ZERO = 0.01
"""KL below this counts as "near zero" in the manifest's statistics."""

MANIFEST_BETAS = (0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Betas at which the manifest reports the kept-step fraction (besides the configured one)."""


# ----------------------------------------------------------------------------- keys
def trace_key_fields(
    expert: ModelSpec,
    amateur: ModelSpec,
    dataset_identity: Mapping,
    tokenizer,
    settings: Any,
    engine: Mapping | None = None,
    pair: Mapping | None = None,
) -> dict:
    """Everything that determines the scored traces (and nothing that does not).

    ``settings`` is the run's ``sampling.SamplingSettings`` (its ``key_fields()`` and
    ``system_prompt``); ``engine`` the generation engine's key identity
    (``generation.engine_key``), absent for transformers at the model's precision, so caches
    made before engines were configurable keep their keys; ``pair`` the pair's kind
    (``pairs.PairSettings.key_fields``: a non-``shared`` alignment, an ``early_exit`` amateur
    and its layer), absent for the default pair for the same reason."""
    fields = {
        "format_version": FORMAT_VERSION,
        "expert": expert.identity(),
        "amateur": amateur.identity(),
        "dataset": json.loads(canonical_json(dict(dataset_identity))),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt_template": template_fingerprint(tokenizer, settings.system_prompt),
        "system_prompt": settings.system_prompt or "",
        "generation": settings.key_fields(),
    }
    if engine is not None:
        fields["engine"] = dict(engine)
    if pair:
        fields["pair"] = json.loads(canonical_json(dict(pair)))
    return fields


def trace_key(fields: Mapping) -> str:
    """The trace cache's key of :func:`trace_key_fields` (:func:`~lightreasoner.sampling.shards.store_key`)."""
    return store_key(fields)


# ----------------------------------------------------------------------------- records
def record_problem(rec: Mapping) -> str | None:
    """What is wrong with a stored scored trace's shapes (None: nothing), so a malformed record
    is never read as a shorter or shifted trace."""
    t = rec["trace_ids"]
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        return "trace_ids is not a 1-D tensor"
    steps = t.numel()
    for k in ("kl", "max_logp_e"):
        if not isinstance(rec[k], torch.Tensor) or rec[k].shape != (steps,):
            return f"{k} does not have one value per step ({steps})"
    off = rec["cand_offsets"]
    if not isinstance(off, torch.Tensor) or off.shape != (steps + 1,):
        return f"cand_offsets does not have {steps + 1} entries"
    n = int(off[-1])
    if int(off[0]) != 0 or bool((off[1:] < off[:-1]).any()):
        return "cand_offsets do not rise from 0"
    for k in ("cand_ids", "cand_logp_e", "cand_logp_a"):
        if not isinstance(rec[k], torch.Tensor) or rec[k].shape != (n,):
            return f"{k} does not have the {n} entries cand_offsets count"
    return None


class TraceCache(ShardStore):
    """One key directory of the scored-trace cache."""

    kind = "traces"
    label = "trace cache"
    what = "scored traces"
    record_keys = SCORED_TRACE_KEYS

    @property
    def alpha_min(self) -> float:
        """The smallest alpha the stored candidates support."""
        return float(self.fields["generation"]["alpha_min"])

    def malformed(self, rec: Mapping) -> str | None:
        """:func:`record_problem` of a stored scored trace."""
        return record_problem(rec)

    def stats(self, records: Sequence[Mapping]) -> dict:
        """:func:`scored_trace_stats` of the stored traces."""
        return scored_trace_stats(records)


# ----------------------------------------------------------------------------- statistics
REFERENCE_SELECTION = {"beta": 0.4, "first_step": 1}
"""Where the manifest measures what depends on a selection (the cross-tokenizer coverage at kept
steps): the published beta, fixed, never a job's own (a run records its own in its summary)."""


def scored_trace_stats(records: Sequence[Mapping]) -> dict:
    """The manifest's statistics of scored traces, independent of any job's selection: counts,
    KL quantiles, the kept-step fraction as a curve over :data:`MANIFEST_BETAS` (from step 1),
    and for a cross-tokenizer pair (records with ``aligned_mass``) its coverage
    (:func:`lightreasoner.core.alignment.coverage`) at :data:`REFERENCE_SELECTION`."""
    first = REFERENCE_SELECTION["first_step"]
    stats = {
        "counts": trace_counts(records),
        "kl": kl_statistics(records),
        "kept_step_fraction_by_beta": {str(b): kept_fraction(records, b, first) for b in MANIFEST_BETAS},
    }
    if records and all(alignment.ALIGNMENT_KEYS[0] in r for r in records):
        stats["coverage"] = alignment.coverage(records, REFERENCE_SELECTION["beta"], first)
        stats["coverage_selection"] = dict(REFERENCE_SELECTION)
    return stats


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
    kl = kl[~torch.isnan(kl)]  # steps a cross-tokenizer pair does not score
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
    total = sum(int(r["kl"].numel()) for r in records)
    if total == 0:
        return 0.0
    kept = sum(int(contrast.keep_steps(r["kl"], beta, first_step).sum()) for r in records)
    return kept / total
