"""The method's math, and nothing else: no models, no I/O.

Notation follows ``METHOD.md``. ``logp_e`` / ``logp_a`` are log-probabilities of the expert /
amateur, each a ``log_softmax`` over *its own* full logit width. Everything that compares the
two (KL, contrastive scores, candidates) is taken over the ids both models share, i.e. the
first ``min(V_e, V_a)`` ids, **without renormalising** (as the published code does).

All functions work on any leading batch shape ``[...]`` and are differentiable where it makes
sense (the distillation loss).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "shared_width",
    "kl_shared",
    "tail_mask",
    "top_candidates",
    "soft_label",
    "truncate_top_k",
    "keep_steps",
    "soft_label_entropy",
    "candidate_entropy",
    "distill_loss",
    "reverse_kl_loss",
    "jsd_loss",
    "LOSSES",
    "objective_loss",
    "fraction_quota",
    "apportion",
    "top_steps",
    "junk_mass",
    "expert_label",
    "random_steps",
    "contrastive_choice",
]


def shared_width(v_e: int, v_a: int) -> int:
    """Number of vocabulary ids both models score (the narrower logit width)."""
    return min(int(v_e), int(v_a))


def kl_shared(logp_e: Tensor, logp_a: Tensor) -> Tensor:
    """``KL(pE || pA)`` over the shared ids, no renormalisation.

    ``logp_e``: ``[..., V_e]``, ``logp_a``: ``[..., V_a]`` full-width log-probabilities.
    Returns ``[...]`` in the input's float dtype (compute in fp32 for stability).
    """
    v = shared_width(logp_e.shape[-1], logp_a.shape[-1])
    le = logp_e[..., :v].float()
    la = logp_a[..., :v].float()
    pe = le.exp()
    # 0 * (-inf - x) must be 0, not nan: where pE == 0 the term vanishes.
    term = torch.where(pe > 0, pe * (le - la), torch.zeros_like(pe))
    return term.sum(-1)


def tail_mask(logp_e: Tensor, alpha: float, max_logp_e: Tensor | None = None) -> Tensor:
    """Plausibility filter ``V_t = {v : pE(v) >= alpha * max pE}`` as a boolean mask.

    ``max_logp_e`` may be given (``[...]``) when ``logp_e`` holds only a subset of the
    vocabulary (stored candidates); by default it is the max over the last axis.
    """
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha: expected 0 < alpha <= 1, got {alpha}")
    if max_logp_e is None:
        max_logp_e = logp_e.max(dim=-1).values
    # small slack so that the argmax itself always survives float round-off
    return logp_e >= (max_logp_e.unsqueeze(-1) + math.log(alpha) - 1e-6)


def top_candidates(
    logp_e: Tensor,
    logp_a: Tensor,
    alpha_min: float,
    max_candidates: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Candidate set for a small ``alpha_min``, with both log-probabilities.

    Candidates are shared ids with ``pE >= alpha_min * max pE`` (max over the expert's full
    width), at most ``max_candidates`` of them, most probable first. Storing these lets any
    ``alpha >= alpha_min`` be applied later without the models.

    Returns ``ids [..., K]`` (long), ``cand_logp_e [..., K]``, ``cand_logp_a [..., K]``,
    ``valid [..., K]`` (bool; padding slots are False) and ``max_logp_e [...]`` with
    ``K = min(max_candidates, V_shared)``.
    """
    v = shared_width(logp_e.shape[-1], logp_a.shape[-1])
    max_logp_e = logp_e.max(dim=-1).values.float()
    k = min(int(max_candidates), v)
    top_lpe, ids = logp_e[..., :v].float().topk(k, dim=-1)
    lpa = logp_a[..., :v].float().gather(-1, ids)
    valid = top_lpe >= (max_logp_e.unsqueeze(-1) + math.log(alpha_min) - 1e-6)
    return ids, top_lpe, lpa, valid, max_logp_e


def soft_label(
    cand_logp_e: Tensor,
    cand_logp_a: Tensor,
    max_logp_e: Tensor,
    alpha: float,
    valid: Tensor | None = None,
    tau: float = 1.0,
    top_k: int | None = None,
    gamma: float = 1.0,
) -> Tensor:
    """Contrastive soft label ``vC = softmax((log pE - gamma * log pA) / tau)`` restricted to ``V_t``.

    Inputs are candidate-aligned ``[..., K]`` (``max_logp_e`` is ``[...]``). Returns weights
    ``[..., K]`` that sum to 1 over the kept candidates and are exactly 0 elsewhere.
    ``tau`` (> 0) is a temperature on the contrast (1: the method; below 1 sharper, above 1
    flatter); ``top_k`` keeps only the ``k`` largest weights, renormalised
    (:func:`truncate_top_k`; None: all of ``V_t``). ``gamma`` (>= 0) is the contrast strength:
    0 drops the amateur (the expert renormalised over ``V_t``, :func:`expert_label`), 1 is the
    published label, above 1 extrapolates away from the amateur (contrastive decoding's
    coefficient). The defaults compute exactly the published label.
    """
    if gamma == 0:
        return expert_label(cand_logp_e, max_logp_e, alpha, valid=valid, tau=tau, top_k=top_k)
    keep = tail_mask(cand_logp_e, alpha, max_logp_e)
    if valid is not None:
        keep = keep & valid
    score = (cand_logp_e - cand_logp_a).float() if gamma == 1 else (cand_logp_e.float() - float(gamma) * cand_logp_a.float())
    return _label_from_score(score, keep, tau, top_k)


def _label_from_score(score: Tensor, keep: Tensor, tau: float, top_k: int | None) -> Tensor:
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau: expected a number > 0, got {tau!r}")
    if tau != 1:
        score = score / float(tau)
    score = score.masked_fill(~keep, float("-inf"))
    w = torch.nan_to_num(torch.softmax(score, dim=-1), nan=0.0)
    return w if top_k is None else truncate_top_k(w, top_k)


def truncate_top_k(weights: Tensor, k: int) -> Tensor:
    """Soft labels ``[..., K]`` cut to their ``k`` largest weights and renormalised to sum 1
    (zeros elsewhere; ties go to the earlier slot). Rows with at most ``k`` non-zero weights
    are returned unchanged. Equals the softmax over the ``k`` best-scored candidates."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k: expected an integer >= 1, got {k!r}")
    w = weights.float()
    if w.shape[-1] <= k:
        return w
    order = torch.sort(w, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(w.shape[-1], device=w.device).expand_as(order))
    cut = torch.where(rank < k, w, torch.zeros_like(w))
    total = cut.sum(-1, keepdim=True)
    return torch.where(total > 0, cut / total.clamp_min(1e-30), cut)


def keep_steps(kl: Tensor, beta: float, first_step: int = 1, length: Tensor | int | None = None) -> Tensor:
    """Step selection: keep step ``t`` iff ``KL_t >= beta`` and ``first_step <= t < length``.

    ``kl``: ``[..., T]`` with steps numbered from 0 (the first generated token).
    """
    if beta < 0:
        raise ValueError(f"beta: expected beta >= 0, got {beta}")
    t = torch.arange(kl.shape[-1], device=kl.device)
    keep = (kl >= beta) & (t >= first_step)
    if length is not None:
        length = torch.as_tensor(length, device=kl.device)
        keep = keep & (t < length.unsqueeze(-1) if length.dim() else t < length)
    return keep


def soft_label_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of soft labels ``[..., K]`` (zero weights contribute nothing)."""
    w = weights.float()
    return -(torch.where(w > 0, w * w.clamp_min(1e-30).log(), torch.zeros_like(w))).sum(-1)


def candidate_entropy(cand_logp_e: Tensor) -> Tensor:
    """The expert's entropy (nats) estimated from its stored candidates ``[..., K]``
    (log-probabilities; ``-inf`` in padding slots).

    The scored traces keep only the candidates with ``pE >= alpha_min * max pE`` (at most
    ``max_candidates``), not the full distribution. The estimate is ``-sum_c pE(c) log pE(c)``
    over the candidates plus ``-r log r`` for the remaining mass ``r = 1 - sum_c pE(c)`` taken
    as if it were one token: a lower bound of the true entropy (merging tokens never raises
    entropy), exact when the candidates hold all the mass, and monotone in the spread of the
    mass the candidates do not hold. Returns ``[...]``.
    """
    lp = cand_logp_e.float()
    p = lp.exp()
    inside = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)
    rest = (1.0 - p.sum(-1)).clamp_min(0.0)
    return inside - torch.where(rest > 0, rest * rest.clamp_min(1e-30).log(), torch.zeros_like(rest))


def distill_loss(logits: Tensor, target_ids: Tensor, target_w: Tensor) -> Tensor:
    """Per-step ``KL(vC || softmax(logits))``.

    ``logits``: ``[K, V]`` the tuned model's logits at the kept positions (softmax over the
    model's full width). ``target_ids`` / ``target_w``: ``[K, C]`` candidate ids and soft-label
    weights (padding slots have weight 0 and any valid id). Returns ``[K]``.
    """
    logq = torch.log_softmax(logits.float(), dim=-1).gather(-1, target_ids.long())
    w = target_w.float()
    logw = w.clamp_min(1e-30).log()
    return torch.where(w > 0, w * (logw - logq), torch.zeros_like(w)).sum(-1)


def reverse_kl_loss(logits: Tensor, target_ids: Tensor, target_w: Tensor) -> Tensor:
    """Per-step reverse KL ``KL(q_S || vC)`` on the soft label's support ``S`` (its non-zero
    slots), with ``q_S`` the tuned model's distribution renormalised over ``S``.

    The soft label is zero outside ``S``, so a reverse KL over the full width would be infinite
    as soon as the model puts any mass there; restricting both to ``S`` (as NeMo-RL's top-k
    ``reverse`` KL does) keeps it finite and mode-seeking. The model's mass outside ``S`` is not
    trained by this loss, and a step whose label has a single candidate contributes 0 (so a
    one-hot target, e.g. the ``sft`` method's, gives no gradient). Shapes as :func:`distill_loss`.
    """
    w = target_w.float()
    support = w > 0
    z = logits.float().gather(-1, target_ids.long())
    # finite fill (not -inf): no nan in the backward of the masked-out slots, nor for an empty row
    logq = torch.log_softmax(z.masked_fill(~support, torch.finfo(z.dtype).min), dim=-1)
    logq = torch.where(support, logq, torch.zeros_like(logq))
    q = torch.where(support, logq.exp(), torch.zeros_like(logq))
    logw = w.clamp_min(1e-30).log()
    return torch.where(support, q * (logq - logw), torch.zeros_like(w)).sum(-1)


def jsd_loss(logits: Tensor, target_ids: Tensor, target_w: Tensor, beta: float = 0.5) -> Tensor:
    """Per-step generalized Jensen-Shannon divergence (TRL's GKD convention)
    ``JSD_beta = beta * KL(vC || M) + (1 - beta) * KL(q || M)``, ``M = beta * vC + (1 - beta) * q``,
    with ``q`` the tuned model's softmax over its full width and ``0 < beta < 1``.

    Outside the soft label's support ``M = (1 - beta) q``, so those ids add the closed-form
    ``(1 - beta) * q(rest) * -log(1 - beta)`` (``q(rest)`` = the model's mass outside the
    support): finite and exact without a vocabulary-sized target. Symmetric at ``beta = 0.5``;
    ``JSD_beta / beta`` tends to the forward KL as ``beta -> 0``. Shapes as :func:`distill_loss`.
    """
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 < beta < 1):
        raise ValueError(f"jsd_beta: expected 0 < beta < 1, got {beta!r}")
    w = target_w.float()
    support = w > 0
    logq = torch.log_softmax(logits.float(), dim=-1).gather(-1, target_ids.long())
    q = torch.where(support, logq.exp(), torch.zeros_like(w))
    m = beta * w + (1 - beta) * q
    logm = m.clamp_min(1e-30).log()
    kl_target = torch.where(support, w * (w.clamp_min(1e-30).log() - logm), torch.zeros_like(w)).sum(-1)
    kl_model_in = torch.where(support & (q > 0), q * (logq - logm), torch.zeros_like(w)).sum(-1)
    rest = (1.0 - q.sum(-1)).clamp_min(0.0)
    kl_model = kl_model_in - rest * math.log(1 - beta)
    return beta * kl_target + (1 - beta) * kl_model


LOSSES = ("forward_kl", "reverse_kl", "jsd")
"""``distill.loss``: ``forward_kl`` (the method, :func:`distill_loss`), ``reverse_kl``
(:func:`reverse_kl_loss`), ``jsd`` (:func:`jsd_loss`, mixing weight ``distill.jsd_beta``)."""


def objective_loss(kind: str, logits: Tensor, target_ids: Tensor, target_w: Tensor, jsd_beta: float = 0.5) -> Tensor:
    """Per-step loss ``[K]`` of the objective ``kind`` (:data:`LOSSES`)."""
    if kind == "forward_kl":
        return distill_loss(logits, target_ids, target_w)
    if kind == "reverse_kl":
        return reverse_kl_loss(logits, target_ids, target_w)
    if kind == "jsd":
        return jsd_loss(logits, target_ids, target_w, jsd_beta)
    raise ValueError(f"distill.loss: expected one of {list(LOSSES)}, got {kind!r}")


def expert_label(
    cand_logp_e: Tensor,
    max_logp_e: Tensor,
    alpha: float,
    valid: Tensor | None = None,
    tau: float = 1.0,
    top_k: int | None = None,
) -> Tensor:
    """The *no contrast* ablation's target: the expert's own distribution restricted to ``V_t``
    and renormalised, ``pE(v) / sum_{u in V_t} pE(u)`` (zero outside ``V_t``).

    Same shapes as :func:`soft_label`; only the amateur's term is gone. ``tau`` and ``top_k``
    act as there, on the score ``log pE``: ``softmax(log pE / tau)`` over ``V_t``.
    """
    keep = tail_mask(cand_logp_e, alpha, max_logp_e)
    if valid is not None:
        keep = keep & valid
    if tau == 1 and top_k is None:
        w = torch.softmax(cand_logp_e.float().masked_fill(~keep, float("-inf")), dim=-1)
        return torch.nan_to_num(w, nan=0.0)
    return _label_from_score(cand_logp_e.float(), keep, tau, top_k)


def random_steps(eligible: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` step indices drawn uniformly without replacement among the ``eligible`` ones
    (bool ``[T]``), sorted (the *random steps* ablation: KL selection's count, not its choice)."""
    idx = eligible.nonzero().flatten()
    if k > idx.numel():
        raise ValueError(f"random_steps: {k} steps asked for, only {idx.numel()} eligible")
    pick = torch.randperm(idx.numel(), generator=generator)[:k]
    return idx[pick].sort().values


def contrastive_choice(logp_e: Tensor, logp_a: Tensor, alpha: float) -> Tensor:
    """Contrastive decoding's next token: ``argmax_{v in V_t} log pE(v) - log pA(v)`` over the
    shared ids, with ``V_t = {v : pE(v) >= alpha * max pE}``.

    ``logp_e`` ``[..., V_e]`` and ``logp_a`` ``[..., V_a]`` are log-probabilities. The expert's
    mode is always in ``V_t``; should it lie beyond the shared width (no amateur score), the
    expert's greedy token is taken. Returns ids ``[...]``.
    """
    v = shared_width(logp_e.shape[-1], logp_a.shape[-1])
    le, la = logp_e[..., :v].float(), logp_a[..., :v].float()
    keep = tail_mask(logp_e[..., :v], alpha, logp_e.float().max(-1).values)
    score = (le - la).masked_fill(~keep, float("-inf"))
    choice = score.argmax(-1)
    none = ~keep.any(-1)
    return torch.where(none, logp_e.argmax(-1), choice)


# --------------------------------------------------------------------------- step-selection rules


def fraction_quota(eligible: Tensor, fraction: float) -> Tensor:
    """Steps per trace the ``top_fraction`` rule keeps: ``floor(fraction * n + 1/2)`` of a trace's
    ``n`` eligible steps (``eligible``: int ``[N]`` per trace; half rounds up)."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction!r}")
    n = eligible.long()
    return torch.floor(n.double() * float(fraction) + 0.5).long().clamp(max=n)


def apportion(total: int, sizes: Tensor) -> Tensor:
    """``total`` kept steps shared among traces in proportion to their ``sizes`` (eligible steps,
    int ``[N]``) by the largest-remainder method: each trace gets ``floor`` or ``ceil`` of
    ``total * n_i / sum n``, capped at ``n_i``, and the shares sum to exactly ``min(total, sum n)``
    (remainders tied: the earlier trace first). The same fraction of every trace, in integers."""
    sizes = sizes.long()
    budget = min(int(total), int(sizes.sum()))
    if budget <= 0 or sizes.numel() == 0:
        return torch.zeros_like(sizes)
    exact = sizes.double() * budget / float(sizes.sum())
    share = torch.floor(exact).long().clamp(max=sizes)
    left = budget - int(share.sum())
    if left > 0:
        remainder = torch.where(share < sizes, exact - share.double(), torch.full_like(exact, -1.0))
        order = torch.sort(remainder, descending=True, stable=True).indices[:left]
        share[order] += 1
    return share


def top_steps(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` (``[T]``; ``-inf`` = not eligible), ties to the
    earlier step, returned in step order."""
    k = min(int(k), int(torch.isfinite(scores).sum()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores.double(), descending=True, stable=True).indices[:k]
    return order.sort().values


def junk_mass(target_w: Tensor, cand_logp_e: Tensor, junk_pe: float) -> Tensor:
    """Soft-label mass ``[...]`` on candidates the base expert itself finds implausible,
    ``pE < junk_pe`` (``target_w`` and ``cand_logp_e`` candidate-aligned ``[..., K]``)."""
    if not (isinstance(junk_pe, (int, float)) and 0 < junk_pe < 1):
        raise ValueError(f"junk_pe: expected 0 < junk_pe < 1, got {junk_pe!r}")
    junk = cand_logp_e.float() < math.log(junk_pe)
    return torch.where(junk, target_w.float(), torch.zeros_like(target_w, dtype=torch.float32)).sum(-1)
