"""From runs to settings: the config keys that vary between runs (:func:`varying_keys`), and one
row per setting with its seeds aggregated (:func:`aggregate`), Wilson intervals filled in for
accuracies that came without one."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from lightreasoner.analysis.discovery import BASE, META_COLUMNS, TUNED, _canonical
from lightreasoner.eval.stats import wilson_interval


IGNORED_PREFIXES = ("hydra.", "paths.")


IGNORED_LEAVES = ("output_dir", "out_dir", "save_dir", "default_root_dir", "dirpath", "log_dir")
"""Config keys that differ between runs without being a setting (directories, Hydra's own)."""


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
