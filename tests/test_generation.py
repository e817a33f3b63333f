"""The generation interface (lightreasoner.generation) on tiny random models: batching, end of
sequence, the checkpoint's own generation config never leaking in, raw logits for sampling."""

from __future__ import annotations

import pytest
import torch

from lightreasoner.generation import GenerationSettings, HFEngine, build_engine
from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny_dirs(tiny_pair_dirs):
    return {"base": tiny_pair_dirs["expert"]}


def test_batched_generation_equals_one_at_a_time(tiny_dirs):
    spec = ModelSpec(name_or_path=tiny_dirs["base"])
    model, tok = load_model(spec), load_tokenizer(spec)
    texts = ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "Hi", "A much longer prompt, with more characters in it."]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine, settings = HFEngine(model, tok), GenerationSettings(max_new_tokens=7)
    batched = [g.to_dict() for g in engine.generate(prompts, settings, batch_size=3, progress=False)]
    single = [engine.generate([p], settings, batch_size=1, progress=False)[0].to_dict() for p in prompts]
    assert [r["token_ids"] for r in batched] == [r["token_ids"] for r in single]
    assert all(r["cut_off"] and r["num_tokens"] == 7 for r in batched)  # random model: no eos in 7 tokens
    # an id generated at step 2 treated as end-of-sequence: cut there, not cut off, eos counted, not decoded
    stop = single[0]["token_ids"][2]
    first = single[0]["token_ids"].index(stop)
    res = HFEngine(model, tok, eos_token_ids=[stop]).generate(prompts[:1], settings, batch_size=1, progress=False)[0].to_dict()
    assert res["token_ids"] == single[0]["token_ids"][: first + 1]
    assert not res["cut_off"] and res["num_tokens"] == first + 1
    assert res["text"] == tok.decode(single[0]["token_ids"][:first], skip_special_tokens=True)


def test_checkpoint_generation_config_does_not_leak_into_greedy_generation(tiny_pair_dirs):
    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    tok, model = load_tokenizer(spec), load_model(spec)
    texts = ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\nx<|im_end|>\n"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    generate = lambda: HFEngine(model, tok).generate(prompts, GenerationSettings(12), 2, progress=False)  # noqa: E731
    clean = [g.token_ids for g in generate()]
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.do_sample = True
    model.generation_config.temperature = 5.0
    leaked = [g.token_ids for g in generate()]
    assert leaked == clean
    assert model.generation_config.repetition_penalty == 50.0  # restored after the call


def test_logits_are_the_raw_per_step_logits_and_config_builds_the_engine(tiny_pair_dirs):
    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    tok, model = load_tokenizer(spec), load_model(spec)
    engine = build_engine({"_target_": "lightreasoner.generation.hf.HFEngine"}, model, tok)
    assert isinstance(engine, HFEngine) and engine.identity()["engine"] == "hf"
    prompt = tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    out = engine.generate_batch([prompt], GenerationSettings(4), return_logits=True)
    assert out.logits is not None and len(out.logits) == out.tokens.shape[1]
    ids = torch.tensor([prompt + out.tokens[0, :-1].tolist()])
    with torch.no_grad():
        forced = model(input_ids=ids).logits[0, len(prompt) - 1 :]
    assert torch.allclose(torch.stack(out.logits, 1)[0], forced, atol=1e-4)
    assert out.tokens[0].tolist() == forced.argmax(-1).tolist()  # greedy = argmax of the raw logits
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(0)
