"""Two runs' models against each other (e.g. SFT-tuned vs LightReasoner-tuned), paired on the
problems both evaluated, from their per-problem records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lightreasoner.analysis.discovery import BASE, TUNED, ReportInputError, _eval_run
from lightreasoner.eval.results import record_benchmarks, record_path
from lightreasoner.eval.stats import paired_stats, paired_verdicts


def head_to_head(run_a: str | Path, run_b: str | Path, model_a: str = TUNED, model_b: str | None = None) -> pd.DataFrame:
    """``model_b`` of ``run_b`` against ``model_a`` of ``run_a`` (default: both ``tuned``, e.g.
    SFT-tuned vs LightReasoner-tuned), paired on the problems of every benchmark both evaluated,
    from their per-problem records (``eval/{model}/{benchmark}.jsonl``); with two or more
    benchmarks a last row pools their problems (each problem weighs the same, so a larger
    benchmark weighs more). Refused, as any paired comparison, when prompts or generation
    settings differ. ``base rows equal`` says whether the two runs' base-model rows are the same
    outputs (the same engine on the same kind of machine, or rows shared through
    ``eval.cache``): when they are not, part of the difference is generation noise. Records
    older than the flexible score are re-scored from their text (strict verdicts with the current
    numeric rule: integers exact)."""
    model_b = model_b or model_a
    dirs = [Path(run_a), Path(run_b)]
    for d in dirs:
        if not (d / "eval").is_dir():
            raise ReportInputError(f"{d}: no eval/ directory (expected a run directory that ran stage evaluate)")
    benches = [b for b in record_benchmarks(dirs[0] / "eval" / model_a)
               if record_path(dirs[1] / "eval" / model_b, b).is_file()]
    if not benches:
        raise ReportInputError(f"{run_a} and {run_b}: no benchmark evaluated for model '{model_a}' in the first "
                               f"and '{model_b}' in the second")
    rows, pooled, differs = [], ([], []), []
    for bench in benches:
        a, b = _eval_run(dirs[0], model_a, bench), _eval_run(dirs[1], model_b, bench)
        try:
            verdicts = paired_verdicts(a, b)
        except ValueError as exc:
            raise ReportInputError(str(exc)) from None
        for side, v in zip(pooled, verdicts):
            side.append(v)
        c = {"baseline": a["model"], "model": b["model"], **paired_stats(*verdicts)}
        bases = [_eval_run(d, BASE, bench) for d in dirs]
        if None in bases:
            differ = None
        else:
            outs = [{r["id"]: r["generated"] for r in base["rows"]} for base in bases]
            differ = sum(outs[0].get(i) != outs[1].get(i) for i in set(outs[0]) | set(outs[1]))
        differs.append(differ)
        rows.append(_head_to_head_row(bench, c, differ))
    if len(benches) > 1:
        c = {"baseline": rows[0]["a"], "model": rows[0]["b"], **paired_stats(np.concatenate(pooled[0]), np.concatenate(pooled[1]))}
        rows.append(_head_to_head_row("all (pooled)", c, None if None in differs else sum(differs)))
    return pd.DataFrame(rows)


def _head_to_head_row(bench: str, c: dict, base_rows_differ: int | None) -> dict:
    lo, hi = c["ci95"]
    return {
        "benchmark": bench, "n": c["n"], "a": c["baseline"], "b": c["model"],
        "a %": round(100 * c["accuracy_baseline"], 1), "b %": round(100 * c["accuracy_model"], 1),
        "b - a pp [95% CI]": f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
        "only a right": c["only_baseline_correct"], "only b right": c["only_model_correct"],
        "McNemar p": round(c["mcnemar_p"], 3),
        "base rows equal": "-" if base_rows_differ is None else "yes" if base_rows_differ == 0 else f"no ({base_rows_differ} differ)",
    }
