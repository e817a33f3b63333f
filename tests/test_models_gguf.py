"""Real GGUF checkpoint (slow; needs ../shared/tools/fetch-offline-models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

MODELS = Path(os.environ.get("LIGHTREASONER_MODELS", Path.home() / ".cache" / "lightreasoner" / "models"))
GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODELS / GGUF).is_file(), reason=f"{GGUF} not fetched (run ../shared/tools/fetch-offline-models)"),
]


def test_dequantized_plain_copy_has_the_gguf_models_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer

    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path))
    spec = ModelSpec(str(MODELS), gguf_file=GGUF, device="cpu")
    tok = load_tokenizer(spec)
    plain = load_model(spec)
    assert not getattr(plain.config, "gguf_file", None)
    plain.save_pretrained(tmp_path / "saved")  # a GGUF-flagged model would refuse this
    ref = AutoModelForCausalLM.from_pretrained(str(MODELS), gguf_file=GGUF, dtype=torch.float32).eval()
    ids = tok(["Natalia sold clips to 48 of her friends."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
