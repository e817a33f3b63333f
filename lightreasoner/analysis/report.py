"""The sweep report: one table and a few plots for a Hydra multirun.

    python -m lightreasoner.analysis.report multirun/2025-01-01/12-00-00            # -> .../report/
    python -m lightreasoner.analysis.report run_a run_b --out /tmp/report
    python -m lightreasoner.analysis.report --efficiency lr_run sft_run       # the paper's efficiency table
    python -m lightreasoner.analysis.report --head-to-head lr_run sft_run     # run_b's tuned vs run_a's, paired
    python -m lightreasoner.analysis.report --format-audit run [run ...]      # strict vs flexible, format rates, format share of each gain

Reads only what a run leaves on disk, so it works on a directory copied back from a cluster:
``.hydra/config.yaml`` (the composed config, interpolations left unresolved),
``.hydra/overrides.yaml`` and, once the run ended, ``summary.json``. Any directory holding
``.hydra/config.yaml`` below the given paths is a run; job directory names are never parsed.
Pair diagnostics (``diagnose.json`` of ``python -m lightreasoner.run.diagnose``, one directory per
pair) below the paths add a "Pair diagnostic" table (``diagnose.csv``); a directory of
diagnostics alone gives a report of that table.

The config keys whose values differ between runs (bookkeeping such as ``hydra.*``, ``paths.*``
and output directories aside) define the settings; the seeds of one setting are aggregated
into one row. Written to the output directory: ``report.md``, ``report.csv`` (one row per
setting), ``runs.csv`` (one row per run, failed and unfinished ones included) and PNG plots.

Notebook API: :func:`load_runs`, :func:`varying_keys`, :func:`aggregate`, :func:`format_table`,
the ``plot_*`` functions and :func:`make_plots` (matplotlib Figures), :func:`write_report`;
for pair diagnostics :func:`find_diagnostics`, :func:`load_diagnostics`, :func:`diagnose_table`
and :func:`format_diagnose_table`. No torch: the report runs on any laptop with pandas and matplotlib.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import numbers
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from omegaconf import OmegaConf

from lightreasoner.eval.results import read_rows, record_benchmarks, record_path
from lightreasoner.eval.scoring import answer_type_of, has_flexible, rescore_rows
from lightreasoner.eval.stats import COMPARABLE_SETTINGS, paired_flexible_stats, paired_stats, paired_verdicts, wilson_interval
from lightreasoner.core.files import atomic_write_bytes, atomic_write_text

META_COLUMNS = ("run_dir", "status", "error", "overrides")
"""The columns of :func:`load_runs` that are neither config keys nor metrics."""

IGNORED_PREFIXES = ("hydra.", "paths.")
IGNORED_LEAVES = ("output_dir", "out_dir", "save_dir", "default_root_dir", "dirpath", "log_dir")
"""Config keys that differ between runs without being a setting (directories, Hydra's own)."""

BASE, TUNED = "base", "tuned"

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


DIAGNOSE_FILE = "diagnose.json"
"""The report of one pair diagnostic (``python -m lightreasoner.run.diagnose``), one per directory."""


class ReportInputError(ValueError):
    """A path given to the report does not exist, holds no Hydra run (or pair diagnostic), or a file is unreadable."""


# ---------------------------------------------------------------------------------------------
# Loading


def find_runs(path: str | Path) -> list[Path]:
    """Run directories (those holding ``.hydra/config.yaml``) at or below ``path``, in job order."""
    found = _run_dirs(path)
    if not found:
        raise ReportInputError(f"no Hydra run (.hydra/config.yaml) under {path}")
    return found


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"no such path: {path}")
    return path


def _run_dirs(path: str | Path) -> list[Path]:
    """:func:`find_runs` without the error when there is none (``[]``)."""
    path = _existing(path)
    found = []
    for root, dirs, _ in os.walk(path):
        if os.path.isfile(os.path.join(root, ".hydra", "config.yaml")):
            found.append(Path(root))
            dirs[:] = []  # a run's own sub-directories (checkpoints, logs) hold no runs
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=_natural_key)


def find_diagnostics(path: str | Path) -> list[Path]:
    """The pair diagnostics' ``diagnose.json`` files (``python -m lightreasoner.run.diagnose``) at or
    below ``path`` (hidden directories skipped), in natural order; ``[]`` when there is none."""
    path = _existing(path)
    if path.is_file():
        return [path] if path.name == DIAGNOSE_FILE else []
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if DIAGNOSE_FILE in files:
            found.append(Path(root) / DIAGNOSE_FILE)
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _flatten(node: dict, prefix: str = "") -> dict:
    """Nested dict -> dotted keys; lists and empty dicts become their canonical string."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (dict, list)):
            out[name] = _canonical(value)
        else:
            out[name] = value
    return out


def _canonical(value) -> str:
    """The string two config values are compared by (1 and 1.0 are equal; missing = null)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Number):
        return repr(float(value))
    return str(value)


def _read_config(run_dir: Path) -> dict:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return _flatten(OmegaConf.to_container(cfg, resolve=False) or {})


def _read_overrides(run_dir: Path) -> str:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    overrides = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or []
    return " ".join(str(o) for o in overrides)


def _summary_metrics(summary: dict) -> dict:
    """The numbers of a summary.json as flat columns (``accuracy/<model>/<benchmark>`` etc.)."""
    metrics = {}
    for key, value in (summary.get("selection") or {}).items():
        metrics[f"selection/{key}"] = value
    for key in ("tuned_tokens", "objective"):
        if summary.get(key) is not None:
            metrics[f"summary/{key}"] = summary[key]
    drift = summary.get("drift") or {}
    for key, value in (drift.get("final") or {}).items():
        if isinstance(value, numbers.Number):
            metrics[f"drift/{key}"] = value
    if drift:
        metrics["drift/beyond_limit"] = len(drift.get("exceeded") or [])
    wall = summary.get("wall_s") or {}
    for stage, secs in wall.items():
        metrics[f"wall_s/{stage}"] = secs
    if wall:
        metrics["wall_s/total"] = float(sum(v for v in wall.values() if v is not None))
    results = summary.get("results") or []
    for row in results:
        metrics.update(_fields(row, f"{row['model']}/{row['benchmark']}"))
    if not results and isinstance(summary.get("eval"), dict):  # older summaries: accuracies only
        for model, accs in summary["eval"].items():
            for bench, acc in (accs or {}).items() if isinstance(accs, dict) else []:
                if isinstance(acc, numbers.Number):
                    metrics[f"accuracy/{model}/{bench}"] = acc
    comparisons = summary.get("comparisons") or []
    has_tuned = any(row.get("model") == TUNED for row in comparisons)
    for row in comparisons:
        metrics.update(_fields(row, f"{row['model']}-vs-{row['baseline']}/{row['benchmark']}"))
        if not has_tuned and row.get("model") == summary.get("method"):
            # an inference-time method (contrastive decoding) is evaluated in place of `tuned`
            metrics.update(_fields(row, f"{TUNED}-vs-{row['baseline']}/{row['benchmark']}"))
            for r in results:
                if r["model"] == row["model"] and r["benchmark"] == row["benchmark"]:
                    metrics.update(_fields(r, f"{TUNED}/{r['benchmark']}"))
    return metrics


def _fields(row: dict, tag: str) -> dict:
    out = {}
    for key, value in row.items():
        if key in ("model", "baseline", "benchmark"):
            continue
        if key == "ci95" and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"ci95_lo/{tag}"], out[f"ci95_hi/{tag}"] = value
        elif key.startswith("ci95_") and isinstance(value, (list, tuple)) and len(value) == 2:  # ci95_flexible, ci95_format_share
            out[f"{key}_lo/{tag}"], out[f"{key}_hi/{tag}"] = value
        elif not isinstance(value, (list, dict)):
            out[f"{key}/{tag}"] = value
    return out


def load_run(run_dir: str | Path) -> dict:
    """One run as a flat dict: run_dir, status, error, overrides, config keys, summary metrics.

    status is the summary's ("finished" / "failed"), "unfinished" without summary.json, or
    "unreadable" when a file of the run cannot be parsed (the error says which)."""
    run_dir = Path(run_dir)
    meta = {"run_dir": str(run_dir), "status": "unfinished", "error": None, "overrides": ""}
    config, metrics = {}, {}
    try:
        meta["overrides"] = _read_overrides(run_dir)
        config = _read_config(run_dir)
    except Exception as exc:  # noqa: BLE001 -- a truncated or hand-edited copy must still be listed
        meta.update(status="unreadable", error=_one_line(".hydra", exc))
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and meta["status"] != "unreadable":
        try:
            summary = json.loads(summary_path.read_text())
            meta["status"] = summary.get("status", "finished")
            meta["error"] = summary.get("error")
            metrics = _summary_metrics(summary)
        except Exception as exc:  # noqa: BLE001 -- bad JSON or a summary of another schema
            meta.update(status="unreadable", error=_one_line("summary.json", exc))
    config = effective_selection(config, summary if metrics else None)
    clash = set(META_COLUMNS) | set(metrics)
    config = {(f"config.{k}" if k in clash else k): v for k, v in config.items()}
    return {**meta, **config, **metrics}


SELECTION_KEYS_BEFORE = {"sampling.beta": "selection.beta", "sampling.alpha": "selection.alpha",
                         "sampling.first_step": "selection.first_step"}
"""Where a run made before step selection had one home kept these keys."""


def effective_selection(config: dict, summary: dict | None) -> dict:
    """The run's config with the selection it really used: an older run's ``sampling.beta`` /
    ``alpha`` / ``first_step`` under their ``selection.*`` names, and ``selection.beta`` /
    ``selection.alpha`` set to the summary's effective values (an old ``method=no_selection`` run
    configured at 0.4 ran at 0; ``alpha: 0`` ran at the cache's ``alpha_min``)."""
    config = {SELECTION_KEYS_BEFORE.get(k, k): v for k, v in config.items()}
    selection = (summary or {}).get("selection") or {}
    for key in ("beta", "alpha"):
        value = selection.get(key, (summary or {}).get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            config[f"selection.{key}"] = value
    return config


def _one_line(where: str, exc: Exception) -> str:
    return f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per run found at or below ``paths`` (a multirun dir, run dirs, or a parent of both).

    Columns: ``run_dir``, ``status``, ``error``, ``overrides``, then the flattened config keys
    (dotted, e.g. ``selection.beta``, the effective value the run used; lists as their JSON string; interpolations such as
    ``${hydra:runtime.output_dir}`` kept as text), then the summary metrics, whose names all
    contain ``/``: ``accuracy/<model>/<benchmark>``, ``ci95_lo/...``, ``ci95_hi/...``,
    ``diff/tuned-vs-base/<benchmark>`` (and the other comparison fields),
    ``selection/<field>``, ``summary/tuned_tokens``, ``wall_s/<stage>``, ``wall_s/total``,
    ``drift/<figure>`` and ``drift/beyond_limit`` (runs with the drift guard on).
    Raises :class:`ReportInputError` for a path that does not exist or holds no run."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen, rows = set(), []
    for path in paths:
        for run_dir in find_runs(path):
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                rows.append(load_run(run_dir))
    if not rows:
        raise ReportInputError("no path given")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Settings and aggregation


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The config-key columns of a :func:`load_runs` frame (metric columns contain ``/``)."""
    return [c for c in runs.columns if c not in META_COLUMNS and "/" not in c]


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.rsplit(".", 1)[-1] in IGNORED_LEAVES


def varying_keys(runs: pd.DataFrame, exclude: Iterable[str] = ("seed",)) -> list[str]:
    """The config keys whose value differs between runs, in config order.

    Left out: ``exclude`` (by default ``seed``, which :func:`aggregate` averages over), keys under
    ``hydra.`` / ``paths.``, output and log directories, and keys whose value contains ``${``
    in any run (an unresolved interpolation carries no setting). Values are compared as
    canonical strings, so ``1`` equals ``1.0`` and a key missing from a run reads as null.
    Runs whose config could not be read (status unreadable, no config key) are not compared."""
    exclude = set(exclude)
    columns = config_columns(runs)
    with_config = runs[runs[columns].notna().any(axis=1)] if columns else runs
    keys = []
    for key in columns:
        if key in exclude or _ignored(key):
            continue
        values = with_config[key].map(_canonical)
        if values.str.contains("${", regex=False).any():
            continue
        if values.nunique() > 1:
            keys.append(key)
    return _collapse_group_choices(with_config, keys)


def _collapse_group_choices(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """A swept config-group choice (``method=sft,...``) changes every key of the group; keep
    its ``<group>.name`` and drop the group's other varying keys that the name determines
    (``method._target_``, ``method.target``, ...), so the table has one column per choice."""
    out = list(keys)
    for key in keys:
        if not key.endswith(".name"):
            continue
        group = key[: -len("name")]
        names = runs[key].map(_canonical)
        for other in keys:
            if other != key and other.startswith(group) and other in out:
                pairs = pd.DataFrame({"n": names, "v": runs[other].map(_canonical)}).drop_duplicates()
                if not pairs["n"].duplicated().any():  # one value per name: determined by it
                    out.remove(other)
    return out


def _models_and_benchmarks(runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    models, benchmarks = [], []
    for col in runs.columns:
        if col.startswith("accuracy/"):
            _, model, bench = col.split("/", 2)
            models += [model] if model not in models else []
            benchmarks += [bench] if bench not in benchmarks else []
    order = {BASE: 0, TUNED: 1}
    return sorted(models, key=lambda m: (order.get(m, 2), m)), benchmarks


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def _mean_and_interval(frame: pd.DataFrame, value: str, lo: str, hi: str, scale: float) -> tuple:
    """Mean of ``value`` over the rows with one; with one row its [lo, hi], else min and max."""
    values = _column(frame, value)
    have = values.notna()
    n = int(have.sum())
    if n == 0:
        return np.nan, np.nan, np.nan
    if n == 1:
        row = frame[have]
        return tuple(float(_column(row, c).iloc[0]) * scale for c in (value, lo, hi))
    return float(values[have].mean()) * scale, float(values.min()) * scale, float(values.max()) * scale


def _fill_wilson(runs: pd.DataFrame) -> pd.DataFrame:
    """Wilson 95% intervals for the accuracies that came without ``ci95`` (from correct / n)."""
    runs = runs.copy()
    for col in [c for c in runs.columns if c.startswith("accuracy/")]:
        tag = col.split("/", 1)[1]
        lo, hi, k, n = (f"ci95_lo/{tag}", f"ci95_hi/{tag}", f"correct/{tag}", f"n/{tag}")
        if k not in runs or n not in runs:
            continue
        lo_vals, hi_vals = _column(runs, lo).copy(), _column(runs, hi).copy()
        for i in runs.index[lo_vals.isna() & _column(runs, k).notna() & _column(runs, n).notna()]:
            lo_vals.loc[i], hi_vals.loc[i] = wilson_interval(int(runs.at[i, k]), int(runs.at[i, n]))
        runs[lo], runs[hi] = lo_vals, hi_vals
    return runs


def aggregate(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per distinct setting of ``keys``, its finished runs (seeds) aggregated.

    Columns: the keys (the first run's values), ``seeds`` (finished runs), ``not_finished``
    (failed, unfinished or unreadable runs of that setting), then per benchmark ``b`` and
    model ``m``: ``acc/m/b`` (mean accuracy in %) with ``acc_lo/m/b`` and ``acc_hi/m/b``;
    ``gain/b`` (mean tuned - base paired difference in points) with ``gain_lo/b`` and
    ``gain_hi/b``; when the runs' evaluations carry the flexible score, ``gain_flex/b`` (the
    flexible gain) and ``format_share/b`` (strict gain − flexible gain), each with ``_lo``/``_hi``;
    then ``kept_pct``, ``tuned_tokens`` and ``wall_s`` (means over seeds); with
    the drift guard on, ``drift/<figure>`` (:data:`DRIFT_FIGURES`, means) and
    ``drift/beyond_limit`` (seeds beyond a limit).
    The ``_lo``/``_hi`` bounds are the run's 95% interval with one seed and the per-seed
    min and max with more (see :data:`INTERVALS_NOTE`). Rows are sorted by the keys."""
    runs = _fill_wilson(runs)
    models, benchmarks = _models_and_benchmarks(runs)
    groups: dict[tuple, list] = {}
    for i, setting in zip(runs.index, runs[keys].map(_canonical).itertuples(index=False, name=None)):
        groups.setdefault(setting, []).append(i)
    rows = []
    for index in groups.values():
        group = runs.loc[index]
        done = group[group["status"] == "finished"]
        row = {key: group[key].iloc[0] for key in keys}
        row["seeds"] = len(done)
        row["not_finished"] = len(group) - len(done)
        for bench in benchmarks:
            for model in models:
                tag = f"{model}/{bench}"
                (row[f"acc/{tag}"], row[f"acc_lo/{tag}"], row[f"acc_hi/{tag}"]) = _mean_and_interval(
                    done, f"accuracy/{tag}", f"ci95_lo/{tag}", f"ci95_hi/{tag}", 100.0)
            tag = f"{TUNED}-vs-{BASE}/{bench}"
            (row[f"gain/{bench}"], row[f"gain_lo/{bench}"], row[f"gain_hi/{bench}"]) = _mean_and_interval(
                done, f"diff/{tag}", f"ci95_lo/{tag}", f"ci95_hi/{tag}", 100.0)
            if f"diff_flexible/{tag}" in runs:  # runs whose evaluation has the flexible score
                for name, key in (("gain_flex", "diff_flexible"), ("format_share", "format_share")):
                    ci = "ci95_flexible" if key == "diff_flexible" else "ci95_format_share"
                    (row[f"{name}/{bench}"], row[f"{name}_lo/{bench}"], row[f"{name}_hi/{bench}"]) = _mean_and_interval(
                        done, f"{key}/{tag}", f"{ci}_lo/{tag}", f"{ci}_hi/{tag}", 100.0)
        row["kept_pct"] = _column(done, "selection/kept_step_fraction").mean() * 100.0
        row["tuned_tokens"] = _column(done, "summary/tuned_tokens").mean()
        row["wall_s"] = _column(done, "wall_s/total").mean()
        if "drift/beyond_limit" in done:  # the drift guard ran (drift.enabled): its kept model's figures
            for key in DRIFT_FIGURES:
                row[f"drift/{key}"] = _column(done, f"drift/{key}").mean()
            beyond = _column(done, "drift/beyond_limit")
            row["drift/beyond_limit"] = int((beyond > 0).sum()) if beyond.notna().any() else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if keys:
        table = table.sort_values(keys, key=_sort_key, kind="stable").reset_index(drop=True)
    return table


DRIFT_FIGURES = {
    "kl_tuned_base": ("drift KL", lambda v: f"{v:.4f}"),
    "ppl_ratio": ("ppl ratio", lambda v: f"{v:.3f}"),
    "implausible_mass": ("implausible %", lambda v: f"{100 * v:.1f}"),
    "junk_rate": ("junk %", lambda v: f"{100 * v:.1f}"),
    "val_accuracy": ("val acc %", lambda v: f"{100 * v:.1f}"),
}
"""The drift guard's figures of the kept model (``summary.json`` ``drift.final``) the table shows
when the runs had the guard on (means over seeds), with their column labels and formats;
``beyond drift limit`` counts the seeds beyond any ``drift.max_*`` limit."""


def _sort_key(col: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(col, errors="coerce")
    return numeric if numeric.notna().any() else col.map(_canonical)


def setting_keys(table: pd.DataFrame) -> list[str]:
    """The key columns of an :func:`aggregate` table (those before ``seeds``)."""
    return list(table.columns[: table.columns.get_loc("seeds")])


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


# ---------------------------------------------------------------------------------------------
# Plots


def _is_numeric(values: pd.Series) -> bool:
    present = [v for v in values if _canonical(v) != "null"]
    return bool(present) and all(isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_)) for v in present)


def _series(table: pd.DataFrame, key: str) -> list[tuple[str, pd.DataFrame]]:
    """The rows of ``table`` split by the values of the keys other than ``key`` (plot series)."""
    others = [k for k in setting_keys(table) if k != key]
    if not others:
        return [("", table)]
    labels = table[others].apply(lambda r: ", ".join(f"{k}={_display_value(r[k])}" for k in others), axis=1)
    return [(label, table[labels == label]) for label in dict.fromkeys(labels)]


def _axes(n: int, title: str, width: float = 5.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.2), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _errors(frame: pd.DataFrame, value: str, lo: str, hi: str) -> np.ndarray:
    y = frame[value].to_numpy(float)
    return np.nan_to_num(np.clip([y - frame[lo].to_numpy(float), frame[hi].to_numpy(float) - y], 0, None))


def _tidy(fig) -> None:
    """``tight_layout`` without its warning when long tick labels cannot fit (they still render)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def _interval_label(table: pd.DataFrame) -> str:
    seeds = table.loc[table["seeds"] > 0, "seeds"]
    if (seeds >= 2).all():
        return "bars: min..max over seeds"
    return "bars: 95% CI (1 seed) / min..max over seeds" if (seeds >= 2).any() else "bars: 95% CI"


def plot_gain_vs(table: pd.DataFrame, key: str) -> plt.Figure:
    """Gain (tuned - base, points) against a numeric key, one panel per benchmark and one line
    per setting of the other keys; error bars as in the table (95% CI or per-seed range)."""
    benchmarks = _benchmarks(table)
    fig, axes = _axes(max(1, len(benchmarks)), f"gain vs {key} ({_interval_label(table)})")
    for ax, bench in zip(axes, benchmarks):
        for label, part in _series(table, key):
            part = part[part[f"gain/{bench}"].notna() & part[key].map(_canonical).ne("null")]
            part = part.sort_values(key, key=_sort_key)
            if len(part):
                ax.errorbar(part[key].astype(float), part[f"gain/{bench}"],
                            yerr=_errors(part, f"gain/{bench}", f"gain_lo/{bench}", f"gain_hi/{bench}"),
                            marker="o", capsize=3, label=label or None)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set(title=bench, xlabel=key, ylabel="gain (pp)")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    _tidy(fig)
    return fig


def plot_gain_by(table: pd.DataFrame, key: str = "method") -> plt.Figure:
    """Gain per setting as bars (for a non-numeric key such as ``method``): one bar per table row,
    labelled by its key values, one panel per benchmark; error bars as in the table."""
    benchmarks = _benchmarks(table)
    keys = [key] + [k for k in setting_keys(table) if k != key]
    table = table.sort_values(keys, key=_sort_key, kind="stable")
    labels = table[keys].apply(lambda r: "\n".join(_display_value(r[k]) for k in keys), axis=1)
    fig, axes = _axes(max(1, len(benchmarks)), f"gain by {key}\n({_interval_label(table)})", width=max(5.0, 0.8 * len(table)))
    x = np.arange(len(table))
    for ax, bench in zip(axes, benchmarks):
        y = table[f"gain/{bench}"].to_numpy(float)
        ax.bar(x, np.nan_to_num(y), yerr=_errors(table, f"gain/{bench}", f"gain_lo/{bench}", f"gain_hi/{bench}"),
               capsize=3, color=["C0" if np.isfinite(v) else "lightgrey" for v in y])
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
        ax.set(title=bench, xlabel=" / ".join(keys), ylabel="gain (pp)")
    _tidy(fig)
    return fig


def plot_kept_vs_beta(table: pd.DataFrame, key: str = "selection.beta") -> plt.Figure:
    """Kept-step fraction (%) against the effective ``selection.beta``, one line per setting of the other keys."""
    fig, axes = _axes(1, f"kept steps vs {key}")
    ax = axes[0]
    for label, part in _series(table, key):
        part = part[part["kept_pct"].notna()].sort_values(key, key=_sort_key)
        if len(part):
            ax.plot(part[key].astype(float), part["kept_pct"], marker="o", label=label or None)
    ax.set(xlabel=key, ylabel="kept steps (%)", ylim=(0, 105))
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    _tidy(fig)
    return fig


def plot_gain_per_run(runs: pd.DataFrame) -> plt.Figure:
    """Gain (tuned - base, points) of every finished run with its bootstrap 95% CI, one panel
    per benchmark: the plot when no setting varies (e.g. seeds only)."""
    done = runs[runs["status"] == "finished"]
    benchmarks = [c.split("/", 2)[2] for c in done.columns if c.startswith(f"diff/{TUNED}-vs-{BASE}/")]
    fig, axes = _axes(max(1, len(benchmarks)), "gain per run (bars: 95% CI)")
    labels = [Path(d).name for d in done["run_dir"]]
    if "seed" in done:
        labels = [f"{name}\nseed={_display_value(seed)}" for name, seed in zip(labels, done["seed"])]
    x = np.arange(len(done))
    for ax, bench in zip(axes, benchmarks):
        tag = f"{TUNED}-vs-{BASE}/{bench}"
        frame = pd.DataFrame({c: _column(done, f"{c}/{tag}").to_numpy() * 100 for c in ("diff", "ci95_lo", "ci95_hi")})
        ax.bar(x, np.nan_to_num(frame["diff"].to_numpy(float)), yerr=_errors(frame, "diff", "ci95_lo", "ci95_hi"),
               capsize=3)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
        ax.set(title=bench, ylabel="gain (pp)")
    _tidy(fig)
    return fig


def make_plots(runs: pd.DataFrame, table: pd.DataFrame, keys: list[str]) -> dict[str, plt.Figure]:
    """Every plot that applies, by file stem: ``gain_vs_<key>`` per numeric varying key,
    ``gain_by_<key>`` per other varying key (``method``...), ``kept_vs_selection.beta`` when beta
    varies, and ``gain_per_run`` when no key varies. Empty when no run has a tuned-vs-base gain."""
    figures: dict[str, plt.Figure] = {}
    has_gain = any(table[c].notna().any() for c in table.columns if c.startswith("gain/"))
    for key in keys:
        numeric = _is_numeric(table[key])
        if has_gain:
            figures[f"gain_{'vs' if numeric else 'by'}_{key}"] = (plot_gain_vs if numeric else plot_gain_by)(table, key)
        if key == "selection.beta" and numeric and table["kept_pct"].notna().any():
            figures[f"kept_vs_{key}"] = plot_kept_vs_beta(table, key)
    if has_gain and not keys:
        figures["gain_per_run"] = plot_gain_per_run(runs)
    return figures


# ---------------------------------------------------------------------------------------------
# Report files and CLI


def not_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The failed, unfinished and unreadable runs: run_dir, status, error, overrides."""
    return runs.loc[runs["status"] != "finished", list(META_COLUMNS)].reset_index(drop=True)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).absolute().relative_to(root)) or "."
    except ValueError:
        return path


def _markdown(frame: pd.DataFrame) -> str:
    escaped = frame.astype(str).apply(lambda col: col.str.replace("|", "\\|", regex=False).str.replace("\n", " "))
    return escaped.to_markdown(index=False, disable_numparse=True)


def write_report(paths: str | Path | Iterable[str | Path], out_dir: str | Path | None = None) -> dict:
    """Load the runs under ``paths``, write report.md, report.csv, runs.csv and the plots; with
    pair diagnostics (``diagnose.json``) under ``paths`` too, their table as a "Pair diagnostic"
    section of report.md and ``diagnose.csv`` (:func:`diagnose_table`). Paths that hold only
    diagnostics give a report of that table alone; a path holding neither is an error.

    ``out_dir`` defaults to ``<common parent of paths>/report`` (``<multirun dir>/report``).
    Returns ``{"out_dir", "files": {name: Path}, "runs", "keys", "table", "display", "diagnostics"}``:
    the :func:`load_runs` frame, the varying keys, the :func:`aggregate` table and its
    :func:`format_table` strings (``None``, ``[]``, ``None``, ``None`` without a training run),
    and the :func:`diagnose_table` (``None`` without a diagnostic)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ReportInputError("no path given")
    run_paths, diagnostics = [], []
    for path in paths:
        has_runs, found = bool(_run_dirs(path)), find_diagnostics(path)
        if not has_runs and not found:
            raise ReportInputError(f"no Hydra run (.hydra/config.yaml) or pair diagnostic ({DIAGNOSE_FILE}) under {path}")
        run_paths += [path] if has_runs else []
        diagnostics += [f for f in found if f.resolve() not in {d.resolve() for d in diagnostics}]
    root = Path(os.path.commonpath([p.absolute() for p in paths]))
    if root.is_file():
        root = root.parent
    out_dir = Path(out_dir) if out_dir is not None else root / "report"
    diag = diagnose_table(load_diagnostics(diagnostics, root)) if diagnostics else None
    if not run_paths:
        return _write_diagnostics_only(diag, root, out_dir)
    runs = load_runs(run_paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(runs)
    table = aggregate(runs, keys)
    display = format_table(table)
    files = {"report.csv": out_dir / "report.csv", "runs.csv": out_dir / "runs.csv"}
    atomic_write_text(files["report.csv"], table.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(files["runs.csv"], runs.to_csv(index=False))
    for stem, fig in make_plots(runs, table, keys).items():
        files[f"{stem}.png"] = out_dir / f"{stem}.png"
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(files[f"{stem}.png"], png.getvalue())
    failed = not_finished(runs).assign(run_dir=lambda f: f["run_dir"].map(lambda p: _relative(p, root)))
    md = [
        "# Sweep report",
        "",
        f"{_counts(runs)} under `{root}`. "
        + (f"Varying: {', '.join(f'`{k}`' for k in keys)}; " if keys else "No setting varies; ")
        + "seeds aggregated per row.",
        "",
        INTERVALS_NOTE,
        "",
        *([FORMAT_NOTE, ""] if any(c.endswith("format share pp") for c in display.columns) else []),
        _markdown(display),
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in files if name.endswith(".png")],
        *([] if any(n.endswith(".png") for n in files) else ["No finished run with a tuned-vs-base comparison."]),
        "",
        "## Failed or unfinished runs",
        "",
        _markdown(failed.fillna("")) if len(failed) else "None.",
        "",
    ]
    if diag is not None:
        md += _diagnostics_section(diag, files, out_dir)
    files["report.md"] = out_dir / "report.md"
    atomic_write_text(files["report.md"], "\n".join(md))
    return {"out_dir": out_dir, "files": files, "runs": runs, "keys": keys, "table": table, "display": display,
            "diagnostics": diag}


def _diagnostics_section(diag: pd.DataFrame, files: dict, out_dir: Path) -> list[str]:
    """Write ``diagnose.csv`` (the :func:`diagnose_table`) and return the markdown section."""
    files["diagnose.csv"] = out_dir / "diagnose.csv"
    atomic_write_text(files["diagnose.csv"], diag.to_csv(index=False, float_format="%.10g"))
    return ["## Pair diagnostic", "", DIAGNOSE_NOTE, "", _markdown(format_diagnose_table(diag)), ""]


def _write_diagnostics_only(diag: pd.DataFrame, root: Path, out_dir: Path) -> dict:
    """The report of paths that hold pair diagnostics and no training run: their table only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    md = ["# Sweep report", "", f"{len(diag)} pair diagnostic{'s' if len(diag) != 1 else ''} and no training run under `{root}`.", ""]
    md += _diagnostics_section(diag, files, out_dir)
    files["report.md"] = out_dir / "report.md"
    atomic_write_text(files["report.md"], "\n".join(md))
    return {"out_dir": out_dir, "files": files, "runs": None, "keys": [], "table": None, "display": None,
            "diagnostics": diag}


# ---------------------------------------------------------------------------------------------
# Pair diagnostics (python -m lightreasoner.run.diagnose)


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


def _counts(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    parts = [f"{counts.get('finished', 0)} finished"] + [f"{n} {s}" for s, n in counts.items() if s != "finished"]
    return f"{len(runs)} runs ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------
# The paper's efficiency table


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


# ---------------------------------------------------------------------------------------------
# Two methods' tuned models against each other


def _eval_run(run_dir: Path, model: str, bench: str, force: bool = False, published_tolerance: bool = False) -> dict | None:
    """One model's per-problem rows and settings on ``bench`` from ``run_dir/eval``, or None.

    Rows written before the flexible score existed are re-scored from their stored text
    (:func:`lightreasoner.eval.scoring.rescore_rows`; ``force``: every row, under
    ``published_tolerance`` or not), so their strict verdicts use the current numeric rule too."""
    rows_path = record_path(run_dir / "eval" / model, bench)  # {bench}.jsonl, or .jsonl.gz (committed records)
    settings_path = run_dir / "eval" / model / f"{bench}.settings.json"
    if not rows_path.is_file() or not settings_path.is_file():
        return None
    settings = json.loads(settings_path.read_text())
    stored = list(read_rows(rows_path).values())
    rows, _ = rescore_rows(stored, answer_type_of(settings.get("benchmark") or bench),
                           published_tolerance=published_tolerance, force=force)
    changed = sum(bool(a.get("correct")) != bool(b.get("correct")) for a, b in zip(stored, rows))
    return {"model": f"{run_dir.name}/{model}", "settings": settings, "rows": rows, "verdicts_changed": changed}


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


# ---------------------------------------------------------------------------------------------
# Format or reasoning: strict vs flexible scores of per-problem records


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


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, write the report files; bad input -> ``error: ...``, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m lightreasoner.analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="a Hydra multirun directory, run directories, or a parent of them "
                                                  "(pair diagnostics' diagnose.json below them are read too)")
    parser.add_argument("--out", help="output directory (default: <multirun dir>/report)")
    parser.add_argument("--efficiency", action="store_true",
                        help="print the paper's efficiency table of the given runs (e.g. a LightReasoner run and an SFT run)")
    parser.add_argument("--head-to-head", action="store_true",
                        help="two run directories: the second's tuned model against the first's, paired on the same problems")
    parser.add_argument("--models", nargs=2, metavar=("A", "B"), default=[TUNED, TUNED],
                        help="with --head-to-head: the models compared, A of the first run and B of the second "
                             "(default: tuned tuned; e.g. base tuned with one run given twice)")
    parser.add_argument("--format-audit", action="store_true",
                        help="run directories: every model's strict vs flexible score, the format rates, and the format "
                             "share of each model's gain over --baseline (re-scored from the per-problem records)")
    parser.add_argument("--baseline", default=BASE, help="with --format-audit: the model gains are measured against (default: base)")
    parser.add_argument("--published-tolerance", action="store_true",
                        help="with --format-audit: compare numbers within a relative 1e-4, integers too (the published quirk)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    if args.format_audit:
        try:
            scores, gains = format_audit(args.paths, args.baseline, args.published_tolerance)
        except ReportInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(AUDIT_NOTE + "\n")
        print(_markdown(scores.astype(object)))
        print()
        print(_markdown(gains.astype(object)) if len(gains) else f"No model to compare with '{args.baseline}'.")
        return 0
    if args.head_to_head:
        try:
            if len(args.paths) != 2:
                raise ReportInputError(f"--head-to-head: expected 2 run directories, got {len(args.paths)}")
            print(_markdown(head_to_head(*args.paths, *args.models)))
        except ReportInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.efficiency:
        try:
            table = efficiency_table(args.paths)
            print(_markdown(table.astype(object).where(table.notna(), "-")))
        except ReportInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        report = write_report(args.paths, args.out)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs, keys = report["runs"], report["keys"]
    if runs is not None:
        print(f"{_counts(runs)}; varying: {', '.join(keys) if keys else 'nothing'} (seeds aggregated)")
        print(_markdown(report["display"]))
        failed = not_finished(runs)
        if len(failed):
            print("\nFailed or unfinished runs:")
            print(_markdown(failed.fillna("")))
    if report["diagnostics"] is not None:
        print(("" if runs is None else "\n") + f"Pair diagnostic ({len(report['diagnostics'])} diagnose.json):")
        print(_markdown(format_diagnose_table(report["diagnostics"])))
    print(f"\nwrote {', '.join(report['files'])} to {report['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
