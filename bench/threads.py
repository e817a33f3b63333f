"""The cold demo on a quiet machine and with one core kept busy, by thread setting, side by side.

    python bench/threads.py                                  # quiet/auto, busy/auto, busy/2 threads
    python bench/threads.py --runs busy:auto,busy:2 --expert-steps 150 --timeout 600

Each run is ``python train.py`` (the offline demo) with a fresh cache (so the demo pair is trained:
the cold demo a new user meets), ``threads=<setting>``, stdout to a log. ``busy`` keeps one core
spinning in another process for the run's whole length (one busy-loop process, as any other job
on a shared machine). Prints each run's wall time and the demo expert's training rate (it/s from
the pair build's own timing), and the ratios against quiet/auto measured in the same sitting. A
run that passes ``--timeout`` is stopped and reported as such (with how far its expert got).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def spin() -> subprocess.Popen:
    """One process keeping one core at 100% for as long as this benchmark process lives (it
    checks its parent on every turn, so a killed benchmark leaves no spinner behind)."""
    return subprocess.Popen([sys.executable, "-c", "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"])


def run_demo(threads: str, busy: bool, expert_steps: int | None, timeout: float) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="lr-bench-threads-"))
    out = Path(tempfile.mkdtemp(prefix="lr-bench-threads-out-"))
    args = [sys.executable, str(REPO / "train.py"), f"paths.cache_dir={cache}", f"threads={threads}", "logger=none",
            f"hydra.run.dir={out}", "demo.progress=false"]
    if expert_steps:
        args.append(f"demo.expert.train_steps={expert_steps}")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LIGHTREASONER_THREADS")}
    spinner = spin() if busy else None
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=out)
        wall, status = time.perf_counter() - t0, "finished" if proc.returncode == 0 else f"failed ({proc.returncode})"
    except subprocess.TimeoutExpired:
        wall, status = time.perf_counter() - t0, f"stopped at {timeout:.0f} s"
    finally:
        if spinner is not None:
            spinner.kill()
    manifest = next(cache.glob("demo/*/manifest.json"), None)
    expert = {}
    if manifest is not None:
        expert = (json.loads(manifest.read_text()).get("members") or {}).get("expert") or {}
    summary = out / "summary.json"
    wall_s = json.loads(summary.read_text()).get("wall_s") if summary.is_file() else None
    return {"threads": threads, "busy": busy, "status": status, "wall_s": round(wall, 1), "stages": wall_s,
            "expert_train_s": expert.get("seconds"), "expert_steps": expert.get("steps")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="quiet:auto,busy:auto,busy:2", help="comma-separated load:threads")
    ap.add_argument("--expert-steps", type=int, default=None, help="demo.expert.train_steps (default: the demo's own)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for spec in args.runs.split(","):
        load, _, threads = spec.partition(":")
        r = run_demo(threads or "auto", load == "busy", args.expert_steps, args.timeout)
        rows.append(r)
        print(json.dumps(r), flush=True)
    ref = next((r for r in rows if not r["busy"] and r["threads"] == "auto" and r["status"] == "finished"), None)
    print("\n| load | threads | status | wall s | x quiet/auto | expert train s | expert it/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['wall_s'] / ref['wall_s']:.2f}" if ref and r["status"] == "finished" else "-"
        rate = f"{r['expert_steps'] / r['expert_train_s']:.2f}" if r.get("expert_train_s") else "-"
        print(f"| {'busy (1 core spinning)' if r['busy'] else 'quiet'} | {r['threads']} | {r['status']} | {r['wall_s']} | {ratio} | "
              f"{r.get('expert_train_s') or '-'} | {rate} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
