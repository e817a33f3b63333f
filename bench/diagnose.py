"""The pair diagnostic's teacher forcing against its floor: both models' bare forward passes.

``python -m lightreasoner.run.diagnose`` scores N reference solutions with the sampler's own
scoring (one forward pass per reference per model, batched, then the candidates, KL and labels
of every position). Its cost floor is the two models' bare forward passes over the same token
batches, with next-token logits at the reference's positions only (``logits_to_keep``). This script times both, side by side in one process on the same loaded models,
alternating the order each repeat, and prints the ratio (diagnostic / floor)::

    python bench/diagnose.py                       # the demo pair (shipped), 100 references
    python bench/diagnose.py --pair coder --n 8    # the offline Coder pair (GGUF files), 8 references

Pairs with one tokenizer only (the floor runs the amateur on the expert's ids).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = {
    "demo": ["experiment=demo", "logger=none"],
    "coder": ["experiment=coder_cpu", "logger=none", "model_pair.expert.device=cpu", "model_pair.amateur.device=cpu"],
}


def compose(overrides: list[str]):
    from lightreasoner.run.cli import Composer
    from lightreasoner.run.validation import validate

    composer = Composer()
    try:
        cfg = composer.compose(overrides)
    finally:
        composer.close()
    validate(cfg)
    return cfg


def floor_batches(sampler, problems, references, batch_size: int, system_prompt):
    """The token batches the diagnostic scores (prompt + reference + end of sequence), left-padded,
    each with the number of final positions whose next-token logits it scores (the reference's)."""
    import torch

    from lightreasoner.data.prompts import encode_prompts

    from lightreasoner.run.diagnose import reference_ids

    prompts = encode_prompts(sampler.tokenizer, [p.question for p in problems], system_prompt)
    refs = reference_ids(sampler, references)
    eos = refs[0][-1]  # every reference ends in the end-of-sequence id: the left padding
    rows = [p + r for p, r in zip(prompts, refs)]
    batches = []
    for a in range(0, len(rows), batch_size):
        chunk = rows[a : a + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([[eos] * (width - len(r)) + r for r in chunk], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], dtype=torch.long)
        batches.append((ids, mask, max(len(r) for r in refs[a : a + batch_size]) + 1))
    return batches


def bare_forward(sampler, batches) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids, mask, keep in batches:
            for model in (sampler.expert_model, sampler.amateur_model):
                device = next(model.parameters()).device
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep, use_cache=False)
                out.logits.float().sum().item()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=sorted(PAIRS), default="demo")
    ap.add_argument("--n", type=int, default=100, help="references (the first N training problems)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="more Hydra overrides of the pair's config")
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.repeat < 1:
        print("error: --n, --batch-size and --repeat: expected positive integers", file=sys.stderr)
        return 2

    import torch

    from lightreasoner.run.diagnose import cpu_model, forced_sampler, score_references, training_references
    from lightreasoner.run.main import prepare
    from lightreasoner.run.validation import stage_threads

    cfg = compose(PAIRS[args.pair] + list(args.overrides))
    if str(cfg.model_pair.get("alignment", "shared")) != "shared":
        print("error: model_pair.alignment: the floor needs one shared tokenizer", file=sys.stderr)
        return 2
    threads = stage_threads(cfg, "sample")
    if threads:
        torch.set_num_threads(threads)
    prepare(cfg)
    problems, references = training_references(cfg.dataset, args.n, int(cfg.seed))
    sampler, sampling, _, _ = forced_sampler(cfg)
    batches = floor_batches(sampler, problems, references, args.batch_size, sampling.system_prompt)
    tokens = sum(int(m.sum()) for _, m, _ in batches)

    diag, floor = [], []
    for i in range(args.repeat):
        order = ("diagnose", "floor") if i % 2 == 0 else ("floor", "diagnose")
        for what in order:
            if what == "floor":
                floor.append(bare_forward(sampler, batches))
            else:
                t0 = time.perf_counter()
                score_references(sampler, problems, references, args.batch_size, sampling.system_prompt)
                diag.append(time.perf_counter() - t0)
    d, f = statistics.median(diag), statistics.median(floor)
    print(f"pair {cfg.model_pair.name}: {len(problems)} references, {tokens} tokens (prompts included), "
          f"batch {args.batch_size}, {torch.get_num_threads()} torch threads, {cpu_model()}")
    print(f"diagnostic teacher forcing: median {d:.2f} s (runs {', '.join(f'{x:.2f}' for x in diag)})")
    print(f"floor (bare forward passes, both models): median {f:.2f} s (runs {', '.join(f'{x:.2f}' for x in floor)})")
    print(f"ratio diagnostic / floor: {d / f:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
