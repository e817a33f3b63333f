"""The vLLM engine on a real checkpoint (slow: vLLM's start-up is minutes on a CPU; needs the
optional vLLM install, see the README, and ../shared/tools/fetch-offline-models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS = Path(os.environ.get("LIGHTREASONER_MODELS", Path.home() / ".cache" / "lightreasoner" / "models"))
GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODELS / GGUF).is_file(), reason=f"{GGUF} not fetched (run ../shared/tools/fetch-offline-models)"),
]


def test_vllm_gives_the_hf_record_format_and_mostly_the_same_greedy_tokens():
    pytest.importorskip("vllm", reason="vLLM not installed (optional extra)")
    from lightreasoner.generation import GenerationSettings, HFEngine, build_engine
    from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer
    from lightreasoner.data.prompts import EVAL_SYSTEM, encode_prompts

    spec = ModelSpec(str(MODELS), gguf_file=GGUF, dtype="float32", device="cpu")
    tok = load_tokenizer(spec)
    prompts = encode_prompts(tok, ["What is 2+3?", "Tom has 3 apples and buys 4 more. How many apples?"], EVAL_SYSTEM)
    settings = GenerationSettings(48)
    vllm_engine = build_engine({"_target_": "lightreasoner.generation.vllm.VLLMEngine", "max_model_len": 1024}, None, tok, spec=spec)
    got = vllm_engine.generate(prompts, settings, batch_size=2, progress=False)
    vllm_engine.close()
    ref = HFEngine(load_model(spec), tok).generate(prompts, settings, batch_size=2, progress=False)
    for g, r in zip(got, ref):
        assert set(g.to_dict()) == set(r.to_dict())
        assert g.num_tokens == len(g.token_ids) and (g.cut_off or g.token_ids[-1] in vllm_engine.eos_token_ids)
        # bf16 vs fp32: the first tokens agree (greedy), the texts may drift later
        assert g.token_ids[:8] == r.token_ids[:8]
