"""Fine-tune precision: one LoRA forward + backward of the expert in fp32 vs under bf16 autocast
(Lightning's ``trainer.precision=bf16-mixed``: fp32 weights, bf16 matmuls), and with the frozen
weights held in bf16 (the adapter in fp32) for reference.

The micro-batch is shaped like one packed LightReasoner trace of the Coder study (a ~150-token
prompt + 128 generated tokens, loss at 12 kept positions: the study's 11.8 per trace); the
figure is seconds per micro-batch, timed after a warm-up, all arms in one process.

    python bench/train_precision.py                     # offline Coder-1.5B expert, LoRA r8 q/v
    python bench/train_precision.py --tokens 280 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import coder_specs  # noqa: E402

from lightreasoner.training.distill import lora_config  # noqa: E402
from lightreasoner.models.spec import load_model  # noqa: E402


def time_arm(model, ids: torch.Tensor, positions: torch.Tensor, autocast: bool, repeats: int) -> float:
    inner = model.base_model.model

    def step():
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = inner.model(input_ids=ids).last_hidden_state
            logits = inner.lm_head(hidden[0, positions]).float()
        torch.log_softmax(logits, -1)[:, 0].mean().backward()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    from peft import get_peft_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=280, help="sequence length of the micro-batch (one packed trace)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    expert, _ = coder_specs()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (1, args.tokens), generator=gen)
    positions = torch.arange(max(0, args.tokens - 130), args.tokens, 11)  # 12 kept positions in the last 128 tokens
    res = {"tokens": args.tokens, "kept": len(positions)}
    model = get_peft_model(load_model(expert, "expert"), lora_config(None)).train()
    res["fp32_s"] = round(time_arm(model, ids, positions, False, args.repeats), 2)
    res["bf16_autocast_s"] = round(time_arm(model, ids, positions, True, args.repeats), 2)
    del model
    model = get_peft_model(load_model(expert, "expert").to(torch.bfloat16), lora_config(None)).train()  # adapter kept fp32 by peft
    res["bf16_weights_autocast_s"] = round(time_arm(model, ids, positions, True, args.repeats), 2)
    res["autocast_speedup"] = round(res["fp32_s"] / res["bf16_autocast_s"], 2)
    res["bf16_weights_speedup"] = round(res["fp32_s"] / res["bf16_weights_autocast_s"], 2)
    print(json.dumps(res, indent=2))
    print(f"s per micro-batch: fp32 {res['fp32_s']}, bf16 autocast {res['bf16_autocast_s']} ({res['autocast_speedup']}x), "
          f"bf16 weights {res['bf16_weights_autocast_s']} ({res['bf16_weights_speedup']}x)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
