"""Tables as display strings: the :func:`~lightreasoner.analysis.aggregate.aggregate` table's cells
(:func:`format_table`), the failed and unfinished runs, Markdown, and the paper's efficiency
table (:func:`efficiency_table`)."""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lightreasoner.analysis.aggregate import DRIFT_FIGURES, setting_keys
from lightreasoner.analysis.discovery import (BASE, META_COLUMNS, TUNED, ReportInputError, _canonical, _natural_key,
                                              _run_dirs)


INTERVALS_NOTE = (
    "Accuracies in %, gain = tuned - base accuracy in points (paired: same problems). "
    "With one seed, `[lo, hi]` is that run's 95% interval: Wilson for an accuracy, "
    "a paired bootstrap over problems for the gain. With two or more seeds the cell is the mean "
    "over seeds and `(min..max)` the range of the per-seed values, not a confidence interval: "
    "a pooled interval needs per-problem rows, which summary.json does not hold. "
    "kept % = kept-step fraction of the selection; wall s = sum of the stage wall times of a run; "
    "both and tuned tokens are means over seeds. `-` = not measured (e.g. a stage=sample run)."
)


FORMAT_NOTE = (
    "gain = the strict score's (the evaluation's: the last box or the benchmark's rule); flexible gain = "
    "the same with the lenient extractor used where the strict answer is missing or malformed "
    "(lightreasoner/eval/scoring.py); format share = gain - flexible gain, the part of the gain "
    "that is answer format, with its paired-bootstrap interval."
)


def _benchmarks(table: pd.DataFrame) -> list[str]:
    return [c.split("/", 1)[1] for c in table.columns if c.startswith("gain/")]


def _table_models(table: pd.DataFrame, bench: str) -> list[str]:
    return [c.split("/")[1] for c in table.columns if c.startswith("acc/") and c.endswith(f"/{bench}")]


def _cell(value: float, lo: float, hi: float, seeds: int, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(value)
    if seeds == 1 and np.isfinite(lo) and np.isfinite(hi):
        return f"{text} [{fmt.format(lo)}, {fmt.format(hi)}]"
    if seeds >= 2:
        return f"{text} ({fmt.format(lo)}..{fmt.format(hi)})"
    return text


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The :func:`aggregate` table as display strings: one column per key, ``seeds``, and per
    benchmark ``<b> base %``, ``<b> tuned %``, ``<b> gain pp`` (strict), ``<b> flexible gain pp``
    and ``<b> format share pp`` (when measured), other models' accuracies, then
    ``kept %``, ``tuned tokens``, ``wall s``. Missing values read ``-``."""
    keys = setting_keys(table)
    out = pd.DataFrame({key: table[key].map(_display_value) for key in keys})
    out["seeds"] = table["seeds"].astype(int).astype(str)
    if table["not_finished"].any():
        out["not finished"] = table["not_finished"].astype(int).astype(str)
    seeds = table["seeds"].astype(int)
    for bench in _benchmarks(table):
        models = _table_models(table, bench)
        for model in [m for m in (BASE, TUNED) if m in models]:
            out[f"{bench} {model} %"] = _cells(table, "acc", f"{model}/{bench}", seeds)
        out[f"{bench} gain pp"] = _cells(table, "gain", bench, seeds, signed=True)
        if f"gain_flex/{bench}" in table and table[f"gain_flex/{bench}"].notna().any():
            out[f"{bench} flexible gain pp"] = _cells(table, "gain_flex", bench, seeds, signed=True)
            out[f"{bench} format share pp"] = _cells(table, "format_share", bench, seeds, signed=True)
        for model in [m for m in models if m not in (BASE, TUNED)]:
            out[f"{bench} {model} %"] = _cells(table, "acc", f"{model}/{bench}", seeds)
    out["kept %"] = table["kept_pct"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    out["tuned tokens"] = table["tuned_tokens"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    out["wall s"] = table["wall_s"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    if "drift/beyond_limit" in table:
        for key, (label, fmt) in DRIFT_FIGURES.items():
            out[label] = table[f"drift/{key}"].map(lambda v, f=fmt: "-" if pd.isna(v) else f(v))
        out["beyond drift limit"] = [
            "-" if pd.isna(n) else f"{int(n)} of {int(k)}" for n, k in zip(table["drift/beyond_limit"], table["seeds"])
        ]
    return out


def _cells(table: pd.DataFrame, prefix: str, tag: str, seeds: pd.Series, signed: bool = False) -> list[str]:
    columns = (table[f"{prefix}/{tag}"], table[f"{prefix}_lo/{tag}"], table[f"{prefix}_hi/{tag}"], seeds)
    return [_cell(v, lo, hi, s, signed) for v, lo, hi, s in zip(*columns)]


def _display_value(value) -> str:
    """A key value as shown: numbers as written (``1e-05``, ``0.4``), null, true/false, text."""
    text = _canonical(value)
    if text == "null" or isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Number):
        return text
    return str(value)


def not_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The failed, unfinished and unreadable runs: run_dir, status, error, overrides."""
    return runs.loc[runs["status"] != "finished", list(META_COLUMNS)].reset_index(drop=True)


def _markdown(frame: pd.DataFrame) -> str:
    escaped = frame.astype(str).apply(lambda col: col.str.replace("|", "\\|", regex=False).str.replace("\n", " "))
    return escaped.to_markdown(index=False, disable_numparse=True)


def _counts(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    parts = [f"{counts.get('finished', 0)} finished"] + [f"{n} {s}" for s, n in counts.items() if s != "finished"]
    return f"{len(runs)} runs ({', '.join(parts)})"


def _summary_runs(path: str | Path) -> list[Path]:
    """The runs of a table read from summaries alone: :func:`find_runs`, or, where there is no
    Hydra run, every directory at or below ``path`` holding a ``summary.json`` (a run kept as its
    summary only, as the committed records of docs/results keep some)."""
    found = _run_dirs(path)
    if not found:
        root = Path(path)
        found = sorted({p.parent for p in root.rglob("summary.json")
                        if not any(part.startswith(".") for part in p.relative_to(root).parts)}, key=_natural_key)
    if not found:
        raise ReportInputError(f"no Hydra run (.hydra/config.yaml) or summary.json under {path}")
    return found


def efficiency_table(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """The paper's efficiency comparison of finished runs (e.g. LightReasoner vs SFT): one row
    per run with its method, sampled problems, tokens generated while sampling, tuned tokens,
    sampling time (as recorded when its cache was made; ``cached`` when this run read it),
    fine-tune time, total time and the accuracy gain of the tuned model over the base per
    benchmark (points, with the paired-bootstrap interval)."""
    rows = []
    for run_dir in (r for p in ([paths] if isinstance(paths, (str, Path)) else paths) for r in _summary_runs(p)):
        summary_path = Path(run_dir) / "summary.json"
        if not summary_path.is_file():
            continue
        s = json.loads(summary_path.read_text())
        if s.get("status", "finished") != "finished":
            continue
        eff = s.get("efficiency") or {}
        sampling = eff.get("sampling") or {}
        stages = eff.get("stages") or {}
        sample_s = sampling.get("wall_s")
        distill_s = (stages.get("distill") or {}).get("wall_s")
        row = {
            "run": Path(run_dir).name,
            "method": s.get("method", "lightreasoner"),
            "seed": s.get("seed"),
            "problems sampled": eff.get("problems_sampled"),
            "tokens generated": eff.get("tokens_generated"),
            "tuned tokens": eff.get("tuned_tokens"),
            "sampling s": sample_s,
            "sampling cached": sampling.get("cached"),
            "fine-tune s": distill_s,
            "sampling + fine-tune s": None if sample_s is None or distill_s is None else round(sample_s + distill_s, 1),
        }
        for c in s.get("comparisons") or []:
            if "refused" in c or c.get("baseline") != BASE:
                continue
            lo, hi = c["ci95"]
            row[f"{c['benchmark']} gain pp ({c['model']})"] = f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        rows.append(row)
    if not rows:
        raise ReportInputError(f"no finished run with a summary.json under {paths}")
    table = pd.DataFrame(rows)
    for col in ("problems sampled", "tokens generated", "tuned tokens"):
        table[col] = table[col].astype("Int64")  # counts stay integers with gaps
    return table
