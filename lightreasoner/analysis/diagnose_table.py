"""The pair diagnostics' table (``diagnose.json`` of ``python -m lightreasoner.run.diagnose``):
:func:`load_diagnostics`, :func:`diagnose_table` (numbers) and :func:`format_diagnose_table`
(display strings)."""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lightreasoner.analysis.discovery import ReportInputError, _canonical, _one_line, _relative
from lightreasoner.analysis.tables import _display_value


DIAGNOSE_NOTE = (
    "One row per `diagnose.json` (python -m lightreasoner.run.diagnose): reference solutions of the training split "
    "teacher-forced through both models. kept % = share of the scored reference positions the selection keeps; "
    "at the kept positions, flips = positions where the contrast's pick differs from the expert's (share of the kept "
    "positions), contrast / expert right = flips where that pick is the reference token; advantage = (contrast right - "
    "expert right) / flips in points, with its Wilson 95% interval (decisive flips, positions independent) and a "
    "bootstrap over references. on-policy flip % = `label_argmax_differs` of the config's trace cache (`-`: none); "
    "answer-level diff = greedy contrastive decoding - expert accuracy on the same problems, paired bootstrap 95%. "
    "The reference-token advantage is a proxy, not a verdict on what fine-tuning gains."
)


DIAGNOSE_SELECTION_KEYS = ("rule", "beta", "alpha", "target", "tau", "top_k", "gamma", "first_step")
"""Selection settings shown as ``selection.<key>`` columns when they differ between the diagnostics."""


def load_diagnostics(files: Iterable[str | Path], root: str | Path | None = None) -> list[dict]:
    """The reports of ``diagnose.json`` files, each with ``out_dir`` (its directory, relative to
    ``root`` when below it). A file that is not a pair diagnostic's report is one
    :class:`ReportInputError` naming it."""
    reports = []
    for path in map(Path, files):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ReportInputError(_one_line(str(path), exc)) from None
        missing = [k for k in ("pair", "references", "kept_fraction", "kept") if not isinstance(report, dict) or k not in report]
        if missing or not isinstance(report["kept"], dict):
            raise ReportInputError(f"{path}: not a pair diagnostic's report (missing {', '.join(missing) or 'kept'})")
        directory = str(path.parent)
        report["out_dir"] = _relative(directory, Path(root).absolute()) if root is not None else directory
        reports.append(report)
    return reports


def _pair(ci) -> tuple[float, float]:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, numbers.Number) for v in ci):
        return float(ci[0]), float(ci[1])
    return np.nan, np.nan


def _number_or_nan(value) -> float:
    return float(value) if isinstance(value, numbers.Number) and not isinstance(value, bool) else np.nan


def diagnose_table(reports: Iterable[dict]) -> pd.DataFrame:
    """One row per pair diagnostic report (the dict of ``diagnose.json``), numbers as they are.

    Columns: ``pair``, ``dir`` (the report's ``out_dir``, else empty), ``expert``, ``amateur``,
    ``dataset``, ``references``, then ``selection.<key>`` for the :data:`DIAGNOSE_SELECTION_KEYS`
    whose values differ between the reports, then ``kept_fraction`` and, over the kept positions,
    ``kept_positions``, ``kept_flips``, ``kept_flip_share`` (flips / kept positions),
    ``kept_contrast_right``, ``kept_expert_right``, ``kept_advantage`` with ``kept_ci95_lo``/``_hi``
    (Wilson) and ``kept_bootstrap_lo``/``_hi`` (by reference); ``on_policy_flip_rate`` (NaN
    without a trace cache); ``answer_expert_accuracy``, ``answer_cd_accuracy``, ``answer_diff``
    with ``answer_diff_lo``/``_hi`` (NaN when the answer level did not run). Fractions, not %."""
    reports = list(reports)
    selections = [r.get("selection") or {} for r in reports]
    varying = [k for k in DIAGNOSE_SELECTION_KEYS if len({_canonical(s.get(k)) for s in selections}) > 1]
    rows = []
    for r, sel in zip(reports, selections):
        kept = r["kept"]
        op = r.get("on_policy") or {}
        a = r.get("answer_level") or {}
        paired = a.get("paired") or {}
        row = {"pair": r["pair"], "dir": r.get("out_dir", ""), "expert": r.get("expert"), "amateur": r.get("amateur"),
               "dataset": r.get("dataset"), "references": r["references"]}
        row.update({f"selection.{k}": sel.get(k) for k in varying})
        row["kept_fraction"] = _number_or_nan(r["kept_fraction"])
        for key in ("positions", "flips", "contrast_right", "expert_right", "advantage"):
            row[f"kept_{key}"] = _number_or_nan(kept.get(key))
        row["kept_flip_share"] = _number_or_nan(kept.get("flip_rate"))
        row["kept_ci95_lo"], row["kept_ci95_hi"] = _pair(kept.get("ci95"))
        row["kept_bootstrap_lo"], row["kept_bootstrap_hi"] = _pair(kept.get("ci95_bootstrap_by_reference"))
        row["on_policy_flip_rate"] = _number_or_nan(op.get("label_argmax_differs")) if op.get("found") else np.nan
        row["answer_expert_accuracy"] = _number_or_nan((a.get("expert") or {}).get("accuracy"))
        row["answer_cd_accuracy"] = _number_or_nan((a.get("contrastive_decoding") or {}).get("accuracy"))
        row["answer_diff"] = _number_or_nan(paired.get("diff"))
        row["answer_diff_lo"], row["answer_diff_hi"] = _pair(paired.get("ci95"))
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("kept_positions", "kept_flips", "kept_contrast_right", "kept_expert_right"):
        if col in table:
            table[col] = table[col].astype("Int64")
    return table


def _pp_interval(value: float, lo: float, hi: float) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{100 * value:+.1f}" + (f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def format_diagnose_table(table: pd.DataFrame) -> pd.DataFrame:
    """The :func:`diagnose_table` as display strings: pair, dir, the varying selection keys,
    references, kept %, kept flips (share %), contrast / expert right, advantage pp [Wilson 95%],
    bootstrap 95% (by reference), on-policy flip %, answer-level diff pp [95%]. Missing: ``-``."""
    out = pd.DataFrame({"pair": table["pair"].astype(str), "dir": table["dir"].astype(str)})
    for col in [c for c in table.columns if c.startswith("selection.")]:
        out[col] = table[col].map(_display_value)
    out["references"] = table["references"].astype(str)
    out["kept %"] = table["kept_fraction"].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.1f}")
    out["kept flips (share)"] = [
        "-" if pd.isna(f) else f"{int(f)} ({100 * s:.1f}%)" if pd.notna(s) else str(int(f))
        for f, s in zip(table["kept_flips"], table["kept_flip_share"])]
    out["contrast / expert right"] = [
        "-" if pd.isna(c) or pd.isna(e) else f"{int(c)} / {int(e)}"
        for c, e in zip(table["kept_contrast_right"], table["kept_expert_right"])]
    out["advantage pp [Wilson 95%]"] = [
        _pp_interval(v, lo, hi) for v, lo, hi in zip(table["kept_advantage"], table["kept_ci95_lo"], table["kept_ci95_hi"])]
    out["bootstrap 95% (by reference)"] = [
        "-" if pd.isna(lo) or pd.isna(hi) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
        for lo, hi in zip(table["kept_bootstrap_lo"], table["kept_bootstrap_hi"])]
    out["on-policy flip %"] = table["on_policy_flip_rate"].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.1f}")
    out["answer-level diff pp [95%]"] = [
        _pp_interval(v, lo, hi) for v, lo, hi in zip(table["answer_diff"], table["answer_diff_lo"], table["answer_diff_hi"])]
    return out
