"""The sweep report on fake Hydra multiruns: settings, seed aggregation, files, plots, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from _fake_sweep import FAILED, GAIN_PP, composed_config, fake_sweep, summary, write_run  # noqa: F401

from lightreasoner.analysis import report
from lightreasoner.analysis.aggregate import aggregate, varying_keys
from lightreasoner.analysis.discovery import load_runs
from lightreasoner.analysis.head_to_head import head_to_head
from lightreasoner.analysis.plots import make_plots
from lightreasoner.analysis.tables import efficiency_table, format_table

matplotlib.use("Agg")
REPO = Path(__file__).resolve().parents[1]


def test_load_runs_lists_every_run_and_finds_the_varying_keys(fake_sweep):  # noqa: F811
    runs = load_runs(fake_sweep)
    assert len(runs) == 10
    assert runs["status"].value_counts().to_dict() == {"finished": 8, "failed": 1, "unfinished": 1}
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["error"] == FAILED["error"] and failed["overrides"] == "selection.beta=0.4 selection.alpha=0.2 seed=2"
    assert varying_keys(runs) == ["selection.beta", "selection.alpha"]
    assert varying_keys(runs, exclude=()) == ["selection.beta", "selection.alpha", "seed"]
    # interpolations stay text; lists compare by their string form
    assert runs["paths.output_dir"].iloc[0] == "${hydra:runtime.output_dir}"
    assert runs["eval.models"].iloc[0] == '["base", "tuned", "amateur"]'
    assert runs["accuracy/base/demo"].iloc[1] == pytest.approx(0.42)
    # the parent of a multirun works too, and a run found twice counts once
    assert len(load_runs([fake_sweep.parents[1], fake_sweep / "3"])) == 10


def test_aggregate_averages_seeds_per_setting(fake_sweep):  # noqa: F811
    runs = load_runs(fake_sweep)
    table = aggregate(runs, varying_keys(runs))
    assert len(table) == 4
    grid = [[0.0, 0.1], [0.0, 0.2], [0.4, 0.1], [0.4, 0.2]]
    assert table[["selection.beta", "selection.alpha"]].values.tolist() == grid
    assert table["seeds"].tolist() == [2, 2, 2, 2]
    assert table["not_finished"].tolist() == [1, 0, 0, 1]
    for _, row in table.iterrows():
        gain = GAIN_PP[(row["selection.beta"], row["selection.alpha"])]
        assert row["acc/base/demo"] == pytest.approx(41.0)  # (40 + 42) / 2
        assert row["acc_lo/base/demo"] == pytest.approx(40.0) and row["acc_hi/base/demo"] == pytest.approx(42.0)
        assert row["acc/tuned/demo"] == pytest.approx(41.0 + gain)
        assert row["gain/demo"] == pytest.approx(gain)  # mean of gain - 1 and gain + 1
        assert (row["gain_lo/demo"], row["gain_hi/demo"]) == pytest.approx((gain - 1, gain + 1))
        assert row["gain/svamp"] == pytest.approx(0.0)
        assert row["acc/amateur/demo"] == pytest.approx(20.0)
        assert row["kept_pct"] == pytest.approx(100.0 if row["selection.beta"] == 0.0 else 37.5)
        assert row["tuned_tokens"] == pytest.approx(10000 if row["selection.beta"] == 0.0 else 4500)
        assert row["wall_s"] == pytest.approx(20.5)
    shown = format_table(table)
    assert shown.loc[3, "demo gain pp"] == "+3.0 (+2.0..+4.0)"
    assert shown.loc[0, "demo base %"] == "41.0 (40.0..42.0)"
    assert list(shown.columns[:4]) == ["selection.beta", "selection.alpha", "seeds", "not finished"]


def test_write_report_writes_table_runs_plots_and_failures(fake_sweep):  # noqa: F811
    out = report.write_report(fake_sweep)
    out_dir = fake_sweep / "report"
    assert out["out_dir"] == out_dir
    table = pd.read_csv(out_dir / "report.csv")
    assert len(table) == 4 and table["gain/demo"].tolist() == pytest.approx([0.5, 1.0, 2.0, 3.0])
    runs = pd.read_csv(out_dir / "runs.csv")
    assert len(runs) == 10
    by_status = runs.set_index("status")
    assert by_status.loc["failed", "error"] == FAILED["error"]
    assert Path(by_status.loc["unfinished", "run_dir"]).name == "9"
    md = (out_dir / "report.md").read_text()
    assert "## Failed or unfinished runs" in md
    failures = md.split("## Failed or unfinished runs")[1]
    assert "| 8 " in failures and "| 9 " in failures and FAILED["error"] in failures and "unfinished" in failures
    assert "min..max" in md and "`selection.beta`, `selection.alpha`" in md
    header, rule = [line for line in md.splitlines() if line.startswith("|")][:2]
    assert "demo gain pp" in header and set(rule) <= set("|:-")
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert "gain_vs_selection.beta.png" in pngs and "kept_vs_selection.beta.png" in pngs
    assert all((out_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(f"({p})" in md for p in pngs)


def test_cli_prints_the_table_and_writes_to_out(fake_sweep, tmp_path, capsys):  # noqa: F811
    assert report.main([str(fake_sweep), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("10 runs (8 finished, 1 failed, 1 unfinished); varying: selection.beta, selection.alpha")
    assert "+3.0 (+2.0..+4.0)" in out and "Failed or unfinished runs" in out
    assert (tmp_path / "rep" / "report.md").is_file()


def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_multirun"
    proc = subprocess.run([sys.executable, "-m", "lightreasoner.analysis.report", str(missing)],
                          check=False, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: no such path: {missing}"]
    (tmp_path / "empty" / "0").mkdir(parents=True)
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / "empty") in err[0]


def test_report_does_not_import_torch():
    code = ("import sys, lightreasoner.analysis.report; "
            "bad = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_unresolvable_interpolations_are_kept_and_ignored(tmp_path):
    for job, lr in enumerate((1e-4, 5e-5)):
        cfg = composed_config(0.4, 0.2, 0, job)
        cfg["optimizer"]["lr"] = lr
        cfg["paths"]["models_dir"] = "${oc.env:SURELY_NOT_SET_ANYWHERE}"
        cfg["distill"]["tag"] = f"${{paths.output_dir}}/job{job}"  # differs, but only as an interpolation
        cfg["trainer"]["precision"] = "${oc.select:missing.key,32}"
        cfg["sampling"]["max_new_tokens"] = "${eval.max_new_tokens}"  # dangling reference
        write_run(tmp_path / "sweep" / str(job), cfg, [f"optimizer.lr={lr}"], summary(0.4, 0.2, 0))
    runs = load_runs(tmp_path / "sweep")
    assert runs["distill.tag"].tolist() == ["${paths.output_dir}/job0", "${paths.output_dir}/job1"]
    assert runs["sampling.max_new_tokens"].iloc[0] == "${eval.max_new_tokens}"
    assert varying_keys(runs) == ["optimizer.lr"]
    out = report.write_report(tmp_path / "sweep")
    assert out["display"]["optimizer.lr"].tolist() == ["5e-05", "0.0001"]
    assert (tmp_path / "sweep" / "report" / "gain_vs_optimizer.lr.png").is_file()


def test_one_seed_per_method_shows_run_intervals_and_method_bars(tmp_path):
    for job, (method, seed) in enumerate([("lightreasoner", 0), ("sft", 1)]):
        cfg = composed_config(0.4, 0.1, seed, job)
        cfg["method"] = method
        write_run(tmp_path / "sweep" / str(job), cfg, [f"method={method}", f"seed={seed}"], summary(0.4, 0.1, seed))
    out = report.write_report(tmp_path / "sweep", tmp_path / "out")
    assert out["keys"] == ["method"]  # seed differs too, one seed per method
    shown = out["display"].set_index("method")
    assert shown.loc["lightreasoner", "demo gain pp"] == "+1.0 [-0.5, +2.5]"  # the run's bootstrap CI
    assert shown.loc["sft", "demo base %"] == "42.0 [39.0, 45.0]"  # the run's Wilson CI
    assert (tmp_path / "out" / "gain_by_method.png").is_file()
    figures = make_plots(out["runs"], out["table"], out["keys"])
    assert list(figures) == ["gain_by_method"] and isinstance(figures["gain_by_method"], matplotlib.figure.Figure)


def test_single_run_and_sample_only_runs(tmp_path):
    run = write_run(tmp_path / "outputs" / "0", composed_config(0.4, 0.2, 0, 0), [], summary(0.4, 0.2, 0))
    out = report.write_report(run)
    assert out["keys"] == [] and len(out["table"]) == 1
    assert (run / "report" / "gain_per_run.png").is_file()
    # stage=sample: no selection / results / comparisons / tuned tokens -> "-", no plot, no crash
    sample_only = {"status": "finished", "stage": "sample", "selection": None, "results": None,
                   "comparisons": None, "tuned_tokens": None, "wall_s": {"sample": 3.0}}
    for job in range(2):
        cfg = composed_config(0.4, 0.2, job, job)
        cfg["stage"] = "sample"
        write_run(tmp_path / "sample" / str(job), cfg, [f"seed={job}"], sample_only)
    out = report.write_report(tmp_path / "sample")
    row = out["display"].iloc[0]
    assert row["seeds"] == "2" and row["kept %"] == "-" and row["tuned tokens"] == "-" and row["wall s"] == "3.0"
    assert [f for f in out["files"] if f.endswith(".png")] == []
    md = (tmp_path / "sample" / "report" / "report.md").read_text()
    assert "No finished run with a tuned-vs-base comparison." in md


def test_unreadable_runs_are_listed_not_compared(tmp_path):
    for job, beta in enumerate((0.0, 0.4)):
        write_run(tmp_path / "sweep" / str(job), composed_config(beta, 0.2, 0, job), [f"selection.beta={beta}"],
                  summary(beta, 0.2, 0))
    (tmp_path / "sweep" / "1" / "summary.json").write_text('{"status": "fini')  # truncated copy
    write_run(tmp_path / "sweep" / "2", {}, ["selection.beta=0.8"], None)
    (tmp_path / "sweep" / "2" / ".hydra" / "config.yaml").write_text("sampling: [beta: 0.8\n")
    out = report.write_report(tmp_path / "sweep")
    runs = out["runs"]
    assert runs["status"].tolist() == ["finished", "unreadable", "unreadable"]
    assert runs["error"].iloc[1].startswith("summary.json: JSONDecodeError")
    assert runs["error"].iloc[2].startswith(".hydra: ")
    assert out["keys"] == ["selection.beta"]  # the run without a config does not make every key vary
    md = (tmp_path / "sweep" / "report" / "report.md").read_text().split("## Failed or unfinished runs")[1]
    assert "| 1 " in md and "| 2 " in md and "selection.beta=0.8" in md


def _eval_rows(run_dir, model, bench, verdicts, engine="vllm", outputs=None):
    d = run_dir / "eval" / model
    d.mkdir(parents=True, exist_ok=True)
    settings = {"benchmark": bench, "split": "test", "max_new_tokens": 512, "engine": {"engine": engine},
                "model_identity": {"files": [model, str(run_dir)]}}
    (d / f"{bench}.settings.json").write_text(json.dumps(settings))
    rows = [{"id": f"{bench}/{i}", "question": f"q{i}", "correct": v,
             "generated": (outputs or {}).get(i, f"out {i}")} for i, v in enumerate(verdicts)]
    (d / f"{bench}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_head_to_head_pairs_two_runs_tuned_models_and_checks_their_base_rows(tmp_path, capsys):
    lr, sft = tmp_path / "lightreasoner", tmp_path / "sft"
    _eval_rows(lr, "tuned", "gsm8k", [1, 1, 0, 0, 1, 0])
    _eval_rows(sft, "tuned", "gsm8k", [1, 0, 0, 1, 1, 1])
    _eval_rows(lr, "base", "gsm8k", [1, 0, 0, 0, 1, 0])
    _eval_rows(sft, "base", "gsm8k", [1, 0, 0, 0, 1, 0], outputs={3: "another output"})
    _eval_rows(lr, "tuned", "svamp", [1, 0])  # only one run evaluated svamp: not compared
    table = head_to_head(lr, sft)
    row = table.iloc[0]
    assert table["benchmark"].tolist() == ["gsm8k"]
    assert (row["a"], row["b"]) == ("lightreasoner/tuned", "sft/tuned")
    assert (row["a %"], row["b %"], row["only a right"], row["only b right"]) == (50.0, 66.7, 1, 2)
    assert row["b - a pp [95% CI]"].startswith("+16.7 [") and row["McNemar p"] == 1.0
    assert row["base rows equal"] == "no (1 differ)"
    assert report.main(["--head-to-head", str(lr), str(lr)]) == 0
    assert "| yes " in capsys.readouterr().out
    _eval_rows(sft, "tuned", "gsm8k", [1, 0, 0, 1, 1, 1], engine="hf")  # another engine: refused
    assert report.main(["--head-to-head", str(lr), str(sft)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: paired comparison sft/tuned vs lightreasoner/tuned") and "engine" in err[0]
    assert report.main(["--head-to-head", str(lr)]) == 2
    assert "expected 2 run directories" in capsys.readouterr().err


def test_head_to_head_pools_benchmarks_and_compares_any_two_models(tmp_path, capsys):
    run = tmp_path / "lightreasoner"
    _eval_rows(run, "base", "gsm8k", [1, 0, 0, 0, 1, 0])
    _eval_rows(run, "tuned", "gsm8k", [1, 1, 0, 1, 1, 0])
    _eval_rows(run, "base", "svamp", [1, 1, 0, 1])
    _eval_rows(run, "tuned", "svamp", [0, 1, 0, 1])
    table = head_to_head(run, run, "base", "tuned")
    assert table["benchmark"].tolist() == ["gsm8k", "svamp", "all (pooled)"]
    pooled = table.iloc[-1]
    # 10 problems: base right on 5, tuned on 6; only base right on 1 (svamp/0), only tuned on 2
    assert (pooled["n"], pooled["a %"], pooled["b %"]) == (10, 50.0, 60.0)
    assert (pooled["only a right"], pooled["only b right"]) == (1, 2)
    assert pooled["b - a pp [95% CI]"].startswith("+10.0 [") and pooled["McNemar p"] == 1.0
    assert (pooled["a"], pooled["b"]) == ("lightreasoner/base", "lightreasoner/tuned")
    assert pooled["base rows equal"] == "yes"
    assert report.main(["--head-to-head", str(run), str(run), "--models", "base", "tuned"]) == 0
    assert "all (pooled)" in capsys.readouterr().out
    assert report.main(["--head-to-head", str(run), str(run), "--models", "base", "amateur"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no benchmark evaluated for model 'base' in the first and 'amateur' in the second" in err[0]


def test_the_efficiency_table_reads_runs_kept_as_their_summary_alone(tmp_path, capsys):
    """Committed records keep some runs as their ``summary.json`` only (no ``.hydra/``): the
    efficiency table reads them as it reads Hydra runs."""
    for name, method, tuned in (("lr_finetune40", "lightreasoner", 962), ("sft_sample32", "sft", None)):
        d = tmp_path / "efficiency" / name
        d.mkdir(parents=True)
        eff = {"problems_sampled": 32, "tokens_generated": 4096, "tuned_tokens": tuned,
               "sampling": {"wall_s": 221.7, "cached": False}, "stages": {"distill": {"wall_s": 155.4}} if tuned else {}}
        (d / "summary.json").write_text(json.dumps({"status": "finished", "method": method, "seed": 0, "efficiency": eff}))
    table = efficiency_table(tmp_path / "efficiency")
    assert table["run"].tolist() == ["lr_finetune40", "sft_sample32"]
    assert table["tuned tokens"].tolist()[0] == 962 and table["sampling + fine-tune s"].tolist()[0] == 377.1
    assert report.main(["--efficiency", str(tmp_path / "efficiency")]) == 0
    assert "lr_finetune40" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert report.main(["--efficiency", str(tmp_path / "empty")]) == 2
    assert "no Hydra run (.hydra/config.yaml) or summary.json under" in capsys.readouterr().err

def test_the_report_reads_the_effective_selection_a_run_used():
    """Issue 30: a run's beta/alpha columns are the values its selection used (summary.json), under
    ``selection.*`` even for runs made when they were ``sampling.*`` keys: an old
    ``method=no_selection`` run configured at 0.4 ran at 0 and is plotted there."""
    from lightreasoner.analysis.discovery import effective_selection

    old = {"sampling.beta": 0.4, "sampling.alpha": 0.2, "method.name": "no_selection"}
    got = effective_selection(old, {"beta": 0.0, "alpha": 0.2, "selection": {"beta": 0.0, "alpha": 0.2}})
    assert got == {"selection.beta": 0.0, "selection.alpha": 0.2, "method.name": "no_selection"}
    new = {"selection.beta": 0.4, "selection.alpha": 0}
    assert effective_selection(new, {"selection": {"beta": 0.4, "alpha": 0.01}})["selection.alpha"] == 0.01
    assert effective_selection(new, None) == new  # an unfinished run: its config as it is
