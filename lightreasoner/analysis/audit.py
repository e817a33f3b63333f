"""Format or reasoning: strict vs flexible scores of per-problem records, the format rates, and
the format share of each model's gain (:func:`format_audit`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lightreasoner.analysis.discovery import BASE, TUNED, ReportInputError, _eval_run
from lightreasoner.eval.results import record_benchmarks, record_path
from lightreasoner.eval.scoring import has_flexible
from lightreasoner.eval.stats import COMPARABLE_SETTINGS, paired_flexible_stats, paired_stats, paired_verdicts, wilson_interval


AUDIT_NOTE = (
    "Every row re-scored from the stored output text (nothing regenerated). strict = the evaluation's "
    "score (last box, else \"The answer is\", else the last number; for multiple choice the letter); flexible = "
    "the strict answer when well formed, else the lenient extractor's (last number; last choice letter; a box cut "
    "off by the token budget or the last $...$ for LaTeX), right wherever strict is. no answer = no strict answer; "
    "hedging = more than one distinct final answer in one output; off-format = an answer present outside a "
    "well-formed box. format share = strict gain - flexible gain: the part of a gain that is answer format "
    "(95% intervals: Wilson for accuracies, paired bootstrap over problems, 10,000 resamples, for gains)."
)


def _audit_runs(paths: Iterable[str | Path]) -> list[Path]:
    dirs = []
    for p in paths:
        p = Path(p)
        if not (p / "eval").is_dir():
            raise ReportInputError(f"{p}: no eval/ directory (expected a run directory that ran stage evaluate)")
        dirs.append(p)
    if not dirs:
        raise ReportInputError("--format-audit: no run directory given")
    return dirs


def _audit_models(run_dir: Path) -> list[str]:
    models = sorted(d.name for d in (run_dir / "eval").iterdir() if d.is_dir() and record_benchmarks(d))
    order = {BASE: 0, TUNED: 1}
    return sorted(models, key=lambda m: (order.get(m, 2), m))


def _pct_ci(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if n else "-"


def _pp(value: float, ci) -> str:
    return f"{100 * value:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def format_audit(paths: str | Path | Iterable[str | Path], baseline: str = BASE,
                 published_tolerance: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strict vs flexible scores of every model and benchmark in the run directories ``paths``
    (their ``eval/{model}/{benchmark}.jsonl``, re-scored from the stored text; nothing is
    regenerated), and the format share of each model's gain over ``baseline`` in the same run.

    Returns ``(scores, gains)``. ``scores``: one row per run, model and benchmark: n, strict and
    flexible accuracy (%, Wilson 95%), the rates (no strict answer, cut off, hedging, off-format,
    in %) and ``re-scored verdicts changed`` (strict verdicts that differ from the stored ones:
    the integer comparison). ``gains``: per run, model and benchmark, then pooled over the
    run's benchmarks: the strict gain, the flexible gain and the format share (strict −
    flexible), in points with paired-bootstrap 95% intervals, and the strict McNemar p; a
    comparison the settings forbid reads ``refused``."""
    dirs = _audit_runs([paths] if isinstance(paths, (str, Path)) else paths)
    scores, gains = [], []
    for run_dir in dirs:
        runs: dict[tuple[str, str], dict] = {}
        for model in _audit_models(run_dir):
            for bench in record_benchmarks(run_dir / "eval" / model):
                rows_path = record_path(run_dir / "eval" / model, bench)
                run = _eval_run(run_dir, model, bench, force=True, published_tolerance=published_tolerance)
                if run is None:
                    continue
                rows = run["rows"]
                if not has_flexible(rows):
                    raise ReportInputError(f"{rows_path}: rows without output text or gold answer cannot be re-scored")
                runs[(model, bench)] = run
                n = len(rows)

                def frac(pred, rows=rows, n=n) -> str:
                    return f"{100 * sum(map(pred, rows)) / n:.1f}"

                scores.append({
                    "run": run_dir.name, "model": model, "benchmark": bench, "n": n,
                    "strict % [95% CI]": _pct_ci(sum(bool(r["correct"]) for r in rows), n),
                    "flexible % [95% CI]": _pct_ci(sum(bool(r["flexible"]["correct"]) for r in rows), n),
                    "no answer %": frac(lambda r: r["extracted"] is None),
                    "cut off %": frac(lambda r: bool(r.get("cut_off"))),
                    "hedging %": frac(lambda r: bool(r["format"]["hedging"])),
                    "off-format %": frac(lambda r: r["format"]["answer"] in ("unboxed", "malformed")),
                    "re-scored verdicts changed": run["verdicts_changed"],
                })
        benches = sorted({b for _, b in runs})
        for model in [m for m in _audit_models(run_dir) if m != baseline]:
            pooled: list[list[np.ndarray]] = [[], [], [], []]
            done = []
            for bench in benches:
                if (baseline, bench) not in runs or (model, bench) not in runs:
                    continue
                a_run, b_run = runs[(baseline, bench)], runs[(model, bench)]
                label = {"run": run_dir.name, "comparison": f"{baseline} → {model}", "benchmark": bench}
                try:
                    a, b = paired_verdicts(a_run, b_run)
                    fa, fb = paired_verdicts(a_run, b_run, flexible=True)
                except ValueError as exc:
                    differ = [k for k in COMPARABLE_SETTINGS if f"{k}: " in str(exc)]
                    why = f"settings differ: {', '.join(differ)}" if differ else "different problems"
                    gains.append({**label, "n": "-", "strict gain pp": f"refused ({why})", "flexible gain pp": "-",
                                  "format share pp": "-", "McNemar p (strict)": "-"})
                    continue
                for acc, v in zip(pooled, (a, b, fa, fb)):
                    acc.append(v)
                done.append(bench)
                gains.append(_audit_gain_row(label, a, b, fa, fb))
            if len(done) > 1:
                a, b, fa, fb = (np.concatenate(v) for v in pooled)
                label = {"run": run_dir.name, "comparison": f"{baseline} → {model}", "benchmark": f"pooled ({' + '.join(done)})"}
                gains.append(_audit_gain_row(label, a, b, fa, fb))
    columns = ["run", "comparison", "benchmark", "n", "strict gain pp", "flexible gain pp", "format share pp", "McNemar p (strict)"]
    return pd.DataFrame(scores), pd.DataFrame(gains, columns=columns)


def _audit_gain_row(label: dict, a, b, fa, fb) -> dict:
    strict = paired_stats(a, b)
    flex = paired_flexible_stats(a, b, fa, fb)
    return {
        **label, "n": strict["n"],
        "strict gain pp": _pp(strict["diff"], strict["ci95"]),
        "flexible gain pp": _pp(flex["diff_flexible"], flex["ci95_flexible"]),
        "format share pp": _pp(flex["format_share"], flex["ci95_format_share"]),
        "McNemar p (strict)": round(strict["mcnemar_p"], 3),
    }
