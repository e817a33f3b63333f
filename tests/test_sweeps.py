"""Multiruns as a researcher runs them: every job its own W&B run (offline), short job
directories whatever the override list, one report per multirun with failed jobs listed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _demo_overrides import SHRUNKEN_DEMO
from _wandb_offline import read_offline_run

from lightreasoner.core.config import short_name, swept_keys

REPO = Path(__file__).resolve().parents[1]



def _multirun(tmp_path: Path, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [sys.executable, str(REPO / "train.py"), "-m", f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep_dir}", *SHRUNKEN_DEMO, *overrides]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    sweep = tmp / "multirun"
    proc = _multirun(tmp, sweep, "logger=wandb", "selection.beta=0.0,0.005", "selection.alpha=0.1,0.2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, sweep


def test_every_job_is_its_own_wandb_run_with_its_own_config_and_summary(grid):
    _, sweep = grid
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 4
    runs = [read_offline_run(r) for j in jobs for r in (j / "wandb").glob("offline-run-*")]
    assert len(runs) == len(jobs)  # one W&B run per job, none shared
    settings = set()
    for job, run in zip(jobs, runs):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "finished"
        cfg = run["config"]
        assert (cfg["selection.beta"], cfg["selection.alpha"]) == (summary["beta"], summary["alpha"])
        settings.add((cfg["selection.beta"], cfg["selection.alpha"]))
        assert run["run"]["exit_code"] == 0 and run["run"]["job_type"] == "all"
        assert run["run"]["name"] == job.name and run["run"]["group"] == runs[0]["run"]["group"]
        s = run["summary"]
        for key in ("eval/base/demo/accuracy", "eval/tuned/demo/accuracy", "eval/tuned/demo/gain_vs_base",
                    "eval/tuned/demo/gain_vs_base/ci95_lo", "selection/kept_step_fraction", "tuned_tokens",
                    "wall_s/sample", "wall_s/distill", "wall_s/evaluate", "objective"):
            assert key in s, (job.name, key)
        assert s["eval/tuned/demo/accuracy"] == pytest.approx(summary["eval"]["tuned"]["demo"])
        assert {"sampling/kl_histogram/_type", "sampling/kept_steps/_type", "sampling/kept_fraction_vs_beta_table/_type",
                "eval/samples/_type"} <= run["history_keys"]
    assert settings == {(b, a) for b in (0.0, 0.005) for a in (0.1, 0.2)}


def test_job_directories_stay_short_and_name_the_swept_keys(grid):
    _, sweep = grid
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == [
        "0_selection.alpha=0.1,selection.beta=0.0", "1_selection.alpha=0.2,selection.beta=0.0",
        "2_selection.alpha=0.1,selection.beta=0.005", "3_selection.alpha=0.2,selection.beta=0.005",
    ]
    overrides = (sweep / "0_selection.alpha=0.1,selection.beta=0.0" / ".hydra" / "overrides.yaml").read_text()
    assert "demo.task.train_size=120" in overrides  # the full list stays with the job


def test_the_report_has_a_row_per_setting_with_csv_markdown_and_plots(grid):
    _, sweep = grid
    proc = subprocess.run([sys.executable, "-m", "lightreasoner.analysis.report", str(sweep)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = sweep / "report"
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 4
    assert {(float(r["selection.beta"]), float(r["selection.alpha"])) for r in rows} == {(b, a) for b in (0.0, 0.005) for a in (0.1, 0.2)}
    assert "selection.beta" in (out / "report.md").read_text()
    assert list(out.glob("*.png"))


def test_a_failed_job_is_recorded_and_listed_while_the_others_finish(grid):
    tmp, _ = grid
    sweep = tmp / "failing"
    # beta=50 keeps no step: that job fails with a clear error, the other one finishes
    proc = _multirun(tmp, sweep, "selection.beta=0.0,50.0")
    assert proc.returncode != 0
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert {s["status"] for s in summaries.values()} == {"finished", "failed"}
    (failed,) = [s for s in summaries.values() if s["status"] == "failed"]
    assert "selection.beta" in failed["error"]
    proc = subprocess.run([sys.executable, "-m", "lightreasoner.analysis.report", str(sweep)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (sweep / "report" / "report.md").read_text()
    assert "Failed or unfinished runs" in md and "selection.beta=50.0" in md


def test_short_names_and_swept_keys():
    assert short_name("selection.beta=0.4") == "selection.beta=0.4"
    long = ",".join(f"k{i}=v{i}" for i in range(40))
    assert len(short_name(long)) == 11 and short_name(long) == short_name(long)
    assert short_name("dataset.files.train=/tmp/x.jsonl").startswith("h")
    argv = ["selection.beta=0.2,0.4", "eval.benchmarks=[gsm8k,svamp]", "seed=range(3)", "+x=choice(a,b)", "lr=1e-3", "-m"]
    assert swept_keys(argv) == {"selection.beta", "seed", "x"}
    assert swept_keys([], {"optimizer.lr": "1e-3,1e-4"}) == {"optimizer.lr"}


def test_optuna_preset_searches_on_validation_and_returns_the_objective(grid):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    tmp, _ = grid
    sweep = tmp / "optuna"
    space = '{optimizer.lr:"tag(log, interval(1e-4, 1e-2))",selection.beta:"interval(0.0, 0.005)",selection.alpha:"interval(0.05, 0.5)"}'
    proc = _multirun(tmp, sweep, "+sweep=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.params={space}", "eval.max_problems=20")
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 2 and all(s["status"] == "finished" for s in summaries)
    assert best["best_value"] == pytest.approx(max(s["objective"] for s in summaries))
    assert 0.0 <= best["best_params"]["selection.beta"] <= 0.005
    for settings in sweep.glob("*/eval/*/demo.settings.json"):  # the objective never touches test
        assert json.loads(settings.read_text())["split"] == "validation"


def test_the_sweep_notebook_runs_on_the_real_grid(grid, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from test_sweep_notebook import run_notebook

    _, sweep = grid
    monkeypatch.setenv("LIGHTREASONER_SWEEP_DIR", str(sweep))
    try:
        scope = run_notebook()
    finally:
        plt.close("all")
    out = capsys.readouterr().out
    assert f"{sweep}: 4 runs" in out and "varying: ['selection.beta', 'selection.alpha']" in out
    assert len(scope["table"]) == 4
