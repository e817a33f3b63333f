"""Shared helpers for the sampling/cache tests: a tiny expert/amateur pair and a per-prefix reference."""

from __future__ import annotations

import torch

from lightreasoner.core import contrast

from lightreasoner.models import tiny
from lightreasoner.models.spec import eos_token_ids
from lightreasoner.data.records import Problem

# tiny models: one intra-op thread is ~100x faster than two on a shared, loaded 2-core box
torch.set_num_threads(1)

QUESTIONS = [
    "What is 2+2?",
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "x?",
    "A train goes 60 km in 1 hour. How far in 3 hours?",
    "Sum 1 to 4.",
    "What is 7 times 6?",
    "Half of 18?",
]


def build_pair(expert_seed: int = 0, amateur_seed: int = 1, sharpen: float = 20.0):
    """Tokenizer, expert (logit width vocab+4, the 4 extra rows zero) and amateur (width vocab+1)."""
    tok = tiny.build_char_tokenizer()
    expert = tiny.build_tiny_model(tok, seed=expert_seed, extra_vocab=4)
    amateur = tiny.build_tiny_model(tok, seed=amateur_seed, extra_vocab=1)
    with torch.no_grad():
        expert.lm_head.weight.mul_(sharpen)
        expert.lm_head.weight[len(tok):] = 0.0  # never generated, but part of the expert's softmax
        amateur.lm_head.weight.mul_(sharpen)
    return tok, expert, amateur


def problems(n: int = len(QUESTIONS)) -> list[Problem]:
    return [Problem(id=f"toy/train/{i}", question=QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})"),
                    answer="0", answer_type="numeric") for i in range(n)]


@torch.no_grad()
def reference_step(expert, amateur, prompt_ids, trace_ids, t, alpha_min, max_candidates):
    """Unpadded forward of each model on prompt + y_<t; last logits; the same per-step quantities."""
    x = torch.tensor([list(prompt_ids) + list(trace_ids[:t])])
    le = expert(x).logits[0, -1].float().log_softmax(-1)
    la = amateur(x).logits[0, -1].float().log_softmax(-1)
    kl = contrast.kl_shared(le, la)
    ids, lpe, lpa, valid, mx = contrast.top_candidates(le, la, alpha_min, max_candidates)
    return le, kl, ids, lpe, lpa, valid, mx


def assert_matches_reference(rec, expert, amateur, tok, alpha_min, max_candidates, max_new_tokens):
    """A scored trace equals the per-prefix computation step for step."""
    eos = set(eos_token_ids(tok, expert))
    prompt = rec["prompt_ids"].tolist()
    trace = rec["trace_ids"].tolist()
    T = len(trace)
    assert rec["kl"].shape == (T,) and rec["max_logp_e"].shape == (T,) and rec["cand_offsets"].shape == (T + 1,)
    assert rec["kl"].dtype == torch.float32 and rec["cand_ids"].dtype == torch.int32
    # the trace stops at its first eos id (included), else at max_new_tokens
    first_eos = next((i for i, y in enumerate(trace) if y in eos), None)
    assert first_eos in (None, T - 1)
    assert rec["finished"] == (first_eos is not None)
    if not rec["finished"]:
        assert T == max_new_tokens
    off = rec["cand_offsets"]
    for t in range(T):
        le, kl, ids, lpe, lpa, valid, mx = reference_step(expert, amateur, prompt, trace, t, alpha_min, max_candidates)
        top2 = le.topk(2).values
        if float(top2[0] - top2[1]) > 1e-3:  # greedy: the generated token is the expert's mode
            assert trace[t] == int(le.argmax()), f"step {t}"
        assert abs(float(rec["kl"][t]) - float(kl)) < 1e-4, f"step {t}: kl {float(rec['kl'][t])} vs {float(kl)}"
        assert abs(float(rec["max_logp_e"][t]) - float(mx)) < 1e-4
        a, b = int(off[t]), int(off[t + 1])
        n_ref = int(valid.sum())
        got_ids = rec["cand_ids"][a:b].long()
        got_lpe, got_lpa = rec["cand_logp_e"][a:b], rec["cand_logp_a"][a:b]
        ref_ids, ref_lpe, ref_lpa = ids[:n_ref], lpe[:n_ref], lpa[:n_ref]
        # where well separated (ordering and the alpha_min boundary), identical candidate ids
        gaps = (lpe[:-1] - lpe[1:]).abs()
        thr = float(mx) + torch.log(torch.tensor(alpha_min)).item()
        separated = bool((gaps[: max(n_ref, 1)] > 1e-4).all()) and bool(((lpe - thr).abs() > 1e-4).all())
        if separated:
            assert got_ids.tolist() == ref_ids.tolist(), f"step {t}"
            torch.testing.assert_close(got_lpe, ref_lpe, atol=1e-4, rtol=0)
            torch.testing.assert_close(got_lpa, ref_lpa, atol=1e-4, rtol=0)
        else:
            assert abs((b - a) - n_ref) <= 1
        assert (b - a) <= max_candidates
