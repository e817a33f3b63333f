"""Stage 1: contrastive sampling as a Lightning ``predict_step`` (METHOD.md, steps 1-3 and 5).

For a batch of problems the expert generates its traces in one left-padded batched
``generate`` call (greedy by default, overriding the checkpoint's generation config), keeping
its *raw* logits (``output_logits=True``, never the processed scores). The amateur then
scores every step of every trace in ONE teacher-forced forward pass over ``prompt + trace``
(position ids derived from the attention mask, ``logits_to_keep`` so only the trace positions
get logits). Per step the sampler computes ``KL(pE || pA)`` over the shared ids, the
candidate set for ``alpha_min`` with both log-probabilities, and ``max log pE`` — all through
:mod:`lightreasoner.contrast`, ``vocab_chunk`` steps at a time (fp32 ``log_softmax`` per
chunk) so the vocabulary-wide work has a bounded peak.

The output of :meth:`ContrastiveSampler.predict_step` is a list of *scored traces* (one
dict per problem, keys ``records.SCORED_TRACE_KEYS``, tensors on CPU, fp32) as documented
in ``docs/DESIGN.md``; :mod:`lightreasoner.trace_cache` stores them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning import LightningModule

from . import contrast
from .models import (
    ModelSpec,
    check_pair_tokenizers,
    eos_token_ids,
    load_model,
    load_tokenizer,
    neutral_generation_config,
    using_generation_config,
)
from .prompts import SAMPLING_SYSTEM

log = logging.getLogger(__name__)

SELECTION_KEYS = ("beta", "alpha", "first_step", "batch_size")
"""Keys of the ``sampling`` config group that do not change the scored traces (read time /
scheduling only); :meth:`SamplingSettings.from_cfg` ignores them."""


@dataclass
class SamplingSettings:
    """Everything in the ``sampling`` config group that determines the scored traces."""

    max_new_tokens: int = 128
    """Trace length cap (prefix termination); at least 1."""
    do_sample: bool = False
    """False: greedy decoding (the default; overrides the checkpoint's generation config)."""
    temperature: float = 1.0
    """Sampling temperature, only used when ``do_sample``; > 0."""
    top_p: float = 1.0
    """Nucleus mass, only used when ``do_sample``; in (0, 1]."""
    alpha_min: float = 0.01
    """Candidates ``pE >= alpha_min * max pE`` are stored; any ``alpha >= alpha_min`` can be
    applied later. In (0, 1]."""
    max_candidates: int = 256
    """At most this many candidates per step (the most probable ones); at least 1."""
    vocab_chunk: int = 16
    """Steps scored at a time in the vocabulary-wide work (bounds peak memory); at least 1."""
    system_prompt: str | None = SAMPLING_SYSTEM
    """System message of the sampling prompt (None or empty: no system turn)."""
    seed: int | None = None
    """Base seed for ``do_sample`` (each batch is seeded from it and its problem ids, so a
    resumed run draws the same traces); ignored when greedy."""

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SamplingSettings":
        """Build from a ``sampling`` config mapping (selection keys are ignored) and validate."""
        if isinstance(cfg, SamplingSettings):
            cfg.validate()
            return cfg
        d = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known - set(SELECTION_KEYS))
        if unknown:
            raise ValueError(f"sampling: unknown field(s) {unknown}; expected some of {sorted(known | set(SELECTION_KEYS))}")
        settings = cls(**{k: v for k, v in d.items() if k in known})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise one ``ValueError`` naming the first invalid field."""

        def bad(field: str, expected: str) -> ValueError:
            return ValueError(f"sampling.{field}: expected {expected}, got {getattr(self, field)!r}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "an integer >= 1")
        if not isinstance(self.do_sample, bool):
            raise bad("do_sample", "true or false")
        if not _is_real(self.temperature) or not self.temperature > 0:
            raise bad("temperature", "a number > 0")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "0 < top_p <= 1")
        if not _is_real(self.alpha_min) or not 0 < self.alpha_min <= 1:
            raise bad("alpha_min", "0 < alpha_min <= 1")
        if not _is_int(self.max_candidates) or self.max_candidates < 1:
            raise bad("max_candidates", "an integer >= 1")
        if not _is_int(self.vocab_chunk) or self.vocab_chunk < 1:
            raise bad("vocab_chunk", "an integer >= 1")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise bad("system_prompt", "a string or null")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "an integer or null")

    def key_fields(self) -> dict:
        """The generation/scoring settings that go into the trace-cache key.

        Greedy decoding ignores temperature, top_p and seed, so they are left out then.
        """
        d = {
            "max_new_tokens": int(self.max_new_tokens),
            "do_sample": bool(self.do_sample),
            "alpha_min": float(self.alpha_min),
            "max_candidates": int(self.max_candidates),
        }
        if self.do_sample:
            d.update(temperature=float(self.temperature), top_p=float(self.top_p), seed=self.seed)
        return d


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def question_sha(question: str) -> str:
    """sha256[:16] of the question text (the scored trace's ``question_sha``)."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def make_batch(problem_ids: Sequence[str], questions_sha: Sequence[str], prompt_ids: Sequence[Sequence[int]]) -> dict:
    """The batch a :class:`ContrastiveSampler` consumes: parallel lists, prompts unpadded."""
    if not (len(problem_ids) == len(questions_sha) == len(prompt_ids)):
        raise ValueError("sampling batch: problem_id, question_sha and prompt_ids must have the same length")
    return {
        "problem_id": list(problem_ids),
        "question_sha": list(questions_sha),
        "prompt_ids": [list(map(int, p)) for p in prompt_ids],
    }


class ContrastiveSampler(LightningModule):
    """Expert generation + one teacher-forced amateur pass -> scored traces.

    Either give ``ModelSpec``s (models and tokenizers are loaded in :meth:`configure_model`,
    on the trainer's device, so nothing heavy is pickled), or already-built ``expert_model``,
    ``amateur_model`` and ``tokenizer`` (tests, benchmarks).
    """

    def __init__(
        self,
        expert: ModelSpec | Mapping | str | None = None,
        amateur: ModelSpec | Mapping | str | None = None,
        settings: SamplingSettings | Mapping | None = None,
        *,
        expert_model: torch.nn.Module | None = None,
        amateur_model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        amateur_tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.settings = SamplingSettings.from_cfg(settings or {})
        self.expert_spec = ModelSpec.from_any(expert) if expert is not None else None
        self.amateur_spec = ModelSpec.from_any(amateur) if amateur is not None else None
        prebuilt = (expert_model is not None, amateur_model is not None, tokenizer is not None)
        if any(prebuilt) and not all(prebuilt):
            raise ValueError("ContrastiveSampler: give expert_model, amateur_model and tokenizer together (or none, with specs)")
        if not any(prebuilt) and (self.expert_spec is None or self.amateur_spec is None):
            raise ValueError("ContrastiveSampler: give expert and amateur ModelSpecs, or built models and a tokenizer")
        self.expert_model = expert_model
        self.amateur_model = amateur_model
        self.tokenizer = tokenizer
        self._amateur_tokenizer = amateur_tokenizer
        self._checked = False
        self._eos: list[int] = []
        self._warned_oov = False

    # ------------------------------------------------------------------ set-up
    def configure_model(self) -> None:
        """Load tokenizers and models (once), check the pair, freeze both."""
        if self.expert_model is None:
            device = None
            if self._trainer is not None:
                device = self.trainer.strategy.root_device
            e_spec, a_spec = self.expert_spec, self.amateur_spec
            if device is not None:
                e_spec = dataclasses.replace(e_spec, device=str(device))
                a_spec = dataclasses.replace(a_spec, device=str(device))
            self.tokenizer = load_tokenizer(e_spec, "model_pair.expert")
            self._amateur_tokenizer = load_tokenizer(a_spec, "model_pair.amateur")
            self._check_pair()
            self.expert_model = load_model(e_spec, "model_pair.expert")
            self.amateur_model = load_model(a_spec, "model_pair.amateur")
        self._check_pair()
        for m in (self.expert_model, self.amateur_model):
            m.eval()
            m.requires_grad_(False)
        self._eos = eos_token_ids(self.tokenizer, self.expert_model)
        if not self._eos:
            raise ValueError("model_pair.expert: no end-of-sequence id in the tokenizer or the generation config")

    def setup_models(self) -> "ContrastiveSampler":
        """Load/check outside a Trainer (benchmarks, notebooks); returns self."""
        self.configure_model()
        return self

    def _check_pair(self) -> None:
        if self._checked:
            return
        tok_a = self._amateur_tokenizer if self._amateur_tokenizer is not None else self.tokenizer
        check_pair_tokenizers(
            self.tokenizer,
            tok_a,
            self.expert_spec.display_name() if self.expert_spec else "expert",
            self.amateur_spec.display_name() if self.amateur_spec else "amateur",
        )
        self._checked = True

    def generation_config(self):
        """The trace's ``GenerationConfig`` (``models.neutral_generation_config``): the
        checkpoint's bos/pad ids, our settings, nothing else of the checkpoint's config, so a
        checkpoint that turns on sampling or a repetition penalty does not change the traces."""
        s = self.settings
        return neutral_generation_config(
            self.expert_model,
            self.tokenizer,
            s.max_new_tokens,
            self._eos,
            do_sample=s.do_sample,
            temperature=s.temperature,
            top_p=s.top_p,
            output_logits=True,
            return_dict_in_generate=True,
        )

    # --------------------------------------------------------------- the work
    def predict_step(self, batch: Mapping, batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict]:
        """Score one batch of problems (see :func:`make_batch`) -> list of scored traces."""
        return self.score_batch(batch)

    @torch.no_grad()
    def score_batch(self, batch: Mapping) -> list[dict]:
        if self.expert_model is None or not self._eos:
            self.configure_model()
        s = self.settings
        expert, amateur = self.expert_model, self.amateur_model
        prompts = [list(map(int, p)) for p in batch["prompt_ids"]]
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("sampling batch: empty prompt")
        dev = next(expert.parameters()).device
        dev_a = next(amateur.parameters()).device
        pad = self.generation_config().pad_token_id

        # 1. left-padded batched generation, raw logits kept
        bsz, plen = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((bsz, plen), pad, dtype=torch.long)
        attn = torch.zeros((bsz, plen), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, plen - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[i, plen - len(p):] = 1
        input_ids, attn = input_ids.to(dev), attn.to(dev)
        if s.do_sample and s.seed is not None:
            torch.manual_seed(_batch_seed(s.seed, batch["problem_id"]))
        gen_cfg = self.generation_config()
        # generate() fills every unset field from model.generation_config (e.g. a checkpoint's
        # repetition_penalty or temperature); swap in our config for the call so nothing leaks in.
        with using_generation_config(expert, gen_cfg):
            out = expert.generate(input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg)
        gen = out.sequences[:, plen:]  # [B, T']
        exp_logits = out.logits  # T' x [B, V_e], raw
        t_max = gen.shape[1]
        if t_max == 0 or len(exp_logits) != t_max:
            raise RuntimeError(f"expert.generate returned {t_max} tokens but {len(exp_logits)} logit steps")

        # 2. steps end at the first eos id (that step included)
        eos = torch.tensor(self._eos, device=gen.device)
        is_eos = torch.isin(gen, eos)
        finished = is_eos.any(dim=1)
        first = torch.where(finished, is_eos.int().argmax(dim=1), torch.full_like(finished, t_max - 1, dtype=torch.long))
        lengths = first + 1  # [B]

        # 3. ONE teacher-forced amateur pass over prompt + trace[:-1]; logits only at the T' trace steps
        am_ids = out.sequences[:, : plen + t_max - 1].to(dev_a)
        n_embed = amateur.get_input_embeddings().num_embeddings
        oov = am_ids >= n_embed
        if bool(oov.any()):
            if not self._warned_oov:
                log.warning("expert generated ids beyond the amateur's embedding (%d); they are fed to the amateur as pad", n_embed)
                self._warned_oov = True
            am_ids = am_ids.masked_fill(oov, pad)
        steps = torch.arange(t_max - 1, device=dev_a)
        am_mask = torch.cat([attn.to(dev_a), (steps.unsqueeze(0) < lengths.to(dev_a).unsqueeze(1)).long()], dim=1)
        pos = (am_mask.cumsum(-1) - 1).clamp_min(0).masked_fill(am_mask == 0, 1)
        am_logits = amateur(
            input_ids=am_ids, attention_mask=am_mask, position_ids=pos, logits_to_keep=t_max, use_cache=False
        ).logits  # [B, T', V_a]
        if am_logits.shape[1] != t_max:
            raise RuntimeError(f"amateur returned logits for {am_logits.shape[1]} positions, expected {t_max}")

        # 4. per-step math, vocab_chunk steps at a time, fp32 log_softmax per chunk
        kls, ids, lpes, lpas, valids, maxes = [], [], [], [], [], []
        for a in range(0, t_max, s.vocab_chunk):
            b = min(a + s.vocab_chunk, t_max)
            le = torch.stack(exp_logits[a:b], dim=1).to(dev).float().log_softmax(-1)  # [B, c, V_e]
            la = am_logits[:, a:b].to(dev).float().log_softmax(-1)  # [B, c, V_a]
            kls.append(contrast.kl_shared(le, la))
            c_ids, c_lpe, c_lpa, c_valid, c_max = contrast.top_candidates(le, la, s.alpha_min, s.max_candidates)
            ids.append(c_ids)
            lpes.append(c_lpe)
            lpas.append(c_lpa)
            valids.append(c_valid)
            maxes.append(c_max)
            del le, la
        del am_logits, exp_logits, out

        # 5. to CPU once, then cut each row at its length
        gen_c = gen.cpu()
        lengths_c = lengths.cpu().tolist()
        finished_c = finished.cpu().tolist()
        kl = torch.cat(kls, 1).cpu()
        ids_c = torch.cat(ids, 1).cpu()
        lpe_c = torch.cat(lpes, 1).cpu()
        lpa_c = torch.cat(lpas, 1).cpu()
        valid_c = torch.cat(valids, 1).cpu()
        max_c = torch.cat(maxes, 1).cpu()
        records = []
        for i in range(bsz):
            t = int(lengths_c[i])
            v = valid_c[i, :t]
            counts = v.sum(-1)
            offsets = torch.zeros(t + 1, dtype=torch.long)
            offsets[1:] = counts.cumsum(0)
            records.append(
                {
                    "problem_id": str(batch["problem_id"][i]),
                    "question_sha": str(batch["question_sha"][i]),
                    "prompt_ids": torch.tensor(prompts[i], dtype=torch.long),
                    "trace_ids": gen_c[i, :t].clone().long(),
                    "finished": bool(finished_c[i]),
                    "kl": kl[i, :t].clone().float(),
                    "max_logp_e": max_c[i, :t].clone().float(),
                    "cand_offsets": offsets,
                    "cand_ids": ids_c[i, :t][v].to(torch.int32),
                    "cand_logp_e": lpe_c[i, :t][v].float(),
                    "cand_logp_a": lpa_c[i, :t][v].float(),
                }
            )
        return records


def _batch_seed(seed: int, problem_ids: Sequence[str]) -> int:
    """A per-batch seed from the base seed and the batch's problem ids (resume-stable)."""
    h = hashlib.sha256(f"{seed}|".encode() + "\x1f".join(map(str, problem_ids)).encode()).hexdigest()
    return int(h[:15], 16)
