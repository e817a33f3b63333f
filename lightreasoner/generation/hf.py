"""The transformers engine: batched, left-padded ``model.generate`` on the loaded model.

Decoding follows :class:`~lightreasoner.generation.base.GenerationSettings` only: a fresh
``GenerationConfig`` (:func:`neutral_generation_config`) replaces the checkpoint's own for the
call, so a checkpoint that turns on sampling or penalties does not change greedy outputs. With
``return_logits`` the raw per-step logits (``output_logits=True``, never the processed scores)
come back too — what contrastive sampling scores the expert with. The one exception is the
published sampling quirk (``GenerationSettings.checkpoint_config``, off by default): the
checkpoint's own config and its processed ``scores``, as the published sampler did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Engine, GeneratedBatch, GenerationSettings


def neutral_generation_config(
    model,
    tokenizer,
    max_new_tokens: int,
    eos_ids: list[int],
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    **extra,
):
    """A fresh ``GenerationConfig``: the checkpoint's bos/pad ids, our decoding settings.

    Every other decoding/processing field keeps transformers' neutral default (no repetition
    penalty, no top-k, no length constraints), so a checkpoint whose own generation config
    turns on sampling or penalties does not change greedy outputs. Use it with
    :class:`using_generation_config`, because ``generate`` fills unset fields from the
    model's own config.
    """
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = getattr(own, "pad_token_id", None)
    if pad is None:
        pad = eos_ids[0]
    return GenerationConfig(
        bos_token_id=getattr(own, "bos_token_id", None),
        pad_token_id=int(pad),
        eos_token_id=list(eos_ids),
        max_new_tokens=int(max_new_tokens),
        min_new_tokens=0,
        do_sample=bool(do_sample),
        temperature=float(temperature) if do_sample and temperature is not None else None,
        top_p=float(top_p) if do_sample and top_p is not None else None,
        num_beams=1,
        use_cache=True,
        **extra,
    )


class using_generation_config:
    """Context manager: ``model.generation_config`` is ``gen_cfg`` inside the block."""

    def __init__(self, model, gen_cfg):
        self.model, self.gen_cfg = model, gen_cfg

    def __enter__(self):
        self.own = self.model.generation_config
        self.model.generation_config = self.gen_cfg
        return self.gen_cfg

    def __exit__(self, *exc):
        self.model.generation_config = self.own


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of unpadded prompts, padded on the left."""
    bsz, plen = len(prompt_ids), max(len(p) for p in prompt_ids)
    input_ids = torch.full((bsz, plen), pad_id, dtype=torch.long)
    attn = torch.zeros((bsz, plen), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        input_ids[i, plen - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        attn[i, plen - len(p) :] = 1
    return input_ids, attn


class HFEngine(Engine):
    """``transformers`` generation, on the model as loaded or at ``dtype``.

    ``dtype`` (``bfloat16``, ``float16``, ``float32``; null: the model's own) generates with a
    copy of the model in that precision (bf16 is 2.3-2.7x fp32 on a CPU with avx512_bf16). Then
    the per-step logits are not the full-precision model's, so :meth:`generate_batch` returns
    none and contrastive sampling scores the traces with its fp32 teacher-forced pass.
    """

    name = "hf"

    @classmethod
    def key_identity(cls, dtype: str | None = None, **_) -> dict | None:
        if dtype is None:
            return None
        import transformers

        return {"engine": cls.name, "dtype": str(dtype), "transformers": transformers.__version__}

    def __init__(self, model, tokenizer, dtype: str | None = None, eos_token_ids: Sequence[int] | None = None) -> None:
        from lightreasoner.models.spec import DTYPES

        if dtype is not None:
            if dtype not in DTYPES:
                raise ValueError(f"generation.dtype: expected one of {sorted(DTYPES)} or null, got {dtype!r}")
            if next(model.parameters()).dtype != DTYPES[dtype]:
                import copy

                model = copy.deepcopy(model).to(DTYPES[dtype])
                self.full_precision_logits = False
        super().__init__(model, tokenizer, eos_token_ids)

    def identity(self) -> dict:
        import transformers

        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        return {"engine": self.name, "version": transformers.__version__, "dtype": dtype}

    supports_checkpoint_config = True

    def generation_config(self, settings: GenerationSettings, return_logits: bool = False):
        if settings.checkpoint_config:
            return self.checkpoint_generation_config(settings, return_logits)
        extra = {"output_logits": True, "return_dict_in_generate": True} if return_logits else {}
        return neutral_generation_config(
            self.model,
            self.tokenizer,
            settings.max_new_tokens,
            self.eos_token_ids,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            top_p=settings.top_p,
            **extra,
        )

    def checkpoint_generation_config(self, settings: GenerationSettings, return_logits: bool = False):
        """The published sampling quirk: the checkpoint's own generation config (sampling,
        top-k/top-p, repetition penalty as the checkpoint ships them) with our length and stop
        ids; with ``return_logits`` the processed ``scores`` (after its warpers) come back."""
        import copy

        from transformers import GenerationConfig

        own = getattr(self.model, "generation_config", None)
        cfg = copy.deepcopy(own) if own is not None else GenerationConfig()
        cfg.max_new_tokens = int(settings.max_new_tokens)
        cfg.max_length = None
        cfg.eos_token_id = list(self.eos_token_ids)
        cfg.pad_token_id = int(self.pad_token_id)
        if return_logits:
            cfg.output_scores, cfg.return_dict_in_generate = True, True
        return cfg

    @torch.inference_mode()
    def generate_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        return_logits: bool = False,
        seed: int | None = None,
    ) -> GeneratedBatch:
        self.check_prompts(prompt_ids)
        return_logits = return_logits and self.full_precision_logits
        gen_cfg = self.generation_config(settings, return_logits)
        device = next(self.model.parameters()).device
        input_ids, attn = left_pad(prompt_ids, int(gen_cfg.pad_token_id))
        input_ids, attn = input_ids.to(device), attn.to(device)
        if (settings.do_sample or gen_cfg.do_sample) and seed is not None:
            torch.manual_seed(seed)
        # generate() fills every unset field from model.generation_config (e.g. a checkpoint's
        # repetition_penalty or temperature); swap in our config for the call so nothing leaks in.
        with using_generation_config(self.model, gen_cfg):
            out = self.model.generate(input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg)
        if return_logits:
            steps = out.scores if settings.checkpoint_config else out.logits
            return GeneratedBatch(tokens=out.sequences[:, input_ids.shape[1] :], logits=list(steps))
        return GeneratedBatch(tokens=out[:, input_ids.shape[1] :])
