"""The pair diagnostic's outputs beyond its own files: the flat ``diagnose/...`` W&B summary keys
(:func:`lightreasoner.eval.diagnose_report.diagnose_metrics`, :func:`~lightreasoner.run.diagnose.log_report` into an
offline W&B run and into the CSV logger) and the "Pair diagnostic" table of the sweep report
(:func:`lightreasoner.analysis.diagnose_table.diagnose_table`, ``write_report`` on diagnose.json files). No model runs."""

from __future__ import annotations

import copy
import csv
import json
import math
import os

import pandas as pd
import pytest
from _fake_sweep import composed_config, summary, write_run
from _wandb_offline import read_offline_run

from lightreasoner.analysis import report as sweep_report
from lightreasoner.analysis.diagnose_table import diagnose_table, format_diagnose_table
from lightreasoner.eval.diagnose_report import diagnose_metrics
from lightreasoner.run.diagnose import DiagnoseSettings, log_report


def _block(positions, flips, c, e, advantage, ci, boot):
    return {"positions": positions, "kl_mean": 0.3, "kl_quantiles": {"0.1": 0.01, "0.25": 0.05, "0.5": 0.2, "0.75": 0.4, "0.9": 0.8},
            "expert_is_reference": 0.9, "contrast_is_reference": 0.85, "flip_rate": flips / positions,
            "flips": flips, "contrast_right": c, "expert_right": e, "advantage": advantage, "ci95": ci,
            "sign_test_p": 0.5, "ci95_bootstrap_by_reference": boot,
            "by_class": {"digit": {"positions": 1, "flips": 0, "contrast_right": 0, "expert_right": 0, "advantage": None,
                                   "ci95": None, "sign_test_p": 1.0}}}


def make_report(pair="demo-tiny", gamma=1.0, on_policy=True, answers=True) -> dict:
    """A diagnose.json as run() writes it (hand-made numbers)."""
    return {
        "pair": pair, "expert": "expert", "amateur": "amateur", "dataset": "demo", "split": "train",
        "references": 40, "reference_tokens": 1200,
        "selection": {"rule": "kl_threshold", "beta": 0.4, "alpha": 0.2, "target": "contrast", "tau": 1.0,
                      "top_k": None, "gamma": gamma, "first_step": 1},
        "dtype": {"expert": "float32", "amateur": "float32"},
        "scored_positions": 1000, "unscored_positions": 4, "kept_positions": 250, "kept_fraction": 0.25,
        "all": _block(1000, 50, 20, 25, -0.1, [-0.3, 0.1], [-0.35, 0.12]),
        "kept": _block(250, 40, 18, 10, 0.2, [-0.05, 0.42], [-0.1, 0.5]),
        "on_policy": ({"found": True, "trace_cache": "/c", "traces": 30, "kept_steps": 400, "label_argmax_differs": 0.301}
                      if on_policy else {"found": False, "trace_key": "abc"}),
        "answer_level": ({"n": 40, "max_new_tokens": 64, "alpha": 0.2,
                          "expert": {"correct": 20, "accuracy": 0.5, "ci95": [0.35, 0.65], "wall_s": 3.0},
                          "contrastive_decoding": {"correct": 22, "accuracy": 0.55, "ci95": [0.4, 0.7], "wall_s": 4.0},
                          "paired": {"n": 40, "accuracy_baseline": 0.5, "accuracy_model": 0.55, "diff": 0.05,
                                     "ci95": [-0.05, 0.15], "only_baseline_correct": 1, "only_model_correct": 3,
                                     "mcnemar_p": 0.625}}
                         if answers else {"skipped": "contrastive decoding needs one shared tokenizer"}),
        "timing": {"prepare_s": 0.1, "load_s": 1.5, "teacher_forcing_s": 12.0, "statistics_s": 0.4,
                   "answer_level_s": 8.0, "wall_s": 22.0},
        "machine": {"cpu": "x", "cores": 2},
        "interval": "...",
    }


def test_diagnose_metrics_are_flat_numbers_named_after_the_report():
    m = diagnose_metrics(make_report())
    assert m["diagnose/references"] == 40 and m["diagnose/reference_tokens"] == 1200
    assert m["diagnose/kept_fraction"] == 0.25 and m["diagnose/kept_positions"] == 250
    assert m["diagnose/kept/flips"] == 40 and m["diagnose/kept/flip_rate"] == pytest.approx(0.16)
    assert m["diagnose/all/flips"] == 50 and m["diagnose/all/flip_rate"] == pytest.approx(0.05)
    assert (m["diagnose/kept/contrast_right"], m["diagnose/kept/expert_right"]) == (18, 10)
    assert m["diagnose/kept/advantage"] == 0.2 and m["diagnose/all/advantage"] == -0.1
    assert (m["diagnose/kept/ci95_lo"], m["diagnose/kept/ci95_hi"]) == (-0.05, 0.42)
    assert (m["diagnose/kept/ci95_bootstrap_by_reference_lo"], m["diagnose/kept/ci95_bootstrap_by_reference_hi"]) == (-0.1, 0.5)
    assert m["diagnose/kept/kl_p50"] == 0.2 and m["diagnose/kept/kl_p10"] == 0.01
    assert m["diagnose/on_policy/label_argmax_differs"] == 0.301 and m["diagnose/on_policy/traces"] == 30
    assert m["diagnose/answer_level/expert_accuracy"] == 0.5 and m["diagnose/answer_level/contrastive_decoding_accuracy"] == 0.55
    assert m["diagnose/answer_level/diff"] == 0.05 and m["diagnose/answer_level/diff_ci95_hi"] == 0.15
    assert m["diagnose/answer_level/mcnemar_p"] == 0.625
    assert m["diagnose/wall_s/total"] == 22.0 and m["diagnose/wall_s/teacher_forcing"] == 12.0
    assert all(k.startswith("diagnose/") and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in m.items())
    # no trace cache, answer level skipped, no flips: those keys are absent, not null
    r = make_report(on_policy=False, answers=False)
    r["kept"].update(flips=0, contrast_right=0, expert_right=0, advantage=None, ci95=None, ci95_bootstrap_by_reference=None)
    m = diagnose_metrics(r)
    assert not any(k.startswith(("diagnose/on_policy/", "diagnose/answer_level/")) for k in m)
    assert m["diagnose/kept/flips"] == 0 and "diagnose/kept/advantage" not in m and "diagnose/kept/ci95_lo" not in m
    with pytest.raises(TypeError, match="^diagnose_metrics: expected a pair diagnostic report"):
        diagnose_metrics({"pair": "x"})


def _compose(*overrides):
    from lightreasoner.run.cli import Composer

    composer = Composer()
    try:
        return composer.compose(list(overrides))
    finally:
        composer.close()


def test_log_report_writes_one_offline_wandb_run_with_the_summary_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    cfg = _compose("logger=wandb", "logger.offline=true", "selection.beta=0.4")
    before = copy.deepcopy(cfg)
    report = make_report(pair="demo-tiny__amateur_ckpt")
    out = tmp_path / "diagnose" / "demo-tiny__amateur_ckpt"
    logged = log_report(cfg, report, out, DiagnoseSettings(problems=40, answer_level=True))
    assert logged == diagnose_metrics(report)
    assert cfg == before  # the caller's config is left as it was
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "diagnose" and run["run"]["group"] == "demo-tiny__amateur_ckpt"
    assert run["run"]["name"] == "demo-tiny__amateur_ckpt" and run["run"]["exit_code"] == 0
    assert run["config"]["diagnose.problems"] == 40 and run["config"]["selection.beta"] == 0.4
    s = run["summary"]
    assert s["diagnose/kept/advantage"] == 0.2 and s["diagnose/answer_level/diff"] == 0.05
    assert s["diagnose/kept/ci95_bootstrap_by_reference_hi"] == 0.5 and s["diagnose/references"] == 40
    assert {k for k in s if k.startswith("diagnose/")} == set(logged)


def test_log_report_with_csv_writes_the_metrics_once_and_none_writes_nothing(tmp_path):
    cfg = _compose("logger=csv")
    out = tmp_path / "csv"
    logged = log_report(cfg, make_report(), out)
    (path,) = out.glob("logs/version_*/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and float(rows[0]["diagnose/kept/advantage"]) == 0.2 and set(logged) <= set(rows[0])
    assert not (out / "wandb").exists()
    none = tmp_path / "none"
    assert log_report(_compose("logger=none"), make_report(), none) is None
    assert not none.exists()


def _write_diagnostic(directory, report):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "diagnose.json").write_text(json.dumps(report, indent=2))
    (directory / "diagnose.md").write_text("## Pair diagnostic\n")


def test_diagnose_table_has_one_row_per_report_with_the_kept_figures():
    a = make_report("demo-tiny")
    b = make_report("coder", gamma=2.0, on_policy=False, answers=False)
    b["kept"].update(flips=10, flip_rate=0.04, contrast_right=7, expert_right=1, advantage=0.6,
                     ci95=[0.2, 0.8], ci95_bootstrap_by_reference=[0.3, 0.9])
    table = diagnose_table([a, b])
    assert table["pair"].tolist() == ["demo-tiny", "coder"]
    assert table["selection.gamma"].tolist() == [1.0, 2.0]  # the one selection key that differs
    assert "selection.beta" not in table
    assert table["kept_flips"].tolist() == [40, 10] and table["kept_advantage"].tolist() == [0.2, 0.6]
    assert table.loc[1, "kept_bootstrap_hi"] == 0.9 and table.loc[0, "on_policy_flip_rate"] == 0.301
    assert math.isnan(table.loc[1, "on_policy_flip_rate"]) and math.isnan(table.loc[1, "answer_diff"])
    shown = format_diagnose_table(table)
    row = shown.iloc[0]
    assert row["kept %"] == "25.0" and row["kept flips (share)"] == "40 (16.0%)"
    assert row["contrast / expert right"] == "18 / 10" and row["advantage pp [Wilson 95%]"] == "+20.0 [-5.0, +42.0]"
    assert row["bootstrap 95% (by reference)"] == "[-10.0, +50.0]" and row["on-policy flip %"] == "30.1"
    assert row["answer-level diff pp [95%]"] == "+5.0 [-5.0, +15.0]"
    assert shown.iloc[1]["on-policy flip %"] == "-" and shown.iloc[1]["answer-level diff pp [95%]"] == "-"


def test_report_of_a_directory_of_diagnostics_only(tmp_path, capsys):
    root = tmp_path / "outputs" / "diagnose"
    _write_diagnostic(root / "demo-tiny", make_report("demo-tiny"))
    coder = make_report("coder", on_policy=False)
    coder["kept"].update(advantage=0.6, ci95=[0.2, 0.8])
    _write_diagnostic(root / "coder", coder)
    out = sweep_report.write_report(root)
    assert out["runs"] is None and out["out_dir"] == root / "report"
    assert out["diagnostics"]["pair"].tolist() == ["coder", "demo-tiny"]  # directory order
    assert out["diagnostics"]["dir"].tolist() == ["coder", "demo-tiny"]
    md = (root / "report" / "report.md").read_text()
    assert "## Pair diagnostic" in md and "No finished run" not in md and "2 pair diagnostics and no training run" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| coder"))
    assert "+60.0 [+20.0, +80.0]" in line
    saved = pd.read_csv(root / "report" / "diagnose.csv")
    assert len(saved) == 2 and saved.loc[1, "kept_contrast_right"] == 18
    assert sweep_report.main([str(root), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Pair diagnostic (2 diagnose.json):") and "demo-tiny" in printed
    assert (tmp_path / "rep" / "diagnose.csv").is_file()


def test_training_report_unchanged_with_a_diagnostic_section_beside_it(tmp_path):
    for job, beta in enumerate((0.0, 0.4)):
        write_run(tmp_path / "sweep" / str(job), composed_config(beta, 0.2, 0, job), [f"selection.beta={beta}"],
                  summary(beta, 0.2, 0))
    plain = sweep_report.write_report(tmp_path / "sweep", tmp_path / "plain")
    assert plain["diagnostics"] is None and "Pair diagnostic" not in (tmp_path / "plain" / "report.md").read_text()
    _write_diagnostic(tmp_path / "diagnose" / "demo-tiny", make_report())
    both = sweep_report.write_report([tmp_path / "sweep", tmp_path / "diagnose"], tmp_path / "both")
    pd.testing.assert_frame_equal(both["display"], plain["display"])
    assert len(both["runs"]) == 2 and both["diagnostics"]["pair"].tolist() == ["demo-tiny"]
    md_plain = (tmp_path / "plain" / "report.md").read_text()
    md_both = (tmp_path / "both" / "report.md").read_text()
    assert md_both.startswith(md_plain.split("## Failed or unfinished runs")[0].split(" under `")[0])
    assert md_both.split("## Pair diagnostic")[0].rstrip().endswith("None.") and "+20.0 [-5.0, +42.0]" in md_both
    assert (tmp_path / "both" / "diagnose.csv").is_file() and not (tmp_path / "plain" / "diagnose.csv").exists()


def test_a_bad_diagnose_json_is_one_error_line(tmp_path, capsys):
    _write_diagnostic(tmp_path / "d" / "a", {"pair": "x"})
    assert sweep_report.main([str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.splitlines()
    path = tmp_path / "d" / "a" / "diagnose.json"
    assert err == [f"error: {path}: not a pair diagnostic's report (missing references, kept_fraction, kept)"]
    (tmp_path / "d" / "a" / "diagnose.json").write_text("{trunc")
    assert sweep_report.main([str(tmp_path / "d")]) == 2
    assert "JSONDecodeError" in capsys.readouterr().err
    (tmp_path / "e" / "0").mkdir(parents=True)
    assert sweep_report.main([str(tmp_path / "e")]) == 2
    assert "no Hydra run (.hydra/config.yaml) or pair diagnostic (diagnose.json) under" in capsys.readouterr().err
    assert os.listdir(tmp_path / "e") == ["0"]  # no report directory left behind


def test_a_sweep_over_one_pair_writes_one_directory_per_job(tmp_path):
    """-m selection.gamma=1,2 on one pair: two directories, named for the swept value; a sweep
    over pairs: one directory per pair; a single job keeps diagnose.out."""
    from pathlib import Path

    from lightreasoner.run.diagnose import DiagnoseSettings, job_settings_of

    class C(dict):
        def __init__(self, name):
            super().__init__(model_pair={"name": name, "amateur": {}}, run_name=None)
            self.model_pair = self["model_pair"]

    jobs = [["model_pair=demo", "selection.gamma=1.0"], ["model_pair=demo", "selection.gamma=2.0"]]
    outs = [s.out for s in job_settings_of(jobs, [C("demo-tiny"), C("demo-tiny")], DiagnoseSettings(out=str(tmp_path)))]
    assert outs == [str(tmp_path / "demo-tiny" / "selection.gamma=1.0"), str(tmp_path / "demo-tiny" / "selection.gamma=2.0")]
    outs = [s.out for s in job_settings_of([["model_pair=a"], ["model_pair=b"]], [C("a"), C("b")], DiagnoseSettings())]
    assert outs == [str(Path("outputs/diagnose/a")), str(Path("outputs/diagnose/b"))]
    assert job_settings_of([["x=1"]], [C("a")], DiagnoseSettings(out="here"))[0].out == "here"
