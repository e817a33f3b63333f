"""The report's matplotlib figures: gain against a numeric key, gain by a non-numeric one, kept
steps against beta, gain per run; :func:`make_plots` draws every one that applies."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from lightreasoner.analysis.aggregate import _column, _sort_key, setting_keys
from lightreasoner.analysis.discovery import BASE, TUNED, _canonical
from lightreasoner.analysis.tables import _benchmarks, _display_value


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
