"""ContrastiveSampler vs a straightforward per-prefix computation, on tiny random models."""

import pytest
import torch

from lightreasoner.data.prompts import encode_prompts
from lightreasoner.data.records import SCORED_TRACE_KEYS
from lightreasoner.sampling.sampler import ContrastiveSampler, SamplingSettings, make_batch, question_sha

from _tiny_pair import QUESTIONS, assert_matches_reference, build_pair, reference_step

SETTINGS = dict(max_new_tokens=10, alpha_min=0.1, max_candidates=12, vocab_chunk=3, system_prompt="Please reason step by step.")


@pytest.fixture(scope="module")
def pair():
    return build_pair()


def _batch(tok, questions, system="Please reason step by step."):
    prompts = encode_prompts(tok, questions, system)
    return make_batch([f"toy/train/{i}" for i in range(len(questions))], [question_sha(q) for q in questions], prompts), prompts


def test_batched_sampling_equals_per_prefix(pair):
    tok, expert, amateur = pair
    # a checkpoint config that turns sampling/penalties on must not change greedy traces
    expert.generation_config.do_sample = True
    expert.generation_config.temperature = 5.0
    expert.generation_config.repetition_penalty = 10.0
    try:
        questions = QUESTIONS[:3]
        batch, prompts = _batch(tok, questions)
        assert len({len(p) for p in prompts}) == 3  # unequal lengths -> real left padding
        sampler = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings=SETTINGS)

        calls = {"amateur": [], "generate": 0}
        hook = amateur.register_forward_hook(lambda m, args, kw, out: calls["amateur"].append(tuple(out.logits.shape)), with_kwargs=True)
        orig_generate = expert.generate

        def counting_generate(*a, **k):
            calls["generate"] += 1
            return orig_generate(*a, **k)

        expert.generate = counting_generate
        try:
            recs = sampler.predict_step(batch, 0)
        finally:
            hook.remove()
            del expert.generate
    finally:
        expert.generation_config.do_sample = False
        expert.generation_config.temperature = None
        expert.generation_config.repetition_penalty = None

    # ONE batched generation, ONE amateur pass with logits only at the trace positions
    assert calls["generate"] == 1
    t_max = max(len(r["trace_ids"]) for r in recs)
    assert calls["amateur"] == [(3, t_max, amateur.config.vocab_size)]
    assert len(recs) == 3
    for r, p, q in zip(recs, prompts, questions):
        assert set(r) == set(SCORED_TRACE_KEYS)
        assert r["prompt_ids"].tolist() == p and r["question_sha"] == question_sha(q)
        assert_matches_reference(r, expert, amateur, tok, SETTINGS["alpha_min"], SETTINGS["max_candidates"], SETTINGS["max_new_tokens"])
    # the pair really differs and the candidate filter really filters
    assert float(torch.cat([r["kl"] for r in recs]).max()) > 0.05
    counts = torch.cat([r["cand_offsets"].diff() for r in recs])
    assert counts.min() >= 1 and counts.min() < SETTINGS["max_candidates"]


def test_chunk_size_does_not_change_results(pair):
    tok, expert, amateur = pair
    batch, _ = _batch(tok, QUESTIONS[:2])
    a = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings={**SETTINGS, "vocab_chunk": 1}).predict_step(batch)
    b = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings={**SETTINGS, "vocab_chunk": 64}).predict_step(batch)
    for x, y in zip(a, b):
        assert x["trace_ids"].tolist() == y["trace_ids"].tolist()
        assert x["cand_ids"].tolist() == y["cand_ids"].tolist()
        torch.testing.assert_close(x["kl"], y["kl"], atol=1e-6, rtol=0)


def test_eos_ends_the_trace(pair):
    tok, expert, amateur = pair
    eos_id = tok.eos_token_id
    head = expert.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
    expert.lm_head = biased
    try:
        questions = QUESTIONS[:3]
        batch, prompts = _batch(tok, questions)
        sampler = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings=SETTINGS)
        base = sampler.predict_step(batch)
        assert not any(r["finished"] for r in base)
        # margins (max logit - eos logit) along the unbiased traces; the bias makes exactly the
        # smallest-margin (row, step) pick eos, so that row ends there and the others do not change
        margins = []
        for i, r in enumerate(base):
            tr = r["trace_ids"].tolist()
            for t in range(len(tr)):
                x = torch.tensor([prompts[i] + tr[:t]])
                lg = expert(x).logits[0, -1]
                margins.append((float(lg.max() - lg[eos_id]), i, t))
        margins.sort()
        (m0, row, step), (m1, _, _) = margins[0], margins[1]
        assert m1 - m0 > 1e-3 and step < SETTINGS["max_new_tokens"] - 1
        with torch.no_grad():
            biased.bias[eos_id] = (m0 + m1) / 2
        recs = sampler.predict_step(batch)
        for i, (r, b) in enumerate(zip(recs, base)):
            if i == row:
                assert r["finished"] and len(r["trace_ids"]) == step + 1
                assert int(r["trace_ids"][-1]) == eos_id
                assert r["trace_ids"][:-1].tolist() == b["trace_ids"][:step].tolist()
                assert r["cand_offsets"].shape == (step + 2,)
            else:
                assert not r["finished"] and r["trace_ids"].tolist() == b["trace_ids"].tolist()
            assert_matches_reference(r, expert, amateur, tok, SETTINGS["alpha_min"], SETTINGS["max_candidates"], SETTINGS["max_new_tokens"])
        # the eos step itself is scored: its KL is the per-prefix KL at that step
        r = recs[row]
        ref = reference_step(expert, amateur, prompts[row], r["trace_ids"].tolist(), step, 0.1, 12)
        assert abs(float(r["kl"][step]) - float(ref[1])) < 1e-4
    finally:
        expert.lm_head = head


def test_generation_config_eos_ids_are_used(pair):
    tok, expert, amateur = pair
    old = expert.generation_config.eos_token_id
    batch, _ = _batch(tok, QUESTIONS[:2])
    sampler = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings=SETTINGS)
    base = sampler.predict_step(batch)
    extra = int(base[0]["trace_ids"][3])  # make a token the expert emits at step 3 an eos id
    expert.generation_config.eos_token_id = [old, extra]
    try:
        sampler = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings=SETTINGS)
        recs = sampler.predict_step(batch)
        assert sorted(sampler.engine.eos_token_ids) == sorted({old, extra})
        first = base[0]["trace_ids"].tolist().index(extra)
        assert recs[0]["finished"] and len(recs[0]["trace_ids"]) == first + 1
    finally:
        expert.generation_config.eos_token_id = old


@pytest.mark.parametrize(
    "field,value",
    [("max_new_tokens", 0), ("alpha_min", 0.0), ("alpha_min", 1.5), ("max_candidates", 0), ("vocab_chunk", 0),
     ("temperature", 0.0), ("top_p", 0.0), ("max_new_tokens", 2.5)],
)
def test_settings_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"sampling.{field}"):
        SamplingSettings.from_cfg({field: value})


def test_unknown_setting_is_an_error():
    with pytest.raises(ValueError, match="unknown field"):
        SamplingSettings.from_cfg({"max_new_token": 3})
    # selection keys are accepted and ignored
    s = SamplingSettings.from_cfg({"beta": 0.4, "alpha": 0.2, "first_step": 1, "batch_size": 8, "max_new_tokens": 5})
    assert s.max_new_tokens == 5


def test_mismatched_tokenizers_rejected(pair):
    from lightreasoner.models import tiny

    tok, expert, amateur = pair
    other = tiny.build_char_tokenizer(chars="zyxwvutsrqponmlkjihgfedcba0123456789 ?.")
    sampler = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, amateur_tokenizer=other, settings=SETTINGS)
    with pytest.raises(ValueError, match="disagree"):
        sampler.predict_step(_batch(tok, QUESTIONS[:1])[0])


def test_left_padding_with_absolute_position_models():
    """GPT-2 (learned absolute positions) for both roles: wrong position ids would show here
    (rotary models are shift-invariant, so the Llama pair cannot catch that)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightreasoner.models import tiny

    tok = tiny.build_char_tokenizer()
    models = []
    for seed, extra in ((0, 2), (1, 0)):
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=len(tok) + extra, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        m = GPT2LMHeadModel(cfg).eval()
        with torch.no_grad():
            m.lm_head.weight = torch.nn.Parameter(m.transformer.wte.weight.detach().clone() * 20)
            m.transformer.wpe.weight.mul_(50)  # make positions matter
            if extra:
                m.lm_head.weight[len(tok):] = 0.0
        m.config.tie_word_embeddings = False
        m.generation_config.eos_token_id = tok.eos_token_id
        m.generation_config.pad_token_id = tok.pad_token_id
        models.append(m)
    expert, amateur = models
    batch, prompts = _batch(tok, QUESTIONS[:3])
    recs = ContrastiveSampler(expert_model=expert, amateur_model=amateur, tokenizer=tok, settings=SETTINGS).predict_step(batch)
    for r in recs:
        assert_matches_reference(r, expert, amateur, tok, SETTINGS["alpha_min"], SETTINGS["max_candidates"], SETTINGS["max_new_tokens"])
