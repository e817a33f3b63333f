"""Shared set-up for the benchmarks: the offline Coder pair (or a tiny pair) and GSM8K prompts."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import torch

from lightreasoner.data.benchmarks import dataset_config, load_problems
from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer

MODELS = Path(os.environ.get("LIGHTREASONER_MODELS", Path.home() / ".cache" / "lightreasoner" / "models"))
EXPERT_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
AMATEUR_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# The generation engines the benchmarks compare (``hf`` = transformers at the model's own fp32).
# bf16 pays off only on CPUs with native bf16 (avx512_bf16/AMX) and on GPUs; on an AVX2-only CPU
# it is emulated and slower than fp32, so vLLM is also measured in fp32 there.
ENGINES = {
    "hf": {"_target_": "lightreasoner.generation.hf.HFEngine", "dtype": None},
    "hf_bf16": {"_target_": "lightreasoner.generation.hf.HFEngine", "dtype": "bfloat16"},
    "vllm": {"_target_": "lightreasoner.generation.vllm.VLLMEngine", "dtype": "bfloat16", "max_model_len": 2048},
    "vllm_fp32": {"_target_": "lightreasoner.generation.vllm.VLLMEngine", "dtype": "float32", "max_model_len": 2048},
}


def coder_specs() -> tuple[ModelSpec, ModelSpec]:
    return (
        ModelSpec(str(MODELS), gguf_file=EXPERT_GGUF, dtype="float32", device="auto"),
        ModelSpec(str(MODELS), gguf_file=AMATEUR_GGUF, dtype="float32", device="auto"),
    )


def tiny_pair(root: Path) -> tuple[ModelSpec, ModelSpec]:
    """A small random pair on disk (smoke runs of the benchmark scripts)."""
    from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model, save_pair_member

    tok = build_char_tokenizer()
    e = save_pair_member(build_tiny_model(tok, seed=1, hidden_size=64, num_layers=2), tok, root / "expert")
    a = save_pair_member(build_tiny_model(tok, seed=2, hidden_size=32, num_layers=1), tok, root / "amateur")
    return ModelSpec(str(e), device="cpu"), ModelSpec(str(a), device="cpu")


def load_pair(expert: ModelSpec, amateur: ModelSpec):
    tok = load_tokenizer(expert, "expert")
    return tok, load_model(expert, "expert"), load_model(amateur, "amateur")


def gsm8k_train(n: int):
    return load_problems(dataset_config("gsm8k"), split="train", max_problems=n)


class PeakRSS:
    """Peak resident memory of this process (and, with ``children=True``, its child processes,
    e.g. vLLM's engine core) while the block runs (sampled every 20 ms)."""

    def __init__(self, children: bool = False):
        self.children = children

    def _rss(self) -> int:
        procs = [self.proc] + (self.proc.children(recursive=True) if self.children else [])
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self.proc = psutil.Process()
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
