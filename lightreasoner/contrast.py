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
    "keep_steps",
    "soft_label_entropy",
    "distill_loss",
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
) -> Tensor:
    """Contrastive soft label ``vC = softmax(log pE - log pA)`` restricted to ``V_t``.

    Inputs are candidate-aligned ``[..., K]`` (``max_logp_e`` is ``[...]``). Returns weights
    ``[..., K]`` that sum to 1 over the kept candidates and are exactly 0 elsewhere.
    """
    keep = tail_mask(cand_logp_e, alpha, max_logp_e)
    if valid is not None:
        keep = keep & valid
    score = (cand_logp_e - cand_logp_a).float()
    score = score.masked_fill(~keep, float("-inf"))
    w = torch.softmax(score, dim=-1)
    return torch.nan_to_num(w, nan=0.0)


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


def expert_label(cand_logp_e: Tensor, max_logp_e: Tensor, alpha: float, valid: Tensor | None = None) -> Tensor:
    """The *no contrast* ablation's target: the expert's own distribution restricted to ``V_t``
    and renormalised, ``pE(v) / sum_{u in V_t} pE(u)`` (zero outside ``V_t``).

    Same shapes as :func:`soft_label`; only the amateur's term is gone.
    """
    keep = tail_mask(cand_logp_e, alpha, max_logp_e)
    if valid is not None:
        keep = keep & valid
    w = torch.softmax(cand_logp_e.float().masked_fill(~keep, float("-inf")), dim=-1)
    return torch.nan_to_num(w, nan=0.0)


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
