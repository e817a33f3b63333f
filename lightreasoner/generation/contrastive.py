"""Contrastive decoding: the inference-time use of the expert/amateur pair (no training).

At every step the next token is ``argmax_{v in V_t} log pE(v) - log pA(v)`` over the plausible
set ``V_t = {v : pE(v) >= alpha * max pE}`` (:func:`lightreasoner.core.contrast.contrastive_choice`).
Both models run batched and left-padded with their key/value caches, one token at a time; a
row that has produced an end-of-sequence id is padded from then on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightreasoner.core import contrast

from .base import Engine, GeneratedBatch, GenerationSettings
from .hf import left_pad


class ContrastiveDecodingEngine(Engine):
    """Greedy contrastive decoding with ``model`` (the expert) and ``amateur``."""

    name = "contrastive_decoding"

    def __init__(self, model, tokenizer, amateur, alpha: float = 0.2, eos_token_ids: Sequence[int] | None = None) -> None:
        super().__init__(model, tokenizer, eos_token_ids)
        if not 0 < float(alpha) <= 1:
            raise ValueError(f"method.alpha: expected 0 < alpha <= 1 for contrastive decoding, got {alpha!r}")
        self.amateur = amateur
        self.alpha = float(alpha)

    def identity(self) -> dict:
        return {"engine": self.name, "alpha": self.alpha}

    @staticmethod
    def _step(model, ids, mask, pos, cache):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        return out.logits[:, -1].float().log_softmax(-1), out.past_key_values

    @torch.inference_mode()
    def generate_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        return_logits: bool = False,
        seed: int | None = None,
    ) -> GeneratedBatch:
        if settings.do_sample:
            raise ValueError("contrastive decoding is greedy: do_sample must be false")
        self.check_prompts(prompt_ids)
        dev_e = next(self.model.parameters()).device
        dev_a = next(self.amateur.parameters()).device
        pad = self.pad_token_id
        ids, mask = left_pad(prompt_ids, pad)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        ids, mask, pos = ids.to(dev_e), mask.to(dev_e), pos.to(dev_e)
        eos = torch.tensor(self.eos_token_ids, device=dev_e)
        done = torch.zeros(len(prompt_ids), dtype=torch.bool, device=dev_e)
        le, cache_e = self._step(self.model, ids.to(dev_e), mask.to(dev_e), pos.to(dev_e), None)
        la, cache_a = self._step(self.amateur, ids.to(dev_a), mask.to(dev_a), pos.to(dev_a), None)
        out = []
        for _ in range(settings.max_new_tokens):
            nxt = contrast.contrastive_choice(le, la.to(dev_e), self.alpha)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            out.append(nxt)
            done |= torch.isin(nxt, eos)
            if bool(done.all()):  # one host sync per step, as transformers' own generate
                break
            mask = torch.cat([mask, torch.ones(len(prompt_ids), 1, dtype=mask.dtype, device=dev_e)], dim=1)
            pos = pos[:, -1:] + 1
            step = nxt.unsqueeze(1)
            le, cache_e = self._step(self.model, step.to(dev_e), mask.to(dev_e), pos.to(dev_e), cache_e)
            la, cache_a = self._step(self.amateur, step.to(dev_a), mask.to(dev_a), pos.to(dev_a), cache_a)
        return GeneratedBatch(tokens=torch.stack(out, dim=1))
