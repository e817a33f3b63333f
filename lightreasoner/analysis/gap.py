"""The expertise-gap study (issue 16) from sweep runs: which amateur, how far below the expert,
and what the contrast gained with it (pandas only; the rows come from ``discovery.load_runs``).

The paper's central finding is that LightReasoner's gain grows with the expert–amateur gap and
vanishes when the amateur is as strong as the expert. Here each run's amateur is named by
:func:`amateur_label` (the trained demo amateur, an earlier checkpoint of the expert, or an
early exit of the expert), its strength is its own evaluated accuracy in the same runs
(``eval.models`` holding ``amateur``), and the gap is base − amateur accuracy in points.
"""

from __future__ import annotations

import math

import pandas as pd

from lightreasoner.analysis.aggregate import aggregate

__all__ = ["AMATEUR", "GAP", "amateur_label", "with_amateur", "gap_table", "best_per_amateur"]

AMATEUR = "amateur"
"""Column naming each run's amateur."""
GAP = "gap"
"""Column: base − amateur accuracy (points) on the benchmark."""


def _value(row: pd.Series, key: str):
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def amateur_label(row: pd.Series) -> str:
    """``trained amateur``, ``expert_step<N>`` (a checkpoint of the expert), ``early exit L<k>``,
    or the amateur's name or path for any other pair."""
    kind = _value(row, "model_pair.amateur.kind") or "model"
    if kind == "early_exit":
        return f"early exit L{int(_value(row, 'model_pair.amateur.layer'))}"
    name = str(_value(row, "model_pair.amateur.name_or_path") or "")
    if kind == "checkpoint":
        return name.rstrip("/").split("/")[-1]
    return "trained amateur" if name in ("", "???") else name.rstrip("/").split("/")[-1]


def with_amateur(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the :data:`AMATEUR` column added."""
    runs = runs.copy()
    runs[AMATEUR] = runs.apply(amateur_label, axis=1)
    return runs


def gap_table(runs: pd.DataFrame, keys: list[str], bench: str = "demo") -> pd.DataFrame:
    """:func:`aggregate.aggregate` over ``[amateur, *keys]`` (a setting and seed that ran in two
    sweeps counted once) plus the :data:`GAP` column (base −
    amateur accuracy, points; NaN where the amateur was not evaluated, e.g. an early exit),
    sorted by gap, widest first."""
    runs = with_amateur(runs)
    if "seed" in runs:  # the same setting and seed run twice (a screen, then its seeds): count it once
        runs = runs.drop_duplicates(subset=[AMATEUR, *keys, "seed"], keep="last")
    table = aggregate(runs, [AMATEUR, *keys])
    base, amateur = f"acc/base/{bench}", f"acc/amateur/{bench}"
    table[GAP] = table[base] - table[amateur] if amateur in table else float("nan")
    # one gap per amateur (the same models in every run of it): the mean over its settings
    table[GAP] = table.groupby(AMATEUR)[GAP].transform("mean")
    return table.sort_values([GAP, AMATEUR, *keys], ascending=[False, True, *[True] * len(keys)], na_position="last").reset_index(drop=True)


def best_per_amateur(table: pd.DataFrame, by: list[str], bench: str = "demo") -> pd.DataFrame:
    """For each amateur (and each value of ``by``, e.g. the method), the setting with the highest
    mean gain: the one a validation sweep chooses."""
    gain = f"gain/{bench}"
    groups = [AMATEUR, *by]
    idx = table[table[gain].notna()].groupby(groups)[gain].idxmax()
    return table.loc[idx.values].sort_values([GAP, *groups], ascending=[False, *[True] * len(groups)], na_position="last").reset_index(drop=True)
