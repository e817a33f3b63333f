"""Contrastive sampling: this sampler vs the published code's cost structure, side by side.

Published structure (per problem): batch-1 greedy generation by the expert (its scores kept),
then one amateur forward pass per prefix (prompt + y_<t) for every step t. This sampler:
batched generation (raw logits kept) + ONE teacher-forced amateur pass per batch + chunked
per-step scoring. Both arms compute the same quantities (KL, candidates) on the same models
and problems; the slow arm may use fewer problems.

    python bench/sampling.py                         # offline Coder pair, 32 problems, batch 16
    python bench/sampling.py --problems 16 --slow-problems 1 --max-new-tokens 128
    python bench/sampling.py --tiny                  # smoke run on tiny random models
    python bench/sampling.py --problems 16 --slow-problems 0 --engines hf_bf16,vllm   # generation engines, scoring fp32
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
from common import ENGINES, PeakRSS, coder_specs, gsm8k_train, load_pair, sync, tiny_pair  # noqa: E402

from lightreasoner.core import contrast  # noqa: E402
from lightreasoner.generation import GenerationSettings, HFEngine  # noqa: E402
from lightreasoner.data.prompts import SAMPLING_SYSTEM, encode_prompts  # noqa: E402
from lightreasoner.sampling.sampler import ContrastiveSampler, SamplingSettings, make_batch, question_sha  # noqa: E402


@torch.no_grad()
def published_arm(tok, expert, amateur, prompt_ids, max_new_tokens, alpha_min=0.01, max_candidates=256):
    """Batch-1 generation, then every prefix re-encoded by the amateur. Returns (seconds, gen seconds, steps)."""
    engine = HFEngine(expert, tok)
    eos = engine.eos_token_ids
    dev = next(expert.parameters()).device
    t0 = time.perf_counter()
    gen_s, steps = 0.0, 0
    for p in prompt_ids:
        g0 = time.perf_counter()
        out = engine.generate_batch([p], GenerationSettings(max_new_tokens), return_logits=True)
        sync()
        gen_s += time.perf_counter() - g0
        trace = out.tokens[0]
        sequence = torch.cat([torch.tensor(p, device=dev), trace.to(dev)]).unsqueeze(0)
        for t in range(trace.numel()):
            prefix = sequence[:, : len(p) + t]
            la = amateur(input_ids=prefix).logits[:, -1].float().log_softmax(-1)
            le = out.logits[t].float().log_softmax(-1)
            contrast.kl_shared(le, la)
            contrast.top_candidates(le, la, alpha_min, max_candidates)
            steps += 1
            if int(trace[t]) in eos:
                break
    sync()
    return time.perf_counter() - t0, gen_s, steps


def fast_arm(tok, expert, amateur, problems, prompt_ids, batch_size, max_new_tokens, generation=None, spec=None):
    """This sampler, batch by batch; generation time measured inside the same calls.
    Returns (seconds, generation seconds, steps, peaks, engine start-up seconds)."""
    settings = SamplingSettings(max_new_tokens=max_new_tokens, system_prompt=SAMPLING_SYSTEM)
    t_start = time.perf_counter()
    sampler = ContrastiveSampler(
        spec, None, settings=settings, expert_model=expert, amateur_model=amateur, tokenizer=tok, generation=generation
    ).setup_models()
    startup = time.perf_counter() - t_start
    gen_s = [0.0]
    orig = sampler.engine.generate_batch

    def timed_generate(*a, **k):
        g0 = time.perf_counter()
        r = orig(*a, **k)
        sync()
        gen_s[0] += time.perf_counter() - g0
        return r

    sampler.engine.generate_batch = timed_generate
    peaks, steps = [], 0
    t0 = time.perf_counter()
    try:
        for start in range(0, len(problems), batch_size):
            chunk = list(range(start, min(start + batch_size, len(problems))))
            batch = make_batch([problems[i].id for i in chunk], [question_sha(problems[i].question) for i in chunk], [prompt_ids[i] for i in chunk])
            with PeakRSS() as mem:
                recs = sampler.score_batch(batch)
            peaks.append(round(mem.gib, 2))
            steps += sum(int(r["trace_ids"].numel()) for r in recs)
        sync()
    finally:
        sampler.engine.generate_batch = orig
    return time.perf_counter() - t0, gen_s[0], steps, peaks, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=32, help="problems for this sampler")
    ap.add_argument("--slow-problems", type=int, default=1, help="problems for the published-structure arm")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="tiny random models instead of the Coder pair")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--engines", default="", help="also time the sampler with these generation engines (e.g. hf_bf16,vllm) "
                    "against its transformers-fp32 generation, side by side; scoring stays fp32")
    args = ap.parse_args()

    specs = tiny_pair(Path(tempfile.mkdtemp())) if args.tiny else coder_specs()
    tok, expert, amateur = load_pair(*specs)
    problems = gsm8k_train(max(args.problems, args.slow_problems))
    prompt_ids = encode_prompts(tok, [p.question for p in problems], SAMPLING_SYSTEM)
    print(f"device={next(expert.parameters()).device} threads={torch.get_num_threads()} expert={specs[0].display_name()}")

    # warm-up (first-call allocations) on one short problem
    fast_arm(tok, expert, amateur, problems[:1], prompt_ids[:1], 1, 4)
    if "vllm" in args.engines and not args.tiny:
        print("vllm: builds its engine once per arm; its start-up is reported, not counted per problem")

    fast_s, fast_gen, fast_steps, peaks, _ = fast_arm(
        tok, expert, amateur, problems[: args.problems], prompt_ids[: args.problems], args.batch_size, args.max_new_tokens
    )
    engines = {}
    for name in [e.strip() for e in args.engines.split(",") if e.strip() and e.strip() != "hf"]:
        e_s, e_gen, e_steps, e_peaks, e_start = fast_arm(
            tok, expert, amateur, problems[: args.problems], prompt_ids[: args.problems], args.batch_size, args.max_new_tokens,
            generation=ENGINES[name], spec=specs[0],
        )
        engines[name] = {"per_problem_s": round(e_s / args.problems, 2), "generation_s": round(e_gen, 1), "startup_s": round(e_start, 1),
                         "steps": e_steps, "speedup_vs_hf_fp32_sampler": round(fast_s / e_s, 2), "peak_rss_gib_per_batch": e_peaks}
        print(f"sampler with {name}: {engines[name]['per_problem_s']} s/problem vs {fast_s / args.problems:.2f} with hf fp32 "
              f"= {engines[name]['speedup_vs_hf_fp32_sampler']}x (engine start-up {e_start:.0f} s, not included)", flush=True)
    if args.slow_problems < 1:
        res = {"this_sampler_per_problem_s": round(fast_s / args.problems, 2), "this_sampler_generation_s": round(fast_gen, 1), "engines": engines}
        print(json.dumps(res, indent=2))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return
    slow_s, slow_gen, slow_steps = published_arm(tok, expert, amateur, prompt_ids[: args.slow_problems], args.max_new_tokens)
    slow_pps = args.slow_problems / slow_s
    fast_pps = args.problems / fast_s
    res = {
        "published_structure": {"problems": args.slow_problems, "seconds": round(slow_s, 1), "generation_s": round(slow_gen, 1),
                                "per_problem_s": round(slow_s / args.slow_problems, 2), "problems_per_s": round(slow_pps, 4), "steps": slow_steps},
        "this_sampler": {"problems": args.problems, "batch_size": args.batch_size, "seconds": round(fast_s, 1),
                         "generation_s": round(fast_gen, 1), "per_problem_s": round(fast_s / args.problems, 2),
                         "problems_per_s": round(fast_pps, 4), "steps": fast_steps,
                         "beyond_generation_fraction": round((fast_s - fast_gen) / fast_gen, 3),
                         "peak_rss_gib_per_batch": peaks},
        "speedup": round(fast_pps / slow_pps, 2),
        "max_new_tokens": args.max_new_tokens,
        "engines": engines,
    }
    print(json.dumps(res, indent=2))
    print(f"speedup {res['speedup']}x  ({fast_pps:.4f} vs {slow_pps:.4f} problems/s); "
          f"work beyond batched generation = {100 * res['this_sampler']['beyond_generation_fraction']:.1f}% of generation time; "
          f"peak RSS per batch {peaks} GiB")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
