"""Runs survive being killed: ``run_name=NAME`` and the same command again continues every
unfinished stage (kill -9 drills on the shrunken demo, through train.py as a user runs it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _demo_overrides import SHRUNKEN_DEMO
from safetensors.torch import load_file

from lightreasoner.core.config import run_dir_name

REPO = Path(__file__).resolve().parents[1]
DRILL = [*SHRUNKEN_DEMO, "selection.beta=0.005", "trainer.max_steps=60", "distill.steps_per_batch=4", "peft.dropout=0.1", "logger=none",
         "eval.batch_size=2", "trainer.enable_progress_bar=false"]


def _cmd(tmp: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"paths.cache_dir={tmp / 'cache'}", *DRILL, *overrides]


def _run(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(tmp, *overrides), capture_output=True, text=True, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_when(tmp: Path, ready, *overrides: str, timeout: float = 300) -> None:
    """Start train.py, SIGKILL it as soon as ``ready()`` is true; the drill must hit mid-stage."""
    proc = subprocess.Popen(_cmd(tmp, *overrides), cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"train.py ended before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.time() - t0 < timeout, "kill point never reached"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def drills(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drills")
    _run(tmp, "run_name=full")  # builds the demo pair and the traces; the uninterrupted reference
    return tmp


def test_run_name_is_a_fixed_directory_and_is_checked():
    assert run_dir_name("abc/seed-1", "2026-01-01/00-00-00") == "abc/seed-1"
    assert run_dir_name(None, "2026-01-01/00-00-00") == "2026-01-01/00-00-00"
    for bad in ("../up", "/abs", "a b", "a//b"):
        with pytest.raises(ValueError, match="run_name: expected"):
            run_dir_name(bad, "x")


def test_kill_during_distillation_then_rerun_gives_the_uninterrupted_adapter(drills):
    tmp = drills
    run = tmp / "outputs" / "killed"
    ckpts = run / "checkpoints"
    _kill_when(tmp, lambda: any(ckpts.glob("*step=24*")), "run_name=killed")
    assert not (run / "adapter").exists() and (ckpts / "last.ckpt").is_file()  # killed mid-fine-tune
    _run(tmp, "run_name=killed")
    full, resumed = _adapter(tmp / "outputs" / "full"), _adapter(run)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k  # bit-identical on CPU (dropout RNG restored too)
    a, b = (json.loads((tmp / "outputs" / n / "summary.json").read_text()) for n in ("full", "killed"))
    assert a["eval"] == b["eval"] and a["tuned_tokens"] == b["tuned_tokens"]


def test_kill_during_evaluation_keeps_finished_problems_and_the_report(drills):
    tmp = drills
    run = tmp / "outputs" / "evalkill"
    _run(tmp, "run_name=evalkill", "stage=distill")
    records = run / "eval" / "tuned" / "demo.jsonl"
    _kill_when(tmp, lambda: records.is_file() and len(records.read_text().splitlines()) >= 4, "run_name=evalkill")
    before = records.read_text().splitlines()
    assert 4 <= len(before) < 40  # killed mid-evaluation
    proc = _run(tmp, "run_name=evalkill")
    assert "sampling and distillation skipped" in proc.stderr + proc.stdout
    after = records.read_text().splitlines()
    assert after[: len(before)] == before and len(after) == 40  # finished problems not regenerated
    ref = json.loads((tmp / "outputs" / "full" / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    assert got["eval"] == ref["eval"] and got["comparisons"] == ref["comparisons"]


def test_rerunning_a_name_with_other_training_settings_is_one_clear_error(drills):
    proc = subprocess.run(_cmd(drills, "run_name=full", "selection.beta=0.9"), capture_output=True, text=True, cwd=drills, timeout=300)
    assert proc.returncode == 2
    assert "run_name:" in proc.stderr and "selection.beta" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_carried_in_a_bundle_resumes_in_a_fresh_session(tmp_path, monkeypatch):
    """A fresh session: the cache and the run directory are gone, the demo pair and its data are
    rebuilt (the same bytes, new file dates); the run imported from a bundle (without its
    checkpoints or merged weights) resumes - no sampling, no fine-tune, the merged model rebuilt
    from the adapter, its evaluation records accepted under the same settings - and reports the same."""
    import shutil

    from lightreasoner.run.cache_bundle import export_runs, import_bundle

    monkeypatch.chdir(tmp_path)
    _run(tmp_path, "run_name=carried")
    run = tmp_path / "outputs" / "carried"
    ref = json.loads((run / "summary.json").read_text())
    records = {p.relative_to(run): p.read_bytes() for p in (run / "eval").rglob("*.jsonl")}
    monkeypatch.setattr("lightreasoner.run.cache_bundle.PACK_BYTES", 1 << 10)  # weights and shards travel compressed
    out = export_runs(["outputs/carried"], tmp_path / "bundle", tmp_path / "cache")
    assert list((tmp_path / "bundle").rglob("adapter_model.safetensors.bundle.gz"))
    kinds = sorted({c.split("/")[0] for c in out["caches"]})
    assert kinds == ["eval", "traces"] and len([c for c in out["caches"] if c.startswith("eval/")]) == len(list((run / "eval").glob("*/*.settings.json")))
    assert not (tmp_path / "bundle" / "runs" / "outputs" / "carried" / "merged").exists()
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(tmp_path / "outputs")
    assert import_bundle(tmp_path / "bundle", tmp_path / "cache", tmp_path)["files"] > 0
    proc = _run(tmp_path, "run_name=carried")
    assert "sampling and distillation skipped" in proc.stderr + proc.stdout
    assert (run / "merged").is_dir()
    assert {p.relative_to(run): p.read_bytes() for p in (run / "eval").rglob("*.jsonl")} == records
    got = json.loads((run / "summary.json").read_text())
    assert got["eval"] == ref["eval"] and got["comparisons"] == ref["comparisons"]
    assert import_bundle(tmp_path / "bundle", tmp_path / "cache", tmp_path)["files"] == 0  # nothing overwritten


def test_cache_bundle_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from lightreasoner.run.cache_bundle import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notarun").mkdir()
    cases = ((["export", "notarun", "--to", "b"], "run:"), (["export", "/abs", "--to", "b"], "run:"),
             (["export", "--cache", "traces/nope", "--to", "b"], "cache:"), (["import", "notarun"], "bundle:"))
    for argv, field in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {field}") and err.count("\n") == 1, err
    assert not (tmp_path / "b").exists()


def test_an_unfinished_fine_tune_is_carried_with_its_last_checkpoint(drills, tmp_path, monkeypatch):
    """Killed mid-fine-tune, before any summary: the run, its last checkpoint and its traces
    (named with --cache) carried to a fresh session continue to the uninterrupted adapter."""
    import shutil

    from lightreasoner.run.cache_bundle import main

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "half"
    every = "distill.checkpoint_every=10"  # the default (max_steps / 5 = 12) never writes step 30
    _kill_when(tmp_path, lambda: any((run / "checkpoints").glob("*step=30*")), "run_name=half", every)
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()
    (key,) = [p.name for p in (tmp_path / "cache" / "traces").iterdir() if p.is_dir()]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["export", "outputs/half", "--cache", f"traces/{key}", "--to", "bundle", *cache]) == 0
    assert [p.name for p in (tmp_path / "bundle" / "runs" / "outputs" / "half" / "checkpoints").iterdir()] == ["last.ckpt"]
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(tmp_path / "outputs")
    assert main(["import", "bundle", *cache]) == 0
    _run(tmp_path, "run_name=half", every)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["efficiency"]["sampling"]["cached"] is True  # the carried traces, not sampled again
    full, resumed = _adapter(drills / "outputs" / "full"), _adapter(run)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_checkpoint_frequency_is_not_part_of_the_training_identity():
    from omegaconf import OmegaConf

    from lightreasoner.run.resume import training_identity

    def sha(**distill):
        return training_identity(OmegaConf.create({"distill": {"steps_per_batch": 8, **distill}, "trainer": {"max_steps": 10}}))[0]

    assert sha(checkpoint_every=20) == sha(checkpoint_every=None) == sha()
    assert sha(steps_per_batch=4) != sha()


def test_a_run_without_a_summary_carries_the_traces_its_finished_fine_tune_names(tmp_path, monkeypatch):
    from lightreasoner.run.cache_bundle import export_runs

    monkeypatch.chdir(tmp_path)
    traces = tmp_path / "cache" / "traces" / "k1"
    traces.mkdir(parents=True)
    (traces / "manifest.json").write_text("{}")
    run = tmp_path / "outputs" / "r"
    (run / ".hydra").mkdir(parents=True)
    (run / "stages.json").write_text(json.dumps({"stages": {"distill": {"selection": {"trace_cache": str(traces)}}}}))
    out = export_runs(["outputs/r"], tmp_path / "b", tmp_path / "cache")
    assert out["caches"] == ["traces/k1"] and (tmp_path / "b" / "cache" / "traces" / "k1" / "manifest.json").is_file()


def test_training_identity_does_not_depend_on_how_a_path_is_spelled(tmp_path):
    from omegaconf import OmegaConf

    from lightreasoner.run.resume import StageRecord, _sha, training_identity

    def cfg(train):
        return OmegaConf.create({"dataset": {"files": {"train": train}, "max_problems": 5}, "trainer": {"max_steps": 10}})

    spelled, plain = cfg("/work/main/../shared/data/train.jsonl"), cfg("/work/shared/data/train.jsonl")
    assert training_identity(spelled) == training_identity(plain)
    assert training_identity(cfg("/work/other/data/train.jsonl"))[0] != training_identity(plain)[0]
    # a record written before normalisation (raw settings, raw sha) is still this run
    raw = {"dataset": {"files": {"train": "/work/main/../shared/data/train.jsonl"}, "max_problems": 5}}
    raw.update({k: None for k in ("model_pair", "sampling", "method", "distill", "peft", "optimizer", "scheduler", "demo", "seed")})
    raw["trainer"] = {"max_steps": 10, "accumulate_grad_batches": None, "gradient_clip_val": None, "precision": None}
    (tmp_path / "stages.json").write_text(json.dumps({"training_sha": _sha(raw), "training_settings": raw,
                                                      "stages": {"distill": {"x": 1}}}))
    assert StageRecord(tmp_path, plain).done("distill") == {"x": 1}
    with pytest.raises(ValueError, match=r"was trained with other settings \(changed: dataset\.files\.train\)"):
        StageRecord(tmp_path, cfg("/work/other/data/train.jsonl"))


def test_a_run_recorded_before_selection_had_one_home_still_resumes(tmp_path):
    """Issue 30 moved beta/alpha/first_step to the selection group and the ablations to its
    presets; a stages.json written before (the legacy identity) still matches the same settings,
    and a real change is named by its key now."""
    from hydra import compose, initialize_config_dir

    from lightreasoner.run.resume import StageRecord, legacy_identity, training_identity

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(conf, version_base="1.3"):
        cfgs = {o: compose("train", overrides=[o] if o else []) for o in ("", "method=no_selection", "method=no_tail")}
        moved = compose("train", overrides=["selection.beta=0.9"])
    for name, cfg in cfgs.items():
        sha, settings = legacy_identity(cfg)
        assert settings["sampling"]["beta"] == 0.4 and "selection" not in settings
        run = tmp_path / (name or "default")
        run.mkdir()
        (run / "stages.json").write_text(json.dumps({"training_sha": sha, "training_settings": settings, "stages": {}}))
        StageRecord(run, cfg)  # accepted: the same settings, recorded in the old layout
        assert training_identity(cfg)[0] != sha  # new records hash the selection group where it lives
    with pytest.raises(ValueError, match=r"changed: sampling\.beta"):
        StageRecord(tmp_path / "default", moved)  # an old record: the change named in its layout
    new = tmp_path / "new"
    new.mkdir()
    sha, settings = training_identity(cfgs[""])
    (new / "stages.json").write_text(json.dumps({"training_sha": sha, "training_settings": settings, "stages": {}}))
    with pytest.raises(ValueError, match=r"changed: selection\.beta"):
        StageRecord(new, moved)
