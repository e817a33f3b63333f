"""The generation interface every engine implements: prompt ids + settings in, token ids and
text out. Sampling, evaluation and the demo call it and know nothing of the engine behind it.

An engine implements one method, :meth:`Engine.generate_batch` (one batch of prompts → the new
token ids, and the raw per-step logits when asked and the engine can give them); the batched
loop with its progress bar, end-of-sequence cutting, decoding and per-problem timing is
:meth:`Engine.generate`, shared by every engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode (the same for every engine)."""

    max_new_tokens: int
    """Most new tokens per prompt; at least 1."""
    do_sample: bool = False
    """False: greedy (one beam), whatever the checkpoint's own generation config says."""
    temperature: float = 1.0
    """Sampling temperature (only with ``do_sample``)."""
    top_p: float = 1.0
    """Nucleus mass (only with ``do_sample``)."""
    checkpoint_config: bool = False
    """Published quirk (``sampling.published_generation``): decode with the checkpoint's own
    generation config (its sampling, top-k/top-p, penalties; only ``max_new_tokens`` and the
    stop ids come from here), and return the *processed* per-step scores (after those
    warpers) instead of the raw logits. Engines other than ``hf`` refuse it."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an integer >= 1, got {self.max_new_tokens!r}")


@dataclass
class Generation:
    """One prompt's continuation."""

    token_ids: list[int]
    """Generated ids up to and including the first end-of-sequence id (all of them if none)."""
    text: str
    """Decoded text, the end-of-sequence token and other special tokens dropped."""
    cut_off: bool
    """No end-of-sequence id within ``max_new_tokens``."""
    num_tokens: int
    """``len(token_ids)``."""
    seconds: float
    """This prompt's share of its batch's generation time."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GeneratedBatch:
    """What :meth:`Engine.generate_batch` returns for one batch of prompts."""

    tokens: torch.Tensor
    """int64 ``[B, T']``: the new ids of every row (after a row's end-of-sequence id the engine
    may pad); ``T'`` is the longest row."""
    logits: list[torch.Tensor] | None = None
    """``T'`` tensors ``[B, V]`` of raw (unprocessed) next-token logits, when asked for and the
    engine keeps them; ``None`` otherwise."""


class Engine:
    """Base class of the generation engines (``conf/generation/``).

    ``model`` and ``tokenizer`` are the loaded checkpoint (the engine may hold its own copy);
    ``eos_token_ids`` default to the tokenizer's plus the generation config's. An engine that
    loads its own weights (``loads_own_weights``, e.g. vLLM) gets ``model=None`` and the
    checkpoint's ``spec`` instead.
    """

    name = "engine"
    loads_own_weights = False
    """True: the engine reads the checkpoint itself (no transformers model is loaded for it)."""
    full_precision_logits = True
    """True when :meth:`generate_batch` can return the raw logits of the model at the precision
    it was loaded in (what contrastive sampling scores with); otherwise sampling scores the
    engine's tokens with a teacher-forced pass of the full-precision model."""

    @classmethod
    def key_identity(cls, **params) -> dict | None:
        """What of this engine's configuration changes its outputs, for cache keys and
        evaluation settings; ``None`` for the default (transformers at the model's precision),
        so caches made before engines were configurable keep their keys."""
        return {"engine": cls.name}

    def __init__(self, model, tokenizer, eos_token_ids: Sequence[int] | None = None) -> None:
        from lightreasoner.models.spec import eos_token_ids as default_eos

        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids else default_eos(tokenizer, model)
        if not self.eos_token_ids:
            raise ValueError("generation: no end-of-sequence id in the tokenizer or the generation config")

    @property
    def pad_token_id(self) -> int:
        """The id prompts are padded with (the tokenizer's, else the checkpoint's, else eos)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(getattr(self.model, "generation_config", None), "pad_token_id", None)
        return int(self.eos_token_ids[0] if pad is None else pad)

    def identity(self) -> dict:
        """What identifies this engine's outputs (name, library version, precision)."""
        return {"engine": self.name}

    def close(self) -> None:
        """Free what the engine holds (models, worker processes)."""
        self.model = None

    supports_checkpoint_config: bool = False
    """Whether :attr:`GenerationSettings.checkpoint_config` (the published sampling quirk) works."""

    def generate_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        return_logits: bool = False,
        seed: int | None = None,
    ) -> GeneratedBatch:
        """Continue one batch of prompts (unpadded id lists). ``seed`` seeds ``do_sample``."""
        raise NotImplementedError(f"{type(self).__name__}.generate_batch")

    @staticmethod
    def check_prompts(prompt_ids: Sequence[Sequence[int]]) -> None:
        """One error for a batch with no prompt or an empty one (every engine needs a context)."""
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("generation: empty prompt (or no prompts) in a batch")

    def finish(self, row: Sequence[int], seconds: float) -> Generation:
        """Cut a row of new ids at its first end-of-sequence id and decode it."""
        eos = set(self.eos_token_ids)
        end = next((i for i, t in enumerate(row) if t in eos), None)
        ids = list(row) if end is None else list(row[: end + 1])
        text = self.tokenizer.decode(ids if end is None else ids[:-1], skip_special_tokens=True)
        return Generation(token_ids=ids, text=text, cut_off=end is None, num_tokens=len(ids), seconds=seconds)

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        batch_size: int,
        on_batch: Callable[[int, list[Generation]], None] | None = None,
        desc: str = "generate",
        progress: bool = True,
    ) -> list[Generation]:
        """Continuations of every prompt, ``batch_size`` at a time, in order.

        ``on_batch(start, generations)`` runs after each batch (``start`` = index of its first
        prompt), e.g. to write results as they come.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        results: list[Generation] = []
        bar = tqdm(total=len(prompt_ids), desc=desc, unit="problem", disable=not progress, leave=False)
        try:
            for start in range(0, len(prompt_ids), batch_size):
                chunk = prompt_ids[start : start + batch_size]
                t0 = time.perf_counter()
                rows = self.generate_batch(chunk, settings).tokens.tolist()
                seconds = (time.perf_counter() - t0) / len(chunk)
                batch = [self.finish(row, seconds) for row in rows]
                if on_batch is not None:
                    on_batch(start, batch)
                results.extend(batch)
                bar.update(len(chunk))
        finally:
            bar.close()
        return results
