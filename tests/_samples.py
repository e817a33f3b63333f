"""Hand-built TraceSamples for the data and distillation tests (no model, no sampling)."""

from __future__ import annotations

import torch

from lightreasoner.data.records import TraceSample


def random_trace_samples(n, seed, vocab, min_len, max_len, max_steps, max_cands, prompt, ids=None, weight_scale=1.0):
    """``n`` traces of random lengths in ``[min_len, max_len]``, each with 1..``max_steps`` kept
    steps after a ``prompt``-token prefix; every kept step has 1..``max_cands`` candidate ids
    drawn from ``range(vocab)`` with soft-label weights ``softmax(weight_scale * N(0, 1))``.
    ``ids``: ``(low, high)`` of the token ids (default ``(1, vocab)``)."""
    low, high = ids or (1, vocab)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        input_ids = torch.randint(low, high, (length,), generator=g)
        k = int(torch.randint(1, max_steps + 1, (1,), generator=g))
        pos = torch.randperm(length - prompt, generator=g)[:k].sort().values + prompt - 1
        tids, tws = [], []
        for _ in range(k):
            c = int(torch.randint(1, max_cands + 1, (1,), generator=g))
            tids.append(torch.randperm(vocab, generator=g)[:c])
            tws.append(torch.softmax(weight_scale * torch.randn(c, generator=g), 0))
        out.append(
            TraceSample(
                problem_id=f"p{i}",
                input_ids=input_ids[: int(pos.max()) + 1].clone(),
                positions=pos,
                steps=pos - prompt + 1,
                target_ids=tids,
                target_w=tws,
                kl=torch.rand(k, generator=g),
            )
        )
    return out
