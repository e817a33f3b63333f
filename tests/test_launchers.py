"""Scale-out as users run it: launcher presets, two parallel jobs sharing one not-yet-sampled trace
cache, and sampling + distillation under DDP (2 CPU processes, gloo) from train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _demo_overrides import SHRUNKEN_DEMO
from hydra import compose, initialize_config_dir

import lightreasoner.core.config  # noqa: F401
from lightreasoner.sampling.trace_cache import TraceCache

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SMALL = [*SHRUNKEN_DEMO, "selection.beta=0.005", "logger=none", "trainer.enable_progress_bar=false"]


def _train(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _records(cache_dir: Path) -> list[dict]:
    (key_dir,) = list((cache_dir / "traces").iterdir())
    return sorted(TraceCache.open(cache_dir, key_dir.name).read_all(), key=lambda r: r["problem_id"])


@pytest.mark.parametrize("preset, target, keys", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
     {"partition": None, "gpus_per_node": 1, "timeout_min": 240, "array_parallelism": 16}),
    ("local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", {"cpus_per_task": 1}),
    ("parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
])
def test_launcher_presets_compose(preset, target, keys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher" if preset != "parallel" else "hydra_plugins.hydra_joblib_launcher")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == target
    for k, v in keys.items():
        assert launcher[k] == v, k


def test_fsdp_preset_composes_and_validates():
    from lightreasoner.run.validation import validate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp", "experiment=paper_qwen25_math_7b"])
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.FSDPStrategy"
    assert cfg.trainer.use_distributed_sampler is False and cfg.trainer.precision == "bf16-mixed"
    cfg.paths.output_dir = cfg.trainer.default_root_dir = "/tmp/lr-fsdp-test"
    validate(cfg)


def test_two_parallel_jobs_share_one_sampling(tmp_path):
    """Two jobs of one multirun, in parallel processes, both need traces nobody has sampled: one
    samples, the other waits on the cache lock and reads them; both select the same steps."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "multirun"
    _train(tmp_path, "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
           f"paths.cache_dir={tmp_path / 'cache'}", *SMALL, "optimizer.lr=1e-3,2e-3")
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 2 and all(s["status"] == "finished" for s in summaries)
    assert summaries[0]["sample_key"] == summaries[1]["sample_key"]
    assert summaries[0]["selection"] == summaries[1]["selection"]
    cached = sorted(s["efficiency"]["sampling"]["cached"] for s in summaries)
    assert cached == [False, True]  # one sampled, the other read what it wrote
    records = _records(tmp_path / "cache")
    ids = [r["problem_id"] for r in records]
    assert len(ids) == len(set(ids)) == 24  # every problem's trace stored once


def test_ddp_two_processes_from_train_py_write_the_cache_one_process_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    _train(one, f"paths.cache_dir={one / 'cache'}", *SMALL, "run_name=r")
    _train(two, f"paths.cache_dir={two / 'cache'}", *SMALL, "run_name=r", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true")
    a, b = _records(one / "cache"), _records(two / "cache")
    (manifest,) = list((two / "cache" / "traces").glob("*/manifest.json"))
    assert [r["world_size"] for r in json.loads(manifest.read_text())["runs"]] == [2]  # both ranks sampled
    assert [r["problem_id"] for r in a] == [r["problem_id"] for r in b]
    for x, y in zip(a, b):
        assert torch.equal(x["trace_ids"], y["trace_ids"]) and torch.equal(x["cand_ids"], y["cand_ids"])
        torch.testing.assert_close(x["kl"], y["kl"])
    s1, s2 = (json.loads((d / "outputs" / "r" / "summary.json").read_text()) for d in (one, two))
    strip = lambda sel: {k: v for k, v in sel.items() if k != "trace_cache"}  # noqa: E731  (each run its own cache dir)
    assert strip(s1["selection"]) == strip(s2["selection"])
    assert s2["status"] == "finished" and s2["efficiency"]["optimisation"]["updates"] == s1["efficiency"]["optimisation"]["updates"]
