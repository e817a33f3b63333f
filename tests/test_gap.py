"""The expertise-gap study's analysis (lightreasoner/analysis/gap.py) and its notebook, on a fake grid:
two amateurs of known strength x two methods x beta x alpha x two seeds."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest
from _fake_sweep import ALPHAS, BETAS, GAIN_PP, SEEDS, composed_config, summary, write_run

from lightreasoner.analysis.gap import amateur_label, best_per_amateur, gap_table
from lightreasoner.analysis.discovery import load_runs

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "expertise_gap.ipynb"
AMATEURS = {"???": ("model", 0.20, 0.0), "expert_step300": ("checkpoint", 0.35, -1.0)}  # accuracy, gain shift (pp)


def make_gap_grid(root: Path) -> Path:
    sweep = root / "multirun" / "gap"
    job = 0
    for path, (kind, acc, shift) in AMATEURS.items():
        for method in ("lightreasoner", "random_steps"):
            for beta in BETAS:
                for alpha in ALPHAS:
                    for seed in SEEDS:
                        cfg = composed_config(beta, alpha, seed, job)
                        cfg["model_pair"]["amateur"] = {"kind": kind, "name_or_path": path, "layer": None}
                        cfg["method"] = {"name": method}
                        s = summary(beta, alpha, seed)
                        extra = shift / 100 + (0.0 if method == "lightreasoner" else -0.01)
                        for r in s["results"]:
                            if r["model"] == "amateur":
                                r["accuracy"], r["correct"] = acc, round(acc * 1000)
                            if r["model"] == "tuned" and r["benchmark"] == "demo":
                                r["accuracy"] += extra
                        for c in s["comparisons"]:
                            if c["model"] == "tuned" and c["benchmark"] == "demo":
                                c["diff"] += extra
                                c["ci95"] = [c["diff"] - 0.015, c["diff"] + 0.015]
                        s["selection"].update(label_argmax_differs=0.3, kept_digit_fraction=0.6, kept_operator_fraction=0.1,
                                              kept_word_fraction=0.2, kept_other_fraction=0.1)
                        write_run(sweep / str(job), cfg, [f"seed={seed}"], s)
                        job += 1
    return sweep


def test_amateur_labels():
    import pandas as pd

    rows = [{"model_pair.amateur.kind": "model", "model_pair.amateur.name_or_path": "???"},
            {"model_pair.amateur.kind": "checkpoint", "model_pair.amateur.name_or_path": "/c/demo/k/expert_step150"},
            {"model_pair.amateur.kind": "early_exit", "model_pair.amateur.layer": 2.0},
            {"model_pair.amateur.name_or_path": "Qwen/Qwen2.5-0.5B"}]
    assert [amateur_label(pd.Series(r)) for r in rows] == ["trained amateur", "expert_step150", "early exit L2", "Qwen2.5-0.5B"]


def test_gap_table_and_best_settings(tmp_path):
    runs = load_runs(make_gap_grid(tmp_path))
    table = gap_table(runs, ["method.name", "selection.beta", "selection.alpha"])
    gaps = table.groupby("amateur")["gap"].first()
    assert gaps["trained amateur"] == pytest.approx(21.0) and gaps["expert_step300"] == pytest.approx(6.0)
    assert table["amateur"].iloc[0] == "trained amateur"  # widest gap first
    best = best_per_amateur(table, ["method.name"])
    assert len(best) == 4
    top = max(GAIN_PP.values())  # best setting (0.4, 0.2): mean gain 3.0 pp (seeds -1 / +1 around it)
    got = {(r["amateur"], r["method.name"]): r["gain/demo"] for _, r in best.iterrows()}
    assert got == pytest.approx({("trained amateur", "lightreasoner"): top, ("trained amateur", "random_steps"): top - 1,
                                 ("expert_step300", "lightreasoner"): top - 1, ("expert_step300", "random_steps"): top - 2})


def test_expertise_gap_notebook_runs(tmp_path, monkeypatch, capsys):
    from matplotlib import pyplot as plt

    monkeypatch.setenv("LIGHTREASONER_GAP_RUNS", str(make_gap_grid(tmp_path)))
    monkeypatch.setenv("LIGHTREASONER_GAP_SAVE", str(tmp_path / "plots"))
    nb = json.loads(NOTEBOOK.read_text())
    assert all(c["cell_type"] == "code" and not c["outputs"] for c in nb["cells"])
    scope: dict = {}
    try:
        for cell in nb["cells"]:
            exec(compile("".join(cell["source"]), NOTEBOOK.name, "exec"), scope)  # noqa: S102
    finally:
        plt.close("all")
    out = capsys.readouterr().out
    assert "32 finished runs" in out and "saved: gain_vs_beta, gain_vs_gap" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["gain_vs_beta.png", "gain_vs_gap.png"]
    assert len(scope["best"]) == 4 and "label_argmax_differs" in scope["profile"].columns
