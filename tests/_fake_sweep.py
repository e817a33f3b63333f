"""A fake Hydra multirun laid out as Hydra writes it, for the sweep report and its notebook.

A beta x alpha grid ({0.0, 0.4} x {0.1, 0.2}) with seeds 0 and 1 (jobs 0-7), one failed job (8)
and one unfinished job (9, no summary.json). The numbers are simple enough to average by hand:

- base accuracy on ``demo`` = 0.40 + 0.02 * seed (mean over seeds 41.0 %), on ``svamp`` 0.60;
- tuned - base on ``demo`` = GAIN_PP[(beta, alpha)] - 1 + 2 * seed points (seed range +-1),
  on ``svamp`` 0; amateur 0.20 everywhere;
- kept-step fraction 1.0 at beta 0 and 0.35 + 0.05 * seed at beta 0.4 (mean 37.5 %);
- tuned tokens 10000 at beta 0, 4000 + 1000 * seed at beta 0.4; wall time 20 + seed seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

BETAS = (0.0, 0.4)
ALPHAS = (0.1, 0.2)
SEEDS = (0, 1)
GAIN_PP = {(0.0, 0.1): 0.5, (0.0, 0.2): 1.0, (0.4, 0.1): 2.0, (0.4, 0.2): 3.0}
FAILED = {"beta": 0.4, "alpha": 0.2, "seed": 2, "error": "RuntimeError: CUDA out of memory"}
UNFINISHED = {"beta": 0.0, "alpha": 0.1, "seed": 2}
CLUSTER_DIR = "/scratch/someone/multirun/2025-01-01/12-00-00"


def composed_config(beta: float, alpha: float, seed: int, job: int) -> dict:
    """What Hydra writes to .hydra/config.yaml: composed, interpolations left as text."""
    return {
        "paths": {
            "cache_dir": "${oc.env:LIGHTREASONER_CACHE,${oc.env:HOME}/.cache/lightreasoner}",
            "output_dir": "${hydra:runtime.output_dir}",
            "demo_dir": f"{CLUSTER_DIR}/{job}/demo",  # differs in every run, no setting
        },
        "model_pair": {"name": "demo-tiny", "expert": {"name_or_path": "${paths.cache_dir}/demo/expert"}},
        "dataset": {"name": "demo", "split": "train", "limit": None},
        "sampling": {"system_prompt": "Please reason step by step.", "max_new_tokens": 128, "beta": beta,
                     "alpha": alpha, "first_step": 1, "seed": None},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-4, "weight_decay": 0.0},
        "trainer": {"max_steps": 100, "default_root_dir": "${paths.output_dir}",
                    "callbacks": {"checkpoint": {"dirpath": f"{CLUSTER_DIR}/{job}/ckpt"}}},
        "logger": {"name": "csv", "save_dir": f"{CLUSTER_DIR}/{job}/logs"},
        "eval": {"models": ["base", "tuned", "amateur"], "benchmarks": ["demo", "svamp"]},
        "distill": {"out_dir": "${paths.output_dir}/adapter_seed${seed}"},
        "demo": {},
        "method": "lightreasoner",
        "stage": "all",
        "seed": seed,
        "tuned": None,
    }


def _result(model: str, bench: str, acc: float) -> dict:
    n = 1000
    correct = round(acc * n)
    return {"model": model, "benchmark": bench, "n": n, "correct": correct, "accuracy": correct / n,
            "ci95": [correct / n - 0.03, correct / n + 0.03], "cut_off_frac": 0.0, "no_answer_frac": 0.01,
            "mean_tokens": 40.0, "gen_s": 3.0, "tokens_per_s": 12000.0, "wall_s": 4.0}


def summary(beta: float, alpha: float, seed: int) -> dict:
    """A finished run's summary.json (schema of the pipeline)."""
    base = {"demo": 0.40 + 0.02 * seed, "svamp": 0.60}
    gain = {"demo": (GAIN_PP[(beta, alpha)] - 1 + 2 * seed) / 100, "svamp": 0.0}
    kept = 1.0 if beta == 0.0 else 0.35 + 0.05 * seed
    results, comparisons = [], []
    for bench in ("demo", "svamp"):
        tuned = base[bench] + gain[bench]
        results += [_result("base", bench, base[bench]), _result("tuned", bench, tuned),
                    _result("amateur", bench, 0.20)]
        comparisons.append({"benchmark": bench, "model": "tuned", "baseline": "base", "n": 1000,
                            "accuracy_baseline": base[bench], "accuracy_model": tuned, "diff": gain[bench],
                            "ci95": [gain[bench] - 0.015, gain[bench] + 0.015], "mcnemar_p": 0.5,
                            "only_baseline_correct": 30, "only_model_correct": 30 + round(gain[bench] * 1000)})
    comparisons.append({"benchmark": "demo", "model": "amateur", "baseline": "base", "refused": "different prompts"})
    return {
        "status": "finished", "stage": "all", "model_pair": "demo-tiny", "dataset": "demo", "beta": beta,
        "alpha": alpha, "method": "lightreasoner", "seed": seed,
        "selection": {"problems": 1000, "traces": 1000, "steps": 32000, "kept_steps": round(32000 * kept),
                      "kept_step_fraction": kept, "kept_steps_per_trace": 32 * kept, "mean_kl_kept": 1.1,
                      "mean_soft_label_entropy": 0.08, "mean_candidates_per_kept_step": 1.2},
        "tuned_tokens": 10000 if beta == 0.0 else 4000 + 1000 * seed,
        "wall_s": {"prepare": 0.5, "sample": 10.0 + seed, "distill": 5.0, "evaluate": 4.5},
        "results": results,
        "comparisons": comparisons,
        "eval": {m: {r["benchmark"]: r["accuracy"] for r in results if r["model"] == m}
                 for m in ("base", "tuned", "amateur")},
        "objective": base["demo"] + gain["demo"],
    }


def write_run(run_dir: Path, cfg: dict, overrides: list[str], summary_json: dict | None) -> Path:
    """One job directory: .hydra/{config,overrides,hydra}.yaml and, if given, summary.json."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"mode": "MULTIRUN", "runtime": {"output_dir": f"{CLUSTER_DIR}/{run_dir.name}"},
                       "job": {"num": int(run_dir.name), "override_dirname": ",".join(overrides)},
                       "overrides": {"task": overrides}}}
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(hydra, sort_keys=False))
    if summary_json is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary_json, indent=2))
    return run_dir


def make_fake_sweep(root: Path) -> Path:
    """Write the fake multirun under ``root``; returns the multirun directory."""
    sweep = root / "multirun" / "2025-01-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"mode": "MULTIRUN", "sweep": {"dir": CLUSTER_DIR, "subdir": "${hydra.job.num}"},
                  "sweeper": {"params": {"selection.beta": "0.0,0.4", "selection.alpha": "0.1,0.2", "seed": "0,1"}}},
        "seed": 0,
    }))
    jobs = [(b, a, s) for b in BETAS for a in ALPHAS for s in SEEDS]
    for job, (beta, alpha, seed) in enumerate(jobs):
        write_run(sweep / str(job), composed_config(beta, alpha, seed, job),
                  [f"selection.beta={beta}", f"selection.alpha={alpha}", f"seed={seed}"], summary(beta, alpha, seed))
    job = len(jobs)
    f = FAILED
    write_run(sweep / str(job), composed_config(f["beta"], f["alpha"], f["seed"], job),
              [f"selection.beta={f['beta']}", f"selection.alpha={f['alpha']}", f"seed={f['seed']}"],
              {"status": "failed", "error": f["error"], "stage": "all", "seed": f["seed"], "selection": None,
               "results": None, "comparisons": None, "tuned_tokens": None, "wall_s": {"prepare": 0.5}})
    u = UNFINISHED
    write_run(sweep / str(job + 1), composed_config(u["beta"], u["alpha"], u["seed"], job + 1),
              [f"selection.beta={u['beta']}", f"selection.alpha={u['alpha']}", f"seed={u['seed']}"], None)
    return sweep


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    """The fake multirun directory (see the module docstring)."""
    return make_fake_sweep(tmp_path)
