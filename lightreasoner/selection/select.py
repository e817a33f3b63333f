"""Step selection, in one home: the ``selection`` config group applied to scored traces at read time.

:func:`select` turns scored traces (``docs/reference/records.md``; from :mod:`trace_cache`) into
:class:`~lightreasoner.data.records.TraceSample`s as :class:`SelectionSettings` says: a step rule from
the registry :data:`RULES` (``kl``: ``KL_t >= beta`` from ``first_step`` on, the method;
``top_fraction``, ``expert_entropy``, ``random``, ``answer_span``; a new rule is one function and
:func:`register_rule`) keeps steps among the eligible ones, and each kept step gets its label
over the plausible set at ``alpha`` (``alpha >= alpha_min`` of the cached traces): the contrast
``softmax((log pE - log pA) / tau)`` or, ``target: expert``, the expert's own distribution, cut
to ``top_k``. Cheap: a grid over these keys never touches the models. ``verified_only`` reads only
traces whose final answer verifies (:func:`verify_traces`).

Also: the selection statistics (:func:`selection_stats`, :func:`kept_step_profile`, with the
final-answer span of :func:`answer_span_step`), and :func:`export_samples` /
:func:`import_samples` for the published samples format (JSON Lines: ``prompt_id`` = the
question text, ``step``, ``prefix``, ``tokens``, ``token_ids``, ``weights``, ``kl_divergence``;
one row per kept step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightreasoner.core import contrast
from lightreasoner.data.answers import extract_answer, is_equivalent
from lightreasoner.core.config import settings_of
from lightreasoner.core.files import atomic_write_bytes
from lightreasoner.data.prompts import SAMPLING_SYSTEM, chat_prompt
from lightreasoner.data.records import Problem, TraceSample

log = logging.getLogger(__name__)

EXPORT_FIELDS = ("prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence")
"""Fields of one row of the published samples format."""


@dataclass(frozen=True)
class SelectionSettings:
    """The ``selection`` config group (``conf/selection/``), the one home of step selection:
    which steps of the cached scored traces are kept and how their soft labels are shaped, all at
    read time (a grid over these keys never re-runs the models). Checked once, here. The rules
    are a registry (:data:`RULES`, :func:`register_rule`); the defaults are the method: keep
    ``KL_t >= beta`` from ``first_step`` on, label ``softmax(log pE - log pA)`` over the plausible
    set ``{v : pE(v) >= alpha * max pE}``."""

    beta: float = 0.4
    """Keep step t iff ``KL_t >= beta`` (published 0.4; 0 keeps every eligible step: the paper's
    *no step selection*). The ``kl`` rule's threshold; ``random`` and ``match_count`` take its count."""
    alpha: float = 0.2
    """Plausible set: candidates with ``pE >= alpha * max pE`` (published 0.2); ``0 < alpha <= 1``
    and at least the cached traces' ``sampling.alpha_min``, or ``0`` (the paper's *no tail
    filter*): the widest set the cache holds (``alpha_min``, at most ``max_candidates`` per step)."""
    first_step: int = 1
    """First eligible step (the published code never keeps step 0)."""
    rule: str = "kl"
    """Which steps are kept (:data:`RULES`): ``kl``: ``KL_t >= beta`` (the method);
    ``top_fraction``: in every trace, the ``fraction`` of its eligible steps with the highest KL;
    ``expert_entropy``: the steps whose expert entropy is at least ``entropy_min`` (no amateur);
    ``random``: per trace as many steps as ``kl`` keeps, at positions drawn uniformly (seeded by
    the run's seed and the problem id) among the eligible ones (*random steps*); ``answer_span``:
    every eligible step of the trace's final-answer span, no KL threshold (*format only*).
    Eligible: ``t >= first_step`` with a non-empty plausible set."""
    fraction: float = 0.2
    """``top_fraction``: share of each trace's eligible steps kept, ``0 < fraction <= 1``."""
    entropy_min: float = 1.0
    """``expert_entropy``: keep the steps with expert entropy ``>= entropy_min`` (nats, ``>= 0``)."""
    match_count: bool = False
    """``top_fraction`` / ``expert_entropy`` keep exactly as many steps as ``kl`` keeps at
    ``beta`` over the same traces (``fraction`` / ``entropy_min`` unused)."""
    verified_only: bool = False
    """Only traces whose final answer verifies against the gold answer (any rule)."""
    target: str = "contrast"
    """Label shaping (:data:`TARGETS`): ``contrast``, ``softmax((log pE - log pA) / tau)`` over the
    plausible set (the method); ``expert``, the expert's own ``softmax(log pE / tau)`` there (*no contrast*)."""
    gamma: float = 1.0
    """Contrast strength (``>= 0``): the label is ``softmax((log pE - gamma * log pA) / tau)``
    over the plausible set; 0 is ``no_contrast`` (the expert renormalised), 1 the published
    label, above 1 extrapolates away from the amateur. Read time: no re-sampling."""
    tau: float = 1.0
    """Temperature of the label (> 0; 1 is the method)."""
    top_k: int | None = None
    """Labels cut to their ``top_k`` largest weights, renormalised (>= 1; null: all of the plausible set)."""
    junk_pe: float = 0.01
    """A candidate is implausible to the expert when its ``pE`` is below this (``0 < junk_pe < 1``):
    the selection statistics' ``junk_rate`` (and the drift guard's, which reads this key)."""

    @classmethod
    def from_cfg(cls, cfg: Mapping | Any | None, alpha_min: float | None = None) -> "SelectionSettings":
        """From a ``selection`` mapping, validated (against the cached traces' ``alpha_min`` when
        given); ``alpha = 0`` becomes ``alpha_min``. One ``ValueError`` naming the first bad key."""
        return settings_of(cls, cfg, "selection").resolved(alpha_min)

    def resolved(self, alpha_min: float | None = None) -> "SelectionSettings":
        """Validated, with ``alpha = 0`` (no tail filter) resolved to ``alpha_min``."""
        if self.alpha == 0 and not isinstance(self.alpha, bool) and isinstance(self.alpha, (int, float)):
            if alpha_min is None:
                raise ValueError("selection.alpha=0 (no tail filter) needs the scored traces' sampling.alpha_min")
            log.info("selection.alpha=0 (no tail filter): the widest candidate set the traces hold, pE >= %s * max pE", alpha_min)
            settings = dataclasses.replace(self, alpha=float(alpha_min))
        else:
            settings = self
        settings.validate(alpha_min)
        return settings

    def validate(self, alpha_min: float | None = None) -> None:
        """One ``ValueError`` naming the first invalid field (``selection.<key>``)."""

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not number(self.beta) or self.beta < 0:
            raise ValueError(f"selection.beta: expected a number >= 0 (0 keeps every step), got {self.beta!r}")
        if not number(self.alpha) or not (0 < self.alpha <= 1):
            raise ValueError(f"selection.alpha: expected 0 < alpha <= 1 (or 0: no tail filter), got {self.alpha!r}")
        if isinstance(self.first_step, bool) or not isinstance(self.first_step, int) or self.first_step < 0:
            raise ValueError(f"selection.first_step: expected an integer >= 0, got {self.first_step!r}")
        if alpha_min is not None and self.alpha < alpha_min - 1e-12:
            raise ValueError(
                f"selection.alpha={self.alpha} is below alpha_min={alpha_min} of the cached scored traces: candidates with "
                f"pE < alpha_min * max pE were not stored. Re-score with sampling.alpha_min <= {self.alpha} "
                "(a new trace-cache key; the models run again), or use alpha >= alpha_min"
            )
        if self.rule not in RULES:
            raise ValueError(f"selection.rule: expected one of {sorted(RULES)}, got {self.rule!r}")
        if not number(self.fraction) or not 0 < self.fraction <= 1:
            raise ValueError(f"selection.fraction: expected 0 < fraction <= 1, got {self.fraction!r}")
        if not number(self.entropy_min) or self.entropy_min < 0:
            raise ValueError(f"selection.entropy_min: expected a number >= 0 (nats), got {self.entropy_min!r}")
        for name in ("match_count", "verified_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"selection.{name}: expected true or false, got {getattr(self, name)!r}")
        if self.target not in TARGETS:
            raise ValueError(f"selection.target: expected one of {list(TARGETS)}, got {self.target!r}")
        if not number(self.gamma) or self.gamma < 0:
            raise ValueError(f"selection.gamma: expected a number >= 0 (0: no contrast, 1: the method), got {self.gamma!r}")
        if not number(self.tau) or self.tau <= 0:
            raise ValueError(f"selection.tau: expected a number > 0, got {self.tau!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"selection.top_k: expected an integer >= 1 or null, got {self.top_k!r}")
        if not number(self.junk_pe) or not 0 < self.junk_pe < 1:
            raise ValueError(f"selection.junk_pe: expected 0 < junk_pe < 1, got {self.junk_pe!r}")


SelectorSettings = SelectionSettings
"""The former name of the ``selection`` group's class (one class now)."""


def verify_traces(records: Sequence[Mapping], problems: Sequence[Problem], tokenizer, timeout_s: float = 5.0) -> dict[str, bool]:
    """Problem id -> whether the trace's final answer is equivalent to the gold answer.

    The trace (``trace_ids``, special tokens dropped) is decoded with the expert's tokenizer and
    scored as evaluation scores a generation (``answers.extract_answer`` / ``is_equivalent``).
    An unfinished trace (cut at ``sampling.max_new_tokens``) never verifies: its last number
    is not a final answer. A record whose problem is not in ``problems`` is an error."""
    by_id = {p.id: p for p in problems}
    out = {}
    for rec in records:
        pid = str(rec["problem_id"])
        if pid not in by_id:
            raise KeyError(f"verify_traces: no problem {pid!r} for a scored trace")
        p = by_id[pid]
        if not bool(rec["finished"]):
            out[pid] = False
            continue
        text = tokenizer.decode(rec["trace_ids"].tolist(), skip_special_tokens=True)
        out[pid] = bool(is_equivalent(extract_answer(text, p.answer_type), p.answer, p.answer_type, timeout_s=timeout_s))
    return out


TARGETS = ("contrast", "expert")
"""``selection.target``: ``contrast``: softmax(log pE - log pA) over V_t (the method); ``expert``:
the expert's own distribution over V_t, renormalised (the *no contrast* ablation)."""

ANSWER_CUES = ("\\boxed{", "The answer is", "the answer is", "The final answer is", "the final answer is", "Answer:")
"""What opens a final answer in a trace (case-sensitive, matched in the decoded text)."""


def answer_span_char(text: str) -> int | None:
    """Character offset where ``text``'s final-answer span starts, or None (no cue).

    The span runs from the first character of the LAST occurrence of any :data:`ANSWER_CUES`
    cue to the end of the text. A cue that another cue follows with only whitespace or ``:``
    between them is the same answer statement, so the span extends back over it: in
    ``"... The answer is \\boxed{16}."`` it starts at ``The``, not at ``\\boxed{``; two
    separate statements (``"The answer is 5. ... \\boxed{6}"``) give the last one."""
    hits = sorted({(i, i + len(c)) for c in ANSWER_CUES for i in _find_all(text, c)})
    if not hits:
        return None
    start, _ = hits[-1]
    for i, end in reversed(hits[:-1]):
        if end <= start and not text[end:start].strip(" \t\n:"):
            start = i
        elif end <= start:
            break
    return start


def _find_all(text: str, cue: str) -> list[int]:
    out, i = [], text.find(cue)
    while i >= 0:
        out.append(i)
        i = text.find(cue, i + 1)
    return out


def answer_span_step(trace_ids: Sequence[int], tokenizer) -> int | None:
    """First trace step of the final-answer span (:func:`answer_span_char` on the trace decoded
    with special tokens skipped), or None when the trace has no cue. Step ``t`` is in the span
    iff ``t >= answer_span_step``: the step whose token holds the span's first character (a
    token such as `` The`` that starts with a space counts). Token -> character offsets by
    decoding prefixes (a binary search: the first ``t`` whose prefix ``trace_ids[:t+1]``
    decodes to more characters than the span's offset), so any tokenizer works: the demo's,
    byte-level BPE (Qwen) and SentencePiece alike."""
    ids = [int(i) for i in trace_ids]
    c = answer_span_char(tokenizer.decode(ids, skip_special_tokens=True))
    if c is None:
        return None
    lo, hi = 0, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) > c:
            hi = mid
        else:
            lo = mid + 1
    return lo


def answer_span_starts(records: Sequence[Mapping], tokenizer) -> dict[str, int | None]:
    """Problem id -> :func:`answer_span_step` of its scored trace (``trace_ids``)."""
    return {str(r["problem_id"]): answer_span_step(r["trace_ids"].tolist(), tokenizer) for r in records}


def _label(
    rec: Mapping, t: int, alpha: float, target: str, tau: float = 1.0, top_k: int | None = None, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ids and weights (zeros dropped) of step ``t``'s training target."""
    off = rec["cand_offsets"]
    a, b = int(off[t]), int(off[t + 1])
    if target == "contrast":
        w = contrast.soft_label(rec["cand_logp_e"][a:b], rec["cand_logp_a"][a:b], rec["max_logp_e"][t], alpha, tau=tau,
                                top_k=top_k, gamma=gamma)
    else:
        w = contrast.expert_label(rec["cand_logp_e"][a:b], rec["max_logp_e"][t], alpha, tau=tau, top_k=top_k)
    nz = w > 0
    return rec["cand_ids"][a:b][nz].long(), w[nz].float()


def _candidate_steps(rec: Mapping) -> torch.Tensor:
    """The step of every stored candidate (``[N]``, from ``cand_offsets``)."""
    off = rec["cand_offsets"].long()
    return torch.repeat_interleave(torch.arange(off.numel() - 1), off[1:] - off[:-1])


def eligible_steps(rec: Mapping, alpha: float, first_step: int) -> torch.Tensor:
    """Bool ``[T]``: step ``t >= first_step`` whose tail set at ``alpha`` holds a stored candidate
    (a step that can carry a target; the same test as the ``kl`` rule's, for all steps at once)."""
    steps = rec["kl"].numel()
    owner = _candidate_steps(rec)
    # elementwise the same float32 arithmetic as contrast.tail_mask
    plausible = rec["cand_logp_e"] >= (rec["max_logp_e"][owner] + math.log(alpha) - 1e-6)
    has = torch.bincount(owner[plausible], minlength=steps)[:steps] > 0
    return has & (torch.arange(steps) >= first_step)


def step_entropy(rec: Mapping) -> torch.Tensor:
    """Float ``[T]``: the expert's entropy at every step, estimated from the stored candidates
    (:func:`~lightreasoner.core.contrast.candidate_entropy`: a lower bound, exact when the candidates
    hold all the probability mass)."""
    steps = rec["kl"].numel()
    owner = _candidate_steps(rec)
    off = rec["cand_offsets"].long()
    width = int((off[1:] - off[:-1]).max()) if steps else 0
    padded = torch.full((steps, max(width, 1)), float("-inf"))
    if owner.numel():
        padded[owner, torch.arange(owner.numel()) - off[owner]] = rec["cand_logp_e"].float()
    return contrast.candidate_entropy(padded)


def _has_label(rec: Mapping, t: int, alpha: float) -> bool:
    """True when step ``t``'s tail set holds at least one stored (shared-id) candidate."""
    off = rec["cand_offsets"]
    a, b = int(off[t]), int(off[t + 1])
    return bool(contrast.tail_mask(rec["cand_logp_e"][a:b], alpha, rec["max_logp_e"][t]).any()) if b > a else False


def _step_generator(seed: int, problem_id: str) -> torch.Generator:
    h = hashlib.sha256(f"{seed}|{problem_id}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(h[:15], 16))


@dataclass
class RuleContext:
    """What a step rule may read beside the traces and the settings."""

    kl_chosen: list[list[int]]
    """Per trace, the steps the ``kl`` rule keeps at ``beta`` (steps with a label only)."""
    seed: int = 0
    """The run's seed (``random``)."""
    span_starts: Mapping[str, int | None] | None = None
    """Problem id -> first step of its final-answer span (``answer_span``; :func:`answer_span_starts`)."""

    @property
    def kl_count(self) -> int:
        return sum(len(c) for c in self.kl_chosen)


StepRule = Callable[[Sequence[Mapping], list[torch.Tensor], SelectionSettings, RuleContext], list[list[int]]]
"""A step rule: ``(records, eligible, settings, context) -> kept steps per trace`` (step order).
``eligible[i]`` is trace i's bool ``[T]`` mask (:func:`eligible_steps`: ``t >= first_step`` with a
non-empty plausible set at ``alpha``); a rule keeps eligible steps only."""

RULES: dict[str, StepRule] = {}
"""``selection.rule`` -> its function. A new rule is one function and :func:`register_rule`."""


def register_rule(name: str) -> Callable[[StepRule], StepRule]:
    """Decorator: register a :data:`StepRule` as ``selection.rule=<name>``."""

    def add(fn: StepRule) -> StepRule:
        RULES[name] = fn
        return fn

    return add


@register_rule("kl")
def kl_rule(records, eligible, settings, ctx):
    """The method: ``KL_t >= beta``."""
    return ctx.kl_chosen


@register_rule("top_fraction")
def top_fraction_rule(records, eligible, settings, ctx):
    """The highest-KL ``fraction`` of each trace's eligible steps (``match_count``: beta's count, shared out)."""
    sizes = torch.tensor([int(e.sum()) for e in eligible], dtype=torch.long)
    quota = contrast.apportion(ctx.kl_count, sizes) if settings.match_count else contrast.fraction_quota(sizes, settings.fraction)
    return [contrast.top_steps(rec["kl"].float().masked_fill(~e, float("-inf")), int(k)).tolist()
            for rec, e, k in zip(records, eligible, quota.tolist())]


@register_rule("expert_entropy")
def expert_entropy_rule(records, eligible, settings, ctx):
    """Expert entropy ``>= entropy_min`` (``match_count``: beta's count of the most uncertain steps)."""
    scores = [step_entropy(rec).masked_fill(~e, float("-inf")) for rec, e in zip(records, eligible)]
    if not settings.match_count:
        return [(h >= settings.entropy_min).nonzero().flatten().tolist() for h in scores]
    if not scores:
        return []
    flat = torch.cat(scores)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[contrast.top_steps(flat, ctx.kl_count)] = True  # ties: the earlier trace, then the earlier step
    out, start = [], 0
    for h in scores:
        out.append(keep[start : start + h.numel()].nonzero().flatten().tolist())
        start += h.numel()
    return out


@register_rule("random")
def random_rule(records, eligible, settings, ctx):
    """Per trace, ``kl``'s count at uniformly drawn eligible steps (seeded by seed and problem id)."""
    return [contrast.random_steps(e, len(k), _step_generator(ctx.seed, str(rec["problem_id"]))).tolist() if k else []
            for rec, e, k in zip(records, eligible, ctx.kl_chosen)]


@register_rule("answer_span")
def answer_span_rule(records, eligible, settings, ctx):
    """Every eligible step from the trace's final-answer span start on (no KL threshold)."""
    if ctx.span_starts is None:
        raise ValueError("selection.rule=answer_span: needs the traces' answer spans (answer_span_starts)")
    out = []
    for rec, e in zip(records, eligible):
        start = ctx.span_starts.get(str(rec["problem_id"]))
        out.append([] if start is None else [t for t in e.nonzero().flatten().tolist() if t >= start])
    return out


def select(
    records: Sequence[Mapping],
    beta: float | None = None,
    alpha: float | None = None,
    first_step: int | None = None,
    alpha_min: float | None = None,
    target: str | None = None,
    steps: str | None = None,
    seed: int = 0,
    selector: SelectionSettings | None = None,
    verified: Mapping[str, bool] | None = None,
    report: dict | None = None,
    span_starts: Mapping[str, int | None] | None = None,
) -> list[TraceSample]:
    """Scored traces -> TraceSamples (one per trace with at least one kept step, input order).

    ``selector`` (:class:`SelectionSettings`; default: the method) chooses the rule and shapes the
    labels; ``beta``, ``alpha``, ``first_step``, ``target`` and ``steps`` (a rule name; ``kl``
    leaves ``selector.rule`` as it is), when given, replace its fields. ``alpha_min`` is the
    cached traces' (``TraceCache.alpha_min``); ``alpha`` below it is an error. A kept step whose
    plausible set is empty has no target and is never kept. With ``verified_only`` only the traces
    that ``verified`` maps to True are read (:func:`verify_traces`); ``span_starts`` feeds the
    ``answer_span`` rule. ``report``, when given, receives ``rule``, ``kl_kept_steps`` (what
    ``kl`` at ``beta`` keeps over the same traces), ``traces_read`` and, with
    ``verified_only``, ``traces_verified``.
    """
    sel = selector if selector is not None else SelectionSettings()
    changes = {k: v for k, v in (("beta", beta), ("alpha", alpha), ("first_step", first_step), ("target", target)) if v is not None}
    if steps is not None and steps != "kl":
        changes["rule"] = steps
    if changes or selector is None or sel.alpha == 0:  # settings made here; a caller's are resolved already
        sel = dataclasses.replace(sel, **changes).resolved(alpha_min)
    if sel.verified_only:
        if verified is None:
            raise ValueError("selection.verified_only: needs the traces' verification (verify_traces)")
        records = [r for r in records if verified.get(str(r["problem_id"]), False)]
    # the kl rule's choice (the method), per trace: KL >= beta among steps that have a target
    kl_chosen = [
        [t for t in contrast.keep_steps(rec["kl"].float(), sel.beta, sel.first_step).nonzero().flatten().tolist()
         if _has_label(rec, t, sel.alpha)]
        for rec in records
    ]
    ctx = RuleContext(kl_chosen=kl_chosen, seed=int(seed), span_starts=span_starts)
    if sel.rule == "kl":
        chosen_all = kl_chosen
    else:
        eligible = [eligible_steps(rec, sel.alpha, sel.first_step) for rec in records]
        chosen_all = RULES[sel.rule](records, eligible, sel, ctx)
    out: list[TraceSample] = []
    for rec, chosen in zip(records, chosen_all):
        if not chosen:
            continue
        kl = rec["kl"].float()
        labels = [_label(rec, t, sel.alpha, sel.target, sel.tau, sel.top_k, sel.gamma) for t in chosen]
        steps_t = torch.tensor(chosen, dtype=torch.long)
        prompt = rec["prompt_ids"].long()
        positions = steps_t + len(prompt) - 1
        input_ids = torch.cat([prompt, rec["trace_ids"].long()])[: int(positions[-1]) + 1]
        out.append(
            TraceSample(
                problem_id=str(rec["problem_id"]),
                input_ids=input_ids,
                positions=positions,
                steps=steps_t,
                target_ids=[ids for ids, _ in labels],
                target_w=[w for _, w in labels],
                kl=kl[steps_t].clone(),
            )
        )
    if report is not None:
        report.update(rule=sel.rule, kl_kept_steps=ctx.kl_count, traces_read=len(records))
        if sel.verified_only:
            report["traces_verified"] = len(records)
    return out


def junk_rate(records: Sequence[Mapping], samples: Sequence[TraceSample], junk_pe: float) -> float:
    """Share of the kept steps' soft-label mass on candidates the base expert itself finds
    implausible, ``pE < junk_pe`` (mean over kept steps of the mass on such tokens): what the
    targets would teach that the expert alone would not say (e.g. `` userId`` in arithmetic)."""
    by_id = {str(r["problem_id"]): r for r in records}
    masses = []
    for s in samples:
        rec = by_id.get(s.problem_id)
        if rec is None:
            continue
        off = rec["cand_offsets"]
        for t, ids, w in zip(s.steps.tolist(), s.target_ids, s.target_w):
            a, b = int(off[t]), int(off[t + 1])
            logp = dict(zip(rec["cand_ids"][a:b].tolist(), rec["cand_logp_e"][a:b].tolist()))
            lpe = torch.tensor([logp[i] for i in ids.tolist()])
            masses.append(float(contrast.junk_mass(w, lpe, junk_pe)))
    return sum(masses) / len(masses) if masses else 0.0


def selection_stats(records: Sequence[Mapping], samples: Sequence[TraceSample], junk_pe: float | None = None) -> dict:
    """Kept-step fraction, kept steps per trace, mean KL at kept steps, mean soft-label entropy
    (and, with ``junk_pe``, the :func:`junk_rate` of the kept steps' labels)."""
    total_steps = sum(int(r["kl"].numel()) for r in records)
    kept = sum(s.num_steps for s in samples)
    kls = [s.kl for s in samples if s.kl is not None and s.kl.numel()]
    ent = [float(contrast.soft_label_entropy(w)) for s in samples for w in s.target_w]
    extra = {} if junk_pe is None else {"junk_rate": junk_rate(records, samples, junk_pe)}
    return {
        "traces": len(records),
        "traces_with_kept_steps": len(samples),
        "steps": total_steps,
        "kept_steps": kept,
        "kept_step_fraction": kept / total_steps if total_steps else 0.0,
        "kept_steps_per_trace": kept / len(records) if records else 0.0,
        "mean_kl_kept": float(torch.cat(kls).mean()) if kls else 0.0,
        "mean_soft_label_entropy": sum(ent) / len(ent) if ent else 0.0,
        "mean_candidates_per_kept_step": (sum(int(w.numel()) for s in samples for w in s.target_w) / kept) if kept else 0.0,
        **extra,
    }


TOKEN_CLASSES = ("digit", "operator", "word", "other")
"""What the token at a kept step is (:func:`token_class`)."""

OPERATOR_CHARS = set("+-*/=×÷<>%^()")


def token_class(text: str) -> str:
    """``digit`` (digits, possibly with ``.``/``,``), ``operator`` (arithmetic symbols), ``word``
    (letters) or ``other`` (whitespace, punctuation, special tokens), of a token's stripped text."""
    t = text.strip()
    if not t:
        return "other"
    if any(c.isdigit() for c in t) and all(c.isdigit() or c in ".," for c in t):
        return "digit"
    if all(c in OPERATOR_CHARS for c in t):
        return "operator"
    if any(c.isalpha() for c in t) and all(c.isalpha() or c in "'-" for c in t):
        return "word"
    return "other"


def kept_step_profile(
    records: Sequence[Mapping], samples: Sequence[TraceSample], tokenizer, span_starts: Mapping[str, int | None] | None = None
) -> dict:
    """Where the kept steps are and what their labels say (the study of issue 16):

    - ``label_argmax_differs``: share of kept steps whose soft label's most weighted candidate is
      not the token the expert generated there (its greedy choice when sampling is greedy);
    - ``kept_<class>_fraction``: share of kept steps whose generated token is a digit, operator,
      word or other (:func:`token_class`; the paper: kept steps are arithmetic and logical pivots);
    - ``kept_in_answer_span``: share of kept steps inside their trace's final-answer span
      (:func:`answer_span_step`; ``span_starts`` when already computed), beside
      ``steps_in_answer_span``, the share of all trace steps there (what a choice blind to the
      span would keep) and ``traces_with_answer_cue``, the share of traces with a cue (issue 32:
      how much of what a run trains on is the answer's format).
    """
    if span_starts is None:
        span_starts = answer_span_starts(records, tokenizer)
    by_id = {str(r["problem_id"]): r for r in records}
    differs, classes, n = 0, dict.fromkeys(TOKEN_CLASSES, 0), 0
    for s in samples:
        trace = by_id[s.problem_id]["trace_ids"]
        for j, step in enumerate(s.steps.tolist()):
            tok = int(trace[step])
            ids, w = s.target_ids[j], s.target_w[j]
            differs += int(int(ids[int(w.argmax())]) != tok)
            classes[token_class(tokenizer.decode([tok]))] += 1
            n += 1
    if not n:
        return {}
    in_span = sum(int(span_starts.get(s.problem_id) is not None and t >= span_starts[s.problem_id]) for s in samples for t in s.steps.tolist())
    steps = [int(r["kl"].numel()) for r in records]
    starts = [span_starts.get(str(r["problem_id"])) for r in records]
    span_steps = sum(max(T - st, 0) for T, st in zip(steps, starts) if st is not None)
    return {
        "label_argmax_differs": differs / n,
        **{f"kept_{c}_fraction": classes[c] / n for c in TOKEN_CLASSES},
        "kept_in_answer_span": in_span / n,
        "steps_in_answer_span": span_steps / sum(steps) if sum(steps) else 0.0,
        "traces_with_answer_cue": sum(st is not None for st in starts) / len(records),
    }


# ----------------------------------------------------------------------------- export / import
def export_samples(
    samples: Sequence[TraceSample],
    path: str | os.PathLike,
    tokenizer,
    questions: Mapping[str, str],
) -> int:
    """Write the published samples format (one JSON line per kept step), atomically.

    ``questions`` maps problem id -> question text (the published ``prompt_id``). The prompt
    length of each sample is ``positions - steps + 1``. Returns the number of rows.
    """
    lines = []
    for s in samples:
        if s.problem_id not in questions:
            raise KeyError(f"export_samples: no question text for problem {s.problem_id!r}")
        q = questions[s.problem_id]
        kl = s.kl if s.kl is not None else torch.full((s.num_steps,), float("nan"))
        for j in range(s.num_steps):
            t = int(s.steps[j])
            plen = int(s.positions[j]) - t + 1
            trace_before = s.input_ids[plen : plen + t].tolist()
            ids = [int(i) for i in s.target_ids[j].tolist()]
            row = {
                "prompt_id": q,
                "step": t,
                "prefix": tokenizer.decode(trace_before, skip_special_tokens=False),
                "tokens": [tokenizer.decode([i], skip_special_tokens=False) for i in ids],
                "token_ids": ids,
                "weights": [float(w) for w in s.target_w[j].tolist()],
                "kl_divergence": float(kl[j]),
            }
            lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_bytes(Path(path), ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return len(lines)


def import_samples(
    path: str | os.PathLike,
    tokenizer,
    system_prompt: str | None = SAMPLING_SYSTEM,
    vocab_size: int | None = None,
) -> list[TraceSample]:
    """Read the published samples format -> one-step TraceSamples at the last position.

    Each row is re-tokenised from ``chat_prompt(question, system_prompt) + prefix`` (as the
    published fine-tuning code does); its target is ``token_ids`` with ``weights``
    (renormalised to sum 1). A malformed row raises one ``ValueError`` naming the line and field;
    nothing is returned then. ``vocab_size`` (the model's logit width) bounds the token ids.
    """
    path = Path(path)
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            rows.append((n, _check_row(row, path, n, vocab_size)))
    out = []
    for n, row in rows:
        text = chat_prompt(tokenizer, row["prompt_id"], system_prompt) + row["prefix"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"{path}:{n}: prompt_id/prefix tokenise to nothing")
        w = torch.tensor(row["weights"], dtype=torch.float64)
        w = (w / w.sum()).float()
        sha = hashlib.sha256(row["prompt_id"].encode("utf-8")).hexdigest()[:16]
        out.append(
            TraceSample(
                problem_id=f"import/{sha}",
                input_ids=torch.tensor(ids, dtype=torch.long),
                positions=torch.tensor([len(ids) - 1], dtype=torch.long),
                steps=torch.tensor([row["step"]], dtype=torch.long),
                target_ids=[torch.tensor(row["token_ids"], dtype=torch.long)],
                target_w=[w],
                kl=torch.tensor([row["kl_divergence"]], dtype=torch.float32),
            )
        )
    return out


def _check_row(row: Any, path: Path, n: int, vocab_size: int | None) -> dict:
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{path}:{n}: field {field!r} {why}")

    if not isinstance(row, dict):
        raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
    for field in ("prompt_id", "step", "prefix", "token_ids", "weights", "kl_divergence"):
        if field not in row:
            raise bad(field, "is missing")
    if not isinstance(row["prompt_id"], str) or not row["prompt_id"]:
        raise bad("prompt_id", "must be the question text (a non-empty string)")
    if not isinstance(row["prefix"], str):
        raise bad("prefix", "must be a string")
    if isinstance(row["step"], bool) or not isinstance(row["step"], int) or row["step"] < 0:
        raise bad("step", f"must be an integer >= 0, got {row['step']!r}")
    ids, w = row["token_ids"], row["weights"]
    if not isinstance(ids, list) or not ids:
        raise bad("token_ids", "must be a non-empty list of integers")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0 or (vocab_size is not None and i >= vocab_size):
            raise bad("token_ids", f"holds an invalid id {i!r}" + (f" (vocabulary width {vocab_size})" if vocab_size else ""))
    if len(set(ids)) != len(ids):
        raise bad("token_ids", "holds duplicate ids")
    if not isinstance(w, list) or len(w) != len(ids):
        raise bad("weights", f"must be a list as long as token_ids ({len(ids)})")
    for x in w:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise bad("weights", f"holds an invalid weight {x!r} (need finite, >= 0)")
    total = float(sum(w))
    if not abs(total - 1.0) <= 1e-3:
        raise bad("weights", f"must sum to 1 (got {total:.6f})")
    kl = row["kl_divergence"]
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not math.isfinite(kl):
        raise bad("kl_divergence", f"must be a finite number, got {kl!r}")
    if "tokens" in row and (not isinstance(row["tokens"], list) or len(row["tokens"]) != len(ids)):
        raise bad("tokens", f"must be a list as long as token_ids ({len(ids)})")
    return row
