"""LoRA distillation: packed traces vs one kept step per example (the published layout).

Both arms train the same expert + LoRA (published r8/alpha16 on q_proj, v_proj) on the same
selected samples (from the trace cache: sampled first if missing), with the same kept-step
budget per micro-batch; the figure is kept steps per second of forward+backward.

    python bench/distill.py                          # offline Coder expert, 16 problems, beta 0.4
    python bench/distill.py --problems 24 --micro-batches 3
    python bench/distill.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, coder_specs, gsm8k_train, sync, tiny_pair  # noqa: E402

from lightreasoner.data.benchmarks import dataset_config, dataset_identity  # noqa: E402
from lightreasoner.training.datamodule import DistillDataModule  # noqa: E402
from lightreasoner.training.distill import DistillModule  # noqa: E402
from lightreasoner.models.spec import load_tokenizer  # noqa: E402
from lightreasoner.selection.select import select  # noqa: E402
from lightreasoner.sampling.sampler import run_sampling  # noqa: E402


def time_arm(module: DistillModule, dm: DistillDataModule, micro_batches: int) -> dict:
    batches = dm.epoch_batches(0)[:micro_batches]
    module.model.train()
    steps, tokens = 0, 0
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for b in batches:
            out = module.compute_loss(b)
            out["loss"].backward()
            steps += int(b["num_steps"])
            tokens += int(b["attention_mask"].sum())
        sync()
        secs = time.perf_counter() - t0
    module.model.zero_grad(set_to_none=True)
    return {"micro_batches": len(batches), "kept_steps": steps, "tokens": tokens, "seconds": round(secs, 2),
            "kept_steps_per_s": round(steps / secs, 3), "peak_rss_gib": round(mem.gib, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.4)
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--steps-per-batch", type=int, default=8, help="kept steps per micro-batch (published 8)")
    ap.add_argument("--micro-batches", type=int, default=2, help="micro-batches timed per arm")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cache_dir = Path(os.environ.get("LIGHTREASONER_CACHE", Path.home() / ".cache" / "lightreasoner"))
    expert, amateur = tiny_pair(Path(tempfile.mkdtemp())) if args.tiny else coder_specs()
    problems = gsm8k_train(args.problems)
    cache = run_sampling(expert, amateur, problems, dataset_identity(dataset_config("gsm8k"), "train"),
                         {"max_new_tokens": 128, "batch_size": 16}, cache_dir)
    records = cache.read([p.id for p in problems])
    samples = select(records, beta=args.beta, alpha=args.alpha, alpha_min=cache.alpha_min)
    if not samples:
        raise SystemExit(f"no kept steps at beta={args.beta}")
    tok = load_tokenizer(expert)
    module = DistillModule(expert=expert, lora={"dropout": 0.0})
    kept = sum(s.num_steps for s in samples)
    print(f"{len(samples)} traces, {kept} kept steps ({kept / len(samples):.1f} per trace) at beta={args.beta}")

    res = {}
    for packing in (True, False):
        dm = DistillDataModule(samples, steps_per_batch=args.steps_per_batch, accumulate_grad_batches=1,
                               packing=packing, pad_token_id=int(tok.pad_token_id))
        time_arm(module, dm, 1) if packing else None  # warm-up once
        res["packed" if packing else "one_step_per_example"] = time_arm(module, dm, args.micro_batches)
    res["speedup"] = round(res["packed"]["kept_steps_per_s"] / res["one_step_per_example"]["kept_steps_per_s"], 2)
    print(json.dumps(res, indent=2))
    print(f"packed {res['packed']['kept_steps_per_s']} vs one-step {res['one_step_per_example']['kept_steps_per_s']} "
          f"kept steps/s: {res['speedup']}x")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
