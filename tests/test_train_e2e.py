"""train.py through Hydra, end to end on tiny models: every config group composes, the full
pipeline runs, a beta change reuses the trace cache, and bad input fails cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from _demo_overrides import SHRUNKEN_DEMO
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _compose(overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


GROUPS = ["model_pair", "dataset", "sampling", "selection", "generation", "method", "distill", "peft", "optimizer", "scheduler", "trainer", "logger", "eval", "experiment"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_group_option_composes(group):
    import lightreasoner.core.config  # noqa: F401
    from omegaconf import OmegaConf

    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options, group
    for opt in options:
        cfg = _compose([f"{group}={opt}", "paths.output_dir=/tmp/x"])
        # everything resolves; only the demo pair's directories are filled in at run time
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        assert container["model_pair"]["expert"]["name_or_path"], (group, opt)
        assert container["selection"]["beta"] >= 0
        if group == "experiment":  # only the demo experiments build the demo world
            assert (cfg.get("demo") is not None) == (opt in ("demo", "positive_control")), opt


def _write_gsm8k_like(path: Path, n: int) -> None:
    rows = []
    for i in range(n):
        a, b = 3 + i, 4 + 2 * i
        rows.append({"question": f"Tom has {a} apples and buys {b} more. How many?", "answer": f"{a}+{b}={a+b}\n#### {a+b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _train(tmp_path: Path, tiny_pair_dirs, *extra, run="run"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    _write_gsm8k_like(data / "train.jsonl", 6)
    _write_gsm8k_like(data / "test.jsonl", 4)
    args = [
        sys.executable, str(REPO / "train.py"),
        "experiment=coder_cpu",
        f"model_pair.expert.name_or_path={tiny_pair_dirs['expert']}", "model_pair.expert.gguf_file=null",
        f"model_pair.amateur.name_or_path={tiny_pair_dirs['amateur']}", "model_pair.amateur.gguf_file=null",
        "model_pair.expert.device=cpu", "model_pair.amateur.device=cpu",
        f"dataset.files.train={data / 'train.jsonl'}", f"dataset.files.test={data / 'test.jsonl'}",
        "dataset.max_problems=6", "sampling.batch_size=4", "sampling.max_new_tokens=10",
        "selection.beta=0.0", "trainer.max_steps=2", "distill.steps_per_batch=4",
        "eval.max_problems=4", "eval.max_new_tokens=12", "eval.batch_size=4",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / run}",
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_train_py_end_to_end_then_cache_reuse(tmp_path, tiny_pair_dirs):
    proc = _train(tmp_path, tiny_pair_dirs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["selection"]["problems"] == 6
    assert summary["selection"]["kept_steps"] > 0
    assert Path(summary["adapter_dir"], "lightreasoner.json").is_file()
    assert Path(summary["merged_dir"]).is_dir()
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report, "evaluation report is empty"
    traces = list((tmp_path / "cache" / "traces").iterdir())
    assert len(traces) == 1
    shards_before = sorted(p.name for p in traces[0].rglob("*") if p.is_file())

    # a different beta reuses the scored traces: same single cache entry, no new shard
    proc2 = _train(tmp_path, tiny_pair_dirs, "selection.beta=0.05", "stage=sample", run="run2")
    assert proc2.returncode == 0, proc2.stderr[-4000:]
    assert len(list((tmp_path / "cache" / "traces").iterdir())) == 1
    shards_after = sorted(p.name for p in traces[0].rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert [s for s in shards_after if s not in shards_before and not s.endswith(".lock")] in ([], ["manifest.json"])
    s2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert s2["sample_key"] == summary["sample_key"]
    assert s2["selection"]["kept_steps"] <= summary["selection"]["kept_steps"]


@pytest.mark.parametrize(
    "override, field",
    [
        # through the command line (the other keys' messages: tests/test_bad_input.py, in-process)
        ("selection.beta=-0.1", "selection.beta"),
        ("model_pair.expert.name_or_path=/nonexistent/model", "name_or_path"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, tiny_pair_dirs, override, field):
    proc = _train(tmp_path, tiny_pair_dirs, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and field in err_lines[0], proc.stderr[-3000:]
    cache = tmp_path / "cache" / "traces"
    assert not cache.exists() or not any(p.is_file() and p.suffix != ".lock" for p in cache.rglob("*"))


def test_shrunken_default_demo_runs_end_to_end(tmp_path):
    """`python train.py` (experiment=demo) with the demo world shrunk through overrides."""
    args = [
        sys.executable, str(REPO / "train.py"),
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", *SHRUNKEN_DEMO, "selection.beta=0.0",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_pair"] == "demo-tiny" and summary["selection"]["problems"] == 24
    assert summary["tuned_tokens"] > 0
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    text = json.dumps(report)
    for name in ("base", "tuned", "amateur"):
        assert f'"{name}"' in text, name
    assert len(list((tmp_path / "cache" / "demo").glob("*/expert/config.json"))) == 1

    # Warm rerun: the pair and the traces come from the cache, and every stage is re-seeded, so
    # the adapter is the one the cold run (which trained the pair in-process) produced.
    warm = [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={tmp_path / 'warm'}" for a in args]
    proc2 = subprocess.run(warm, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-4000:]
    cold_w = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    warm_w = load_file(str(tmp_path / "warm" / "adapter" / "adapter_model.safetensors"))
    assert cold_w.keys() == warm_w.keys()
    for k in cold_w:
        assert torch.equal(cold_w[k], warm_w[k]), k
    warm_report = json.loads((tmp_path / "warm" / "eval" / "report.json").read_text())
    assert warm_report["summary"] == report["summary"]
