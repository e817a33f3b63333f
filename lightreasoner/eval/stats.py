"""Statistics of evaluation results: Wilson intervals, exact McNemar, paired bootstrap,
per-run summaries and the paired comparison of two runs (refused unless their prompts and
generation settings match, :data:`COMPARABLE_SETTINGS`).

Pure Python + numpy: the sweep report imports it without torch.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0
Z95 = 1.959963984540054

COMPARABLE_SETTINGS = (
    "benchmark",
    "split",
    "dataset",
    "system_prompt",
    "template_fingerprint",
    "max_new_tokens",
    "do_sample",
    "num_beams",
)
"""Settings two runs must share for a paired comparison (model identity aside)."""



def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(0, 1)`` when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def paired_bootstrap_ci(
    base: np.ndarray, other: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile interval of ``mean(other) - mean(base)`` over problems resampled in pairs."""
    d = other.astype(np.float64) - base.astype(np.float64)
    n = len(d)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - s), n))
        means[s : s + len(idx)] = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: list[dict]) -> dict:
    """Accuracy, Wilson 95% interval, cut-off fraction, tokens and generation time of ``rows``."""
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    tokens = sum(int(r["num_tokens"]) for r in rows)
    gen_s = sum(float(r.get("seconds", 0.0)) for r in rows)
    lo, hi = wilson_interval(k, n)
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else 0.0,
        "ci95": [lo, hi],
        "cut_off_frac": sum(bool(r["cut_off"]) for r in rows) / n if n else 0.0,
        "no_answer_frac": sum(r["extracted"] is None for r in rows) / n if n else 0.0,
        "mean_tokens": tokens / n if n else 0.0,
        "gen_s": round(gen_s, 2),
        "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
    }


def paired_comparison(baseline: dict, other: dict) -> dict:
    """Paired comparison of two runs (``{"model", "settings", "rows"}``) on the same problems.

    Refuses (ValueError) unless both runs share the prompt and generation settings
    (``COMPARABLE_SETTINGS``) and the same problems with the same question texts.
    """
    a_set, b_set = baseline["settings"], other["settings"]
    differ = [k for k in COMPARABLE_SETTINGS if a_set.get(k) != b_set.get(k)]
    where = f"paired comparison {other['model']} vs {baseline['model']} on {a_set.get('benchmark')}"
    if differ:
        detail = "; ".join(f"{k}: {a_set.get(k)!r} vs {b_set.get(k)!r}" for k in differ)
        raise ValueError(f"{where}: refused, prompts or generation settings differ ({detail[:400]})")
    a_rows = {r["id"]: r for r in baseline["rows"]}
    b_rows = {r["id"]: r for r in other["rows"]}
    if set(a_rows) != set(b_rows) or any(a_rows[i]["question"] != b_rows[i]["question"] for i in a_rows):
        raise ValueError(f"{where}: refused, the runs cover different problems or question texts")
    ids = sorted(a_rows)
    a = np.array([bool(a_rows[i]["correct"]) for i in ids])
    b = np.array([bool(b_rows[i]["correct"]) for i in ids])
    n = len(ids)
    only_base, only_other = int((a & ~b).sum()), int((~a & b).sum())
    lo, hi = paired_bootstrap_ci(a, b)
    return {
        "benchmark": a_set.get("benchmark"),
        "model": other["model"],
        "baseline": baseline["model"],
        "n": n,
        "accuracy_baseline": float(a.mean()) if n else 0.0,
        "accuracy_model": float(b.mean()) if n else 0.0,
        "diff": float(b.mean() - a.mean()) if n else 0.0,
        "ci95": [lo, hi],
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED},
        "only_baseline_correct": only_base,
        "only_model_correct": only_other,
        "mcnemar_p": mcnemar_exact_p(only_base, only_other),
    }
