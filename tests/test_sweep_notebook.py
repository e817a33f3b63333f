"""notebooks/sweep_analysis.ipynb runs top to bottom on the fake multirun of the report tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import pytest
from _fake_sweep import fake_sweep  # noqa: F401

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sweep_analysis.ipynb"


def run_notebook() -> dict:
    nb = json.loads(NOTEBOOK.read_text())
    assert all(cell["cell_type"] == "code" and not cell["outputs"] for cell in nb["cells"])
    scope: dict = {}
    for cell in nb["cells"]:
        exec(compile("".join(cell["source"]), NOTEBOOK.name, "exec"), scope)  # noqa: S102
    return scope


@pytest.mark.parametrize("found_by", ["env", "newest"])
def test_sweep_notebook_runs(fake_sweep, found_by, monkeypatch, capsys):  # noqa: F811
    from matplotlib import pyplot as plt

    if found_by == "env":
        monkeypatch.setenv("LIGHTREASONER_SWEEP_DIR", str(fake_sweep))
    else:  # the default: the newest multirun/*/* under the working directory
        monkeypatch.delenv("LIGHTREASONER_SWEEP_DIR", raising=False)
        older = fake_sweep.parents[1] / "2024-12-31" / "09-00-00"
        older.mkdir(parents=True)
        os.utime(older, (0, 0))
        monkeypatch.chdir(fake_sweep.parents[2])
    try:
        scope = run_notebook()
    finally:
        plt.close("all")
    out = capsys.readouterr().out
    assert f"{fake_sweep}: 10 runs" in out
    assert "varying: ['selection.beta', 'selection.alpha']" in out
    assert "+3.0 (+2.0..+4.0)" in out and "min..max" in out  # the table and its note
    assert "2 failed or unfinished runs" in out and "CUDA out of memory" in out
    assert "mean gain (pp) on demo, rows selection.beta, columns selection.alpha" in out
    assert "plots: gain_vs_selection.beta, kept_vs_selection.beta, gain_vs_selection.alpha" in out
    assert len(scope["table"]) == 4 and len(scope["per_seed"]) == 8
