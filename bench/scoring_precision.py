"""Does the scoring pass need fp32? The same traces scored by both models in fp32 and in bf16.

    python bench/scoring_precision.py --problems 32            # offline Coder pair, GSM8K train
    python bench/scoring_precision.py --tiny --problems 8      # smoke run

The expert's traces are generated once (greedy, 128 new tokens, bf16 generation: only the token
sequences matter here); then both models score every step teacher-forced, once in float32 and
once in bfloat16, and the script compares what selection sees: KL per step, the kept-step set
at beta (Jaccard, and how many steps flip), and the soft labels at steps kept by both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import coder_specs, gsm8k_train, load_pair, tiny_pair  # noqa: E402

from lightreasoner.core import contrast  # noqa: E402
from lightreasoner.generation import GenerationSettings, HFEngine  # noqa: E402
from lightreasoner.data.prompts import SAMPLING_SYSTEM, encode_prompts  # noqa: E402


@torch.no_grad()
def step_logp(model, prompt: list[int], trace: list[int]) -> torch.Tensor:
    """fp32 log-probabilities at every trace step (teacher-forced, one pass)."""
    ids = torch.tensor([prompt + trace[:-1]], device=next(model.parameters()).device)
    logits = model(input_ids=ids, logits_to_keep=len(trace)).logits[0]
    return logits.float().log_softmax(-1).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.4)
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    specs = tiny_pair(Path(tempfile.mkdtemp())) if args.tiny else coder_specs()
    tok, expert, amateur = load_pair(*specs)
    problems = gsm8k_train(args.problems)
    prompts = encode_prompts(tok, [p.question for p in problems], SAMPLING_SYSTEM)
    engine = HFEngine(expert, tok, dtype="bfloat16")
    gens = engine.generate(prompts, GenerationSettings(args.max_new_tokens), args.batch_size, progress=True)
    engine.close()
    kl = {"float32": [], "bfloat16": []}
    labels = {"float32": [], "bfloat16": []}
    seconds = {}
    for dtype in ("float32", "bfloat16"):
        e, a = expert.to(getattr(torch, dtype)), amateur.to(getattr(torch, dtype))
        t0 = time.perf_counter()
        for p, g in zip(prompts, gens):
            if not g.token_ids:
                continue
            le, la = step_logp(e, p, g.token_ids), step_logp(a, p, g.token_ids)
            kl[dtype].append(contrast.kl_shared(le, la))
            ids, lpe, lpa, valid, mx = contrast.top_candidates(le, la, 0.01, 256)
            labels[dtype].append((ids, contrast.soft_label(lpe, lpa, mx, args.alpha, valid)))
        seconds[dtype] = round(time.perf_counter() - t0, 1)
    k32, k16 = torch.cat(kl["float32"]), torch.cat(kl["bfloat16"])
    first = torch.cat([torch.arange(len(x)) >= 1 for x in kl["float32"]])
    keep32, keep16 = (k32 >= args.beta) & first, (k16 >= args.beta) & first
    both = keep32 & keep16
    union = keep32 | keep16
    # soft-label agreement at steps kept by both: total variation between the two labels
    tv = []
    offset = 0
    for (i32, w32), (i16, w16), n in zip(labels["float32"], labels["bfloat16"], [len(x) for x in kl["float32"]]):
        for t in range(n):
            if both[offset + t]:
                d32 = dict(zip(i32[t].tolist(), w32[t].tolist()))
                d16 = dict(zip(i16[t].tolist(), w16[t].tolist()))
                tv.append(0.5 * sum(abs(d32.get(k, 0.0) - d16.get(k, 0.0)) for k in set(d32) | set(d16)))
        offset += n
    res = {
        "problems": len(kl["float32"]), "steps": int(k32.numel()), "beta": args.beta,
        "kept_fp32": int(keep32.sum()), "kept_bf16": int(keep16.sum()),
        "kept_jaccard": round(float(both.sum()) / max(1, int(union.sum())), 4),
        "steps_flipped": int((keep32 ^ keep16).sum()),
        "flipped_fraction_of_kept": round(int((keep32 ^ keep16).sum()) / max(1, int(keep32.sum())), 4),
        "kl_abs_diff_mean": round(float((k32 - k16).abs().mean()), 5),
        "kl_abs_diff_p99": round(float((k32 - k16).abs().quantile(0.99)), 5),
        "soft_label_tv_mean": round(sum(tv) / max(1, len(tv)), 5),
        "soft_label_tv_max": round(max(tv, default=0.0), 5),
        "scoring_s_fp32": seconds["float32"], "scoring_s_bf16": seconds["bfloat16"],
        "scoring_speedup_bf16": round(seconds["float32"] / max(seconds["bfloat16"], 1e-9), 2),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
