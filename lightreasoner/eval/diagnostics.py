"""The pair diagnostic's per-position statistics (``python -m lightreasoner.run.diagnose``; issue
31 §1): the picks and the selection at every position of scored reference solutions
(:func:`reference_positions`), the contrast advantage at flips with its Wilson interval
(:func:`advantage`) and its bootstrap over references (:func:`bootstrap_advantage`), and the
report's blocks over all scored positions and over the kept ones (:func:`position_stats`). No
model: they read scored trace records. Here rather than in ``selection/`` because the intervals
are :mod:`lightreasoner.eval.stats`'s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KL_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


# ----------------------------------------------------------------------------- per position
@dataclass
class Positions:
    """Every scored reference position (parallel lists)."""

    problem: list[int]
    """Index of the reference."""
    step: list[int]
    kl: list[float]
    reference: list[int]
    """The reference token."""
    expert: list[int]
    """argmax pE over the stored candidates."""
    contrast: list[int]
    """argmax of the configured label over the plausible set."""
    kept: list[bool]
    token_class: list[str]
    unscored: int = 0
    """Positions with no plausible stored candidate (a cross-tokenizer pair's unaligned steps)."""


def reference_positions(records: Sequence[Mapping], sel, tokenizer, seed: int = 0) -> Positions:
    """Picks and selection at every position of scored references (``sel``: resolved
    :class:`~lightreasoner.selection.select.SelectionSettings`)."""
    from lightreasoner.selection.select import _label, answer_span_starts, select, token_class

    spans = answer_span_starts(records, tokenizer) if sel.rule == "answer_span" else None
    verified = {str(r["problem_id"]): True for r in records}  # a reference solution is right by construction
    samples = select(records, seed=seed, selector=sel, verified=verified, span_starts=spans)
    kept = {(s.problem_id, int(t)) for s in samples for t in s.steps.tolist()}
    out = Positions([], [], [], [], [], [], [], [])
    for i, rec in enumerate(records):
        off, ids, lpe = rec["cand_offsets"], rec["cand_ids"], rec["cand_logp_e"]
        pid = str(rec["problem_id"])
        for t in range(int(rec["kl"].numel())):
            a, b = int(off[t]), int(off[t + 1])
            label_ids, w = _label(rec, t, sel.alpha, sel.target, sel.tau, sel.top_k, getattr(sel, "gamma", 1.0)) if b > a else ([], [])
            if len(w) == 0:
                out.unscored += 1
                continue
            tok = int(rec["trace_ids"][t])
            out.problem.append(i)
            out.step.append(t)
            out.kl.append(float(rec["kl"][t]))
            out.reference.append(tok)
            out.expert.append(int(ids[a:b][int(lpe[a:b].argmax())]))
            out.contrast.append(int(label_ids[int(w.argmax())]))
            out.kept.append((pid, t) in kept)
            out.token_class.append(token_class(tokenizer.decode([tok])))
    return out


# ----------------------------------------------------------------------------- statistics
def advantage(contrast_right: int, expert_right: int, flips: int) -> dict:
    """The contrast advantage ``(c - e) / F`` at ``F`` flips with its 95% interval.

    The signed outcome of a flip is +1 (the contrast's pick is the reference), -1 (the expert's
    is) or 0 (neither). Among the ``D = c + e`` decisive flips the share ``c / D`` is binomial;
    its Wilson interval ``[lo, hi]`` maps to ``(D / F) * (2 lo - 1, 2 hi - 1)`` (conditional on
    ``D``; positions treated as independent). ``sign_test_p``: exact two-sided sign test of
    ``c`` against ``e`` (McNemar's)."""
    from lightreasoner.eval.stats import mcnemar_exact_p, wilson_interval

    c, e, f = int(contrast_right), int(expert_right), int(flips)
    if c + e > f:
        raise ValueError(f"advantage: {c} + {e} decisive flips exceed {f} flips")
    if f == 0:
        return {"flips": 0, "contrast_right": 0, "expert_right": 0, "advantage": None, "ci95": None, "sign_test_p": 1.0}
    d = c + e
    lo, hi = wilson_interval(c, d)
    scale = d / f
    ci = [scale * (2 * lo - 1), scale * (2 * hi - 1)] if d else [0.0, 0.0]
    return {"flips": f, "contrast_right": c, "expert_right": e, "advantage": (c - e) / f, "ci95": ci,
            "sign_test_p": mcnemar_exact_p(c, e)}


def bootstrap_advantage(per_reference: Sequence[tuple[int, int, int]], samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95% percentile interval of ``sum(c - e) / sum(F)`` with references resampled (each
    reference's ``(c, e, F)`` together: positions of one solution are not independent)."""
    import numpy as np

    arr = np.asarray(per_reference, dtype=np.float64).reshape(-1, 3)
    if not len(arr) or arr[:, 2].sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(samples, len(arr)))
    s = arr[idx].sum(axis=1)  # [samples, 3]
    ok = s[:, 2] > 0
    vals = (s[ok, 0] - s[ok, 1]) / s[ok, 2]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return [float(lo), float(hi)]


def _block(pos: Positions, idx: list[int], n_refs: int) -> dict:
    import numpy as np

    from lightreasoner.selection.select import TOKEN_CLASSES

    def counts(ii):
        flips = [i for i in ii if pos.expert[i] != pos.contrast[i]]
        c = sum(pos.contrast[i] == pos.reference[i] for i in flips)
        e = sum(pos.expert[i] == pos.reference[i] for i in flips)
        return flips, c, e

    flips, c, e = counts(idx)
    n = len(idx)
    kl = np.asarray([pos.kl[i] for i in idx], dtype=np.float64)
    kl = kl[np.isfinite(kl)]
    per_ref = np.zeros((n_refs, 3))
    for i in flips:
        per_ref[pos.problem[i]] += (pos.contrast[i] == pos.reference[i], pos.expert[i] == pos.reference[i], 1)
    adv = advantage(c, e, len(flips))
    adv["ci95_bootstrap_by_reference"] = bootstrap_advantage(per_ref.tolist())
    by_class = {}
    for cls in TOKEN_CLASSES:
        ii = [i for i in idx if pos.token_class[i] == cls]
        f_c, c_c, e_c = counts(ii)
        by_class[cls] = {"positions": len(ii), **advantage(c_c, e_c, len(f_c))}
    return {
        "positions": n,
        "kl_mean": float(kl.mean()) if kl.size else None,
        "kl_quantiles": {str(q): float(np.quantile(kl, q)) for q in KL_QUANTILES} if kl.size else {},
        "expert_is_reference": sum(pos.expert[i] == pos.reference[i] for i in idx) / n if n else None,
        "contrast_is_reference": sum(pos.contrast[i] == pos.reference[i] for i in idx) / n if n else None,
        "flip_rate": len(flips) / n if n else None,
        **adv,
        "by_class": by_class,
    }


def position_stats(pos: Positions, n_refs: int) -> dict:
    """The report over all scored positions and over the kept ones."""
    every = list(range(len(pos.reference)))
    kept = [i for i in every if pos.kept[i]]
    return {
        "scored_positions": len(every),
        "unscored_positions": pos.unscored,
        "kept_positions": len(kept),
        "kept_fraction": len(kept) / len(every) if every else 0.0,
        "all": _block(pos, every, n_refs),
        "kept": _block(pos, kept, n_refs),
    }
