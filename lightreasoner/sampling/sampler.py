"""Stage 1: contrastive sampling as a Lightning ``predict_step`` (METHOD.md, steps 1-3 and 5).

For a batch of problems the expert generates its traces in one left-padded batched
``generate`` call (greedy by default, overriding the checkpoint's generation config), keeping
its *raw* logits (``output_logits=True``, never the processed scores). The amateur then
scores every step of every trace in ONE teacher-forced forward pass over ``prompt + trace``
(position ids derived from the attention mask, ``logits_to_keep`` so only the trace positions
get logits). Per step the sampler computes ``KL(pE || pA)`` over the shared ids, the
candidate set for ``alpha_min`` with both log-probabilities, and ``max log pE`` — all through
:mod:`lightreasoner.core.contrast`, ``vocab_chunk`` steps at a time (fp32 ``log_softmax`` per
chunk) so the vocabulary-wide work has a bounded peak.

The output of :meth:`ContrastiveSampler.predict_step` is a list of *scored traces* (one
dict per problem, keys ``records.SCORED_TRACE_KEYS``, tensors on CPU, fp32) as documented
in ``docs/reference/records.md``; :mod:`lightreasoner.sampling.trace_cache` stores them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from lightreasoner.core import alignment as align
from lightreasoner.core import contrast
from lightreasoner.core.config import MOVED_KEYS
from lightreasoner.generation import Engine, GenerationSettings, build_engine, engine_key
from lightreasoner.generation.hf import left_pad
from lightreasoner.models.spec import ModelSpec, check_pair_tokenizers, load_model, load_tokenizer
from lightreasoner.models.pairs import EarlyExitLM, PairSettings, check_checkpoint_amateur
from lightreasoner.data.prompts import SAMPLING_SYSTEM, encode_prompts
from lightreasoner.data.records import SCORED_TRACE_KEYS, Problem
from lightreasoner.sampling.shards import fill_missing
from lightreasoner.sampling.trace_cache import TraceCache, trace_key_fields

log = logging.getLogger(__name__)

MOVED_TO_SELECTION = tuple(k.split(".", 1)[1] for k in MOVED_KEYS if k.startswith("sampling."))
"""Keys the ``sampling`` group held before step selection had one home (``selection.*``; :data:`~lightreasoner.core.config.MOVED_KEYS`)."""


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
    batch_size: int = 16
    """Problems per generation batch (scheduling only: not part of the cache key); at least 1."""
    seed: int | None = None
    """Base seed for ``do_sample`` (each batch is seeded from it and its problem ids, so a
    resumed run draws the same traces); ignored when greedy."""
    published_generation: bool = False
    """Published quirk, off by default: the expert decodes with its checkpoint's own generation
    config (an Instruct checkpoint samples, with its top-k/top-p and repetition penalty;
    ``do_sample``/``temperature``/``top_p`` here are then ignored) and is scored from the
    *processed* scores (after those warpers: tokens outside top-k get pE = 0), as the
    published sampler did for Instruct/DeepSeek experts. The ``hf`` engine only; part of the
    cache key when on."""

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SamplingSettings":
        """Build from a ``sampling`` config mapping and validate (the selection keys live in ``selection``)."""
        if isinstance(cfg, SamplingSettings):
            cfg.validate()
            return cfg
        d = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known - set(MOVED_TO_SELECTION))  # those are not read here (validation names their home)
        if unknown:
            raise ValueError(f"sampling: unknown field(s) {unknown}; expected some of {sorted(known)}")
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
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise bad("batch_size", "an integer >= 1")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise bad("system_prompt", "a string or null")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "an integer or null")
        if not isinstance(self.published_generation, bool):
            raise bad("published_generation", "true or false")

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
        if self.published_generation:
            d.update(published_generation=True, seed=self.seed)
        return d


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def question_sha(question: str) -> str:
    """sha256[:16] of the question text (the scored trace's ``question_sha``)."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def make_batch(
    problem_ids: Sequence[str],
    questions_sha: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    amateur_prompt_ids: Sequence[Sequence[int]] | None = None,
) -> dict:
    """The batch a :class:`ContrastiveSampler` consumes: parallel lists, prompts unpadded.

    ``amateur_prompt_ids``: the same prompts in the amateur's own tokenizer and chat template,
    for a pair whose tokenizers differ (``model_pair.alignment=string``)."""
    if not (len(problem_ids) == len(questions_sha) == len(prompt_ids)):
        raise ValueError("sampling batch: problem_id, question_sha and prompt_ids must have the same length")
    batch = {
        "problem_id": list(problem_ids),
        "question_sha": list(questions_sha),
        "prompt_ids": [list(map(int, p)) for p in prompt_ids],
    }
    if amateur_prompt_ids is not None:
        if len(amateur_prompt_ids) != len(prompt_ids):
            raise ValueError("sampling batch: amateur_prompt_ids must be as long as prompt_ids")
        batch["amateur_prompt_ids"] = [list(map(int, p)) for p in amateur_prompt_ids]
    return batch


@dataclass
class GeneratedTraces:
    """The expert's traces for one batch (:meth:`ContrastiveSampler.generate_traces`)."""

    prompts: list[list[int]]
    """The batch's prompts, unpadded."""
    sequences: torch.Tensor
    """``[B, P + T' - 1]``: left-padded prompt + trace[:-1], the teacher-forced passes' input."""
    attn: torch.Tensor
    """``[B, P]``: the prompts' attention mask."""
    tokens: torch.Tensor
    """``[B, T']``: the generated ids, on the expert's device."""
    lengths: torch.Tensor
    """``[B]``: steps of each trace, up to and including its first eos id."""
    finished: torch.Tensor
    """``[B]``: whether the trace reached an eos id."""
    logits: list[torch.Tensor] | None
    """``T'`` x ``[B, V_e]``: the expert's raw logits the engine kept (None: it keeps none)."""


class ContrastiveSampler(LightningModule):
    """Expert generation + one teacher-forced amateur pass -> scored traces.

    Either give ``ModelSpec``s (models and tokenizers are loaded in :meth:`configure_model`,
    on the trainer's device, so nothing heavy is pickled), or already-built ``expert_model``,
    ``amateur_model`` and ``tokenizer`` (tests, benchmarks). ``generation`` is the
    ``generation`` config node naming the engine that writes the expert's traces (default: the
    transformers engine); the scoring passes always run in transformers.

    ``pair`` (:class:`~lightreasoner.models.pairs.PairSettings`, the ``model_pair`` group's pair keys):
    with ``alignment=string`` a pair whose tokenizers differ is scored at shared token
    boundaries (the amateur reads the trace's text in its own tokens, one pass;
    :mod:`lightreasoner.core.alignment`); an ``early_exit`` amateur is the expert cut after a layer
    (no amateur model is given or loaded); a ``checkpoint`` amateur must have the expert's
    architecture.
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
        generation: Mapping | None = None,
        pair: PairSettings | Mapping | None = None,
    ) -> None:
        super().__init__()
        self.settings = SamplingSettings.from_cfg(settings or {})
        self.pair = pair if isinstance(pair, PairSettings) else PairSettings.from_cfg(pair or {})
        self.expert_spec = ModelSpec.from_any(expert) if expert is not None else None
        self.amateur_spec = ModelSpec.from_any(amateur) if amateur is not None else None
        # an early-exit amateur is built from the expert: no amateur model is given or loaded
        prebuilt = (expert_model is not None, tokenizer is not None) + (() if self.pair.early_exit else (amateur_model is not None,))
        if any(prebuilt) and not all(prebuilt):
            raise ValueError("ContrastiveSampler: give expert_model, amateur_model and tokenizer together (or none, with specs)")
        if not any(prebuilt) and (self.expert_spec is None or self.amateur_spec is None):
            raise ValueError("ContrastiveSampler: give expert and amateur ModelSpecs, or built models and a tokenizer")
        self.expert_model = expert_model
        self.amateur_model = amateur_model
        self.tokenizer = tokenizer
        self._amateur_tokenizer = amateur_tokenizer
        self._generation_cfg = generation
        self.engine: Engine | None = None
        self._checked = False
        self._warned_oov = False
        self._aligner: align.TokenAligner | None = None
        """Set when the pair's tokenizers differ (``alignment=string``)."""

    # ------------------------------------------------------------------ set-up
    def configure_model(self) -> None:
        """Load tokenizers and models (once), check the pair, freeze both, build the engine."""
        if self.expert_model is None:
            device = None
            if self._trainer is not None:
                device = self.trainer.strategy.root_device
            e_spec, a_spec = self.expert_spec, self.amateur_spec
            if device is not None:
                e_spec = dataclasses.replace(e_spec, device=str(device))
                a_spec = dataclasses.replace(a_spec, device=str(device))
            self.tokenizer = load_tokenizer(e_spec, "model_pair.expert")
            if not self.pair.early_exit:
                self._amateur_tokenizer = load_tokenizer(a_spec, "model_pair.amateur")
            self._check_pair()
            self.expert_model = load_model(e_spec, "model_pair.expert")
            if not self.pair.early_exit:
                self.amateur_model = load_model(a_spec, "model_pair.amateur")
        if self.pair.early_exit and not isinstance(self.amateur_model, EarlyExitLM):
            self.amateur_model = EarlyExitLM(self.expert_model, self.pair.amateur_layer)
        if self.pair.amateur_kind == "checkpoint":
            check_checkpoint_amateur(
                self.expert_model, self.amateur_model,
                self.expert_spec.display_name() if self.expert_spec else "expert",
                self.amateur_spec.display_name() if self.amateur_spec else "amateur",
            )
        self._check_pair()
        for m in (self.expert_model, self.amateur_model):
            m.eval()
            m.requires_grad_(False)
        if self.engine is None:
            self.engine = build_engine(self._generation_cfg, self.expert_model, self.tokenizer, spec=self.expert_spec)
        if self.settings.published_generation and not self.engine.supports_checkpoint_config:
            raise ValueError(
                f"sampling.published_generation: needs generation=hf (the checkpoint's generation config and "
                f"processed scores), got the {self.engine.name!r} engine"
            )

    def setup_models(self) -> "ContrastiveSampler":
        """Load/check outside a Trainer (benchmarks, notebooks); returns self."""
        self.configure_model()
        return self

    def _check_pair(self) -> None:
        if self._checked:
            return
        tok_a = self._amateur_tokenizer if self._amateur_tokenizer is not None else self.tokenizer
        check = check_pair_tokenizers(
            self.tokenizer,
            tok_a,
            self.expert_spec.display_name() if self.expert_spec else "expert",
            self.amateur_spec.display_name() if self.amateur_spec else "amateur",
            alignment=self.pair.alignment,
        )
        if not check.shared:
            self._aligner = align.TokenAligner(self.tokenizer, tok_a)
            log.info(
                "model_pair.alignment=string: %d of %d expert tokens have an amateur token of the same string",
                self._aligner.vocab.aligned, self._aligner.vocab.expert_tokens,
            )
        self._checked = True

    def generation_settings(self) -> GenerationSettings:
        """How the expert decodes its traces (from the ``sampling`` settings)."""
        s = self.settings
        return GenerationSettings(
            s.max_new_tokens, do_sample=s.do_sample, temperature=s.temperature, top_p=s.top_p,
            checkpoint_config=s.published_generation,
        )

    # --------------------------------------------------------------- the work
    def predict_step(self, batch: Mapping, batch_idx: int = 0, dataloader_idx: int = 0) -> list[dict]:
        """Score one batch of problems (see :func:`make_batch`) -> list of scored traces."""
        return self.score_batch(batch)

    @staticmethod
    def _trace_logits(model, ids: torch.Tensor, attn: torch.Tensor, lengths: torch.Tensor, t_max: int) -> torch.Tensor:
        """One teacher-forced pass over ``prompt + trace[:-1]`` (left-padded prompts, traces cut
        at ``lengths``) -> logits ``[B, t_max, V]`` at the trace steps only."""
        dev = next(model.parameters()).device
        steps = torch.arange(t_max - 1, device=dev)
        mask = torch.cat([attn.to(dev), (steps.unsqueeze(0) < lengths.to(dev).unsqueeze(1)).long()], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0).masked_fill(mask == 0, 1)
        logits = model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos, logits_to_keep=t_max, use_cache=False).logits
        if logits.shape[1] != t_max:
            raise RuntimeError(f"teacher-forced pass returned logits for {logits.shape[1]} positions, expected {t_max}")
        return logits

    @torch.no_grad()
    def score_batch(self, batch: Mapping) -> list[dict]:
        """Score one batch of problems (see :func:`make_batch`) -> its scored traces: the expert
        generates (:meth:`generate_traces`), both models' distributions are scored at every step
        (:meth:`score_traces`), each row is packed into its record (:meth:`pack_records`)."""
        if self.engine is None:
            self.configure_model()
        self._check_pair()  # (once) also when the engine was set from outside
        prompts = [list(map(int, p)) for p in batch["prompt_ids"]]
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("sampling batch: empty prompt")
        traces = self.generate_traces(batch, prompts)
        return self.pack_records(batch, traces, self.score_traces(batch, traces))

    def generate_traces(self, batch: Mapping, prompts: list[list[int]]) -> GeneratedTraces:
        """The expert's traces for a batch: one batched generation by the engine (raw logits kept
        where the engine has them), each trace's steps ending at its first eos id (included)."""
        s, engine = self.settings, self.engine
        dev = next(self.expert_model.parameters()).device
        input_ids, attn = left_pad(prompts, engine.pad_token_id)
        plen = input_ids.shape[1]
        seed = batch_seed(s.seed, batch["problem_id"]) if (s.do_sample or s.published_generation) and s.seed is not None else None
        out = engine.generate_batch(prompts, self.generation_settings(), return_logits=True, seed=seed)
        gen = out.tokens.to(dev)  # [B, T']
        t_max = gen.shape[1]
        if t_max == 0 or (out.logits is not None and len(out.logits) != t_max):
            n_logits = None if out.logits is None else len(out.logits)
            raise RuntimeError(f"generation returned {t_max} tokens but {n_logits} logit steps")
        is_eos = torch.isin(gen, torch.tensor(engine.eos_token_ids, device=gen.device))
        finished = is_eos.any(dim=1)
        first = torch.where(finished, is_eos.int().argmax(dim=1), torch.full_like(finished, t_max - 1, dtype=torch.long))
        sequences = torch.cat([input_ids.to(dev), gen], dim=1)[:, : plen + t_max - 1]
        return GeneratedTraces(prompts, sequences, attn, gen, first + 1, finished, out.logits)

    def score_traces(self, batch: Mapping, traces: GeneratedTraces) -> dict[str, torch.Tensor]:
        """Both models' distributions at every trace step -> per step ``kl``, the candidates'
        ``ids``, ``lpe`` and ``lpa`` (log pE, log pA) with their ``valid`` mask, ``max`` (max log
        pE), and for a cross-tokenizer pair ``mass`` (the aligned candidate mass): ``[B, T', ...]``
        on CPU, ``vocab_chunk`` steps at a time with an fp32 ``log_softmax`` per chunk. The
        expert's logits are the engine's raw ones, else one teacher-forced pass; the amateur's
        come from ONE teacher-forced pass (:meth:`_amateur_logits`)."""
        s, t_max = self.settings, traces.tokens.shape[1]
        exp_logits = traces.logits  # T' x [B, V_e]; stacked a chunk at a time below
        if exp_logits is None:
            exp_logits = self._trace_logits(self.expert_model, traces.sequences, traces.attn, traces.lengths, t_max)  # [B, T', V_e]
        am_logits, am_index = self._amateur_logits(batch, traces)
        dev = traces.tokens.device
        vmap = self._aligner.vocab.expert_to_amateur.to(dev) if am_index is not None else None
        parts: dict[str, list[torch.Tensor]] = {}
        for a in range(0, t_max, s.vocab_chunk):
            b = min(a + s.vocab_chunk, t_max)
            chunk = torch.stack(exp_logits[a:b], dim=1) if isinstance(exp_logits, list) else exp_logits[:, a:b]
            le = chunk.to(dev).float().log_softmax(-1)  # [B, c, V_e]
            for k, v in self._chunk_scores(le, am_logits, am_index, vmap, a, b).items():
                parts.setdefault(k, []).append(v)
            del chunk, le
        del am_logits, exp_logits
        return {k: torch.cat(v, 1).cpu() for k, v in parts.items()}

    def _amateur_logits(self, batch: Mapping, traces: GeneratedTraces) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ONE teacher-forced amateur pass over prompt + trace[:-1], logits only at the ``T'``
        trace steps (ids beyond its embedding fed as pad), no index; tokenizers that differ: over
        its own prompt + the trace's text in its own tokens, with the index of each step's
        position (:meth:`_cross_amateur_logits`)."""
        if self._aligner is not None:
            return self._cross_amateur_logits(batch, traces.tokens, traces.lengths)
        amateur = self.amateur_model
        am_ids = traces.sequences.to(next(amateur.parameters()).device)
        n_embed = amateur.get_input_embeddings().num_embeddings
        oov = am_ids >= n_embed
        if bool(oov.any()):
            if not self._warned_oov:
                log.warning("expert generated ids beyond the amateur's embedding (%d); they are fed to the amateur as pad", n_embed)
                self._warned_oov = True
            am_ids = am_ids.masked_fill(oov, self.engine.pad_token_id)
        return self._trace_logits(amateur, am_ids, traces.attn, traces.lengths, traces.tokens.shape[1]), None  # [B, T', V_a]

    def _chunk_scores(self, le: torch.Tensor, am_logits: torch.Tensor, am_index: torch.Tensor | None,
                      vmap: torch.Tensor | None, a: int, b: int) -> dict:
        """The per-step quantities of steps ``a:b`` from the expert's log-probabilities ``le``
        (:mod:`~lightreasoner.core.contrast`; a cross-tokenizer pair through
        :mod:`~lightreasoner.core.alignment` and the expert-to-amateur id map ``vmap`` at the
        steps it scores, NaN at the others)."""
        s, dev = self.settings, le.device
        if am_index is None:
            la = am_logits[:, a:b].to(dev).float().log_softmax(-1)  # [B, c, V_a]
            ids, lpe, lpa, valid, mx = contrast.top_candidates(le, la, s.alpha_min, s.max_candidates)
            return {"kl": contrast.kl_shared(le, la), "ids": ids, "lpe": lpe, "lpa": lpa, "valid": valid, "max": mx}
        idx = am_index[:, a:b].to(am_logits.device)  # [B, c]
        rows = am_logits.gather(1, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, am_logits.shape[-1]))
        la = rows.to(dev).float().log_softmax(-1)  # [B, c, V_a]
        scored = (idx >= 0).to(dev)
        nan = torch.tensor(float("nan"), device=dev)
        ids, lpe, lpa, valid, mx, mass = align.aligned_candidates(le, la, vmap, s.alpha_min, s.max_candidates)
        return {"kl": torch.where(scored, align.aligned_kl(le, la, vmap), nan), "ids": ids, "lpe": lpe, "lpa": lpa,
                "valid": valid & scored.unsqueeze(-1), "max": mx, "mass": torch.where(scored, mass, nan)}

    @staticmethod
    def pack_records(batch: Mapping, traces: GeneratedTraces, scored: Mapping[str, torch.Tensor]) -> list[dict]:
        """Cut each row at its length -> one scored trace per problem (keys
        ``records.SCORED_TRACE_KEYS``, plus ``aligned_mass`` for a cross-tokenizer pair; CPU, fp32)."""
        gen_c = traces.tokens.cpu()
        lengths_c = traces.lengths.cpu().tolist()
        finished_c = traces.finished.cpu().tolist()
        records = []
        for i, prompt in enumerate(traces.prompts):
            t = int(lengths_c[i])
            v = scored["valid"][i, :t]
            offsets = torch.zeros(t + 1, dtype=torch.long)
            offsets[1:] = v.sum(-1).cumsum(0)
            rec = {
                "problem_id": str(batch["problem_id"][i]),
                "question_sha": str(batch["question_sha"][i]),
                "prompt_ids": torch.tensor(prompt, dtype=torch.long),
                "trace_ids": gen_c[i, :t].clone().long(),
                "finished": bool(finished_c[i]),
                "kl": scored["kl"][i, :t].clone().float(),
                "max_logp_e": scored["max"][i, :t].clone().float(),
                "cand_offsets": offsets,
                "cand_ids": scored["ids"][i, :t][v].to(torch.int32),
                "cand_logp_e": scored["lpe"][i, :t][v].float(),
                "cand_logp_a": scored["lpa"][i, :t][v].float(),
            }
            if "mass" in scored:
                rec["aligned_mass"] = scored["mass"][i, :t].clone().float()
            records.append(rec)
        return records

    def _cross_amateur_logits(self, batch: Mapping, gen: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizers that differ: ONE teacher-forced amateur pass over each problem's amateur
        prompt + the trace's text in the amateur's tokens -> logits ``[B, K, V_a]`` (the last
        ``K`` positions) and, per trace step, the index into ``K`` of the amateur position at
        the same text boundary (``[B, T']``, -1: step not scored)."""
        if "amateur_prompt_ids" not in batch:
            raise ValueError(
                "sampling batch: model_pair.alignment=string with tokenizers that differ needs the amateur's own "
                "prompts (make_batch(..., amateur_prompt_ids=...))"
            )
        amateur, tok_a = self.amateur_model, self._amateur_tokenizer
        dev_a = next(amateur.parameters()).device
        gen_c, lengths_c = gen.cpu(), lengths.cpu().tolist()
        seqs, n_tokens, positions = [], [], []
        for i, prompt_a in enumerate(batch["amateur_prompt_ids"]):
            a_ids, pos = self._aligner.amateur_inputs(gen_c[i, : int(lengths_c[i])].tolist())
            seqs.append(list(map(int, prompt_a)) + a_ids)
            n_tokens.append(len(a_ids))
            positions.append(pos)
        keep = max(n_tokens) + 1
        pad = tok_a.pad_token_id if tok_a.pad_token_id is not None else 0
        ids, mask = left_pad(seqs, pad)
        pos_ids = (mask.cumsum(-1) - 1).clamp_min(0).masked_fill(mask == 0, 1)
        logits = amateur(
            input_ids=ids.to(dev_a), attention_mask=mask.to(dev_a), position_ids=pos_ids.to(dev_a),
            logits_to_keep=keep, use_cache=False,
        ).logits
        if logits.shape[1] != keep:
            raise RuntimeError(f"amateur pass returned logits for {logits.shape[1]} positions, expected {keep}")
        index = torch.full((len(seqs), gen.shape[1]), -1, dtype=torch.long)
        for i, pos in enumerate(positions):
            base = keep - (n_tokens[i] + 1)  # kept index of amateur position 0 (predicting the first text token)
            for t, j in enumerate(pos):
                if j is not None:
                    index[i, t] = base + j
        return logits, index


def batch_seed(seed: int, problem_ids: Sequence[str]) -> int:
    """A per-batch seed from the base seed and the batch's problem ids (resume-stable)."""
    h = hashlib.sha256(f"{seed}|".encode() + "\x1f".join(map(str, problem_ids)).encode()).hexdigest()
    return int(h[:15], 16)


# ----------------------------------------------------------------------------- the stage: sampling into the trace cache
class TraceWriter(BasePredictionWriter):
    """Streams each predicted batch of scored traces into the cache (every rank its own shards)."""

    def __init__(self, cache: TraceCache) -> None:
        super().__init__(write_interval="batch")
        self.cache = cache
        self.shards_written = 0
        """Shards this process published during the current run."""

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        if prediction:
            self.cache.write_shard(prediction)
            self.shards_written += 1


class _BatchList(Dataset):
    """Each item is one whole (pre-built, index-fixed) batch of problems."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _unwrap(items: list[dict]) -> dict:
    return items[0]


def _env_rank() -> int:
    """Global rank of this process as launched (0 for the launching/main process)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    return local + node


def run_sampling(
    expert: ModelSpec | Mapping | str,
    amateur: ModelSpec | Mapping | str,
    problems: Sequence[Problem],
    dataset_identity: Mapping,
    sampling_cfg: Mapping | SamplingSettings,
    cache_dir: str | os.PathLike,
    trainer_kwargs: Mapping | None = None,
    models: tuple | None = None,
    generation: Mapping | None = None,
    pair: PairSettings | Mapping | None = None,
) -> TraceCache:
    """Make sure every problem has a scored trace in the cache; return the cache.

    Only problems without a stored record are sampled (:func:`~lightreasoner.sampling.shards.fill_missing`:
    batches of ``sampling_cfg.batch_size`` fixed by problem index, a filelock per key, held by
    rank 0, so concurrent runs wait and then find the work done), by ``lightning.Trainer.predict``
    with a :class:`TraceWriter`. ``models`` may be ``(expert_model, amateur_model, tokenizer)``
    already built (tests; a fourth item is the amateur's own tokenizer); the specs still provide
    the identities for the key. ``generation`` is the ``generation`` config node (the engine
    that writes the expert's traces; default transformers). ``pair`` is the ``model_pair``
    group's pair keys (:class:`~lightreasoner.models.pairs.PairSettings`; default: one shared
    tokenizer, a second model): a pair whose tokenizers differ (``alignment=string``) has its
    coverage in the manifest and fails below ``min_coverage``. All settings are validated before
    anything is written.
    """
    cfg = dict(sampling_cfg) if not isinstance(sampling_cfg, SamplingSettings) else dataclass_dict(sampling_cfg)
    settings = SamplingSettings.from_cfg(cfg)
    expert, amateur = ModelSpec.from_any(expert), ModelSpec.from_any(amateur)
    problems = list(problems)
    if not problems:
        raise ValueError("run_sampling: no problems to sample")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"run_sampling: duplicate problem ids {dup}")

    pair = pair if isinstance(pair, PairSettings) else PairSettings.from_cfg(pair or {})
    if models is not None:
        tokenizer, amateur_tokenizer = models[2], (models[3] if len(models) > 3 else models[2])
    else:
        tokenizer = load_tokenizer(expert, "model_pair.expert")
        amateur_tokenizer = tokenizer if pair.early_exit else load_tokenizer(amateur, "model_pair.amateur")
    cross = not check_pair_tokenizers(
        tokenizer, amateur_tokenizer, expert.display_name(), amateur.display_name(), alignment=pair.alignment
    ).shared
    fields = trace_key_fields(expert, amateur, dataset_identity, tokenizer, settings, engine=engine_key(generation), pair=pair.key_fields())
    cache = TraceCache.at(cache_dir, fields, record_keys=SCORED_TRACE_KEYS + (align.ALIGNMENT_KEYS if cross else ()))
    built = models is not None

    def sample(groups: list[list[int]]) -> dict | None:
        sampler = ContrastiveSampler(
            expert, amateur, settings, expert_model=models[0] if built else None, amateur_model=models[1] if built else None,
            tokenizer=tokenizer if built else None, amateur_tokenizer=amateur_tokenizer if built else None,
            generation=generation, pair=pair,
        )
        return _predict_into(cache, sampler, problems, groups, trainer_kwargs, tokenizer, amateur_tokenizer if cross else None)

    config = {**cfg, **dataclass_dict(settings), "batch_size": settings.batch_size}
    manifest = fill_missing(cache, ids, settings.batch_size, sample, config, lock=_env_rank() == 0)
    if manifest is not None and cross:
        check_coverage(manifest, pair, expert, amateur)
    return cache


def _predict_into(cache: TraceCache, sampler: ContrastiveSampler, problems: Sequence[Problem], groups: list[list[int]],
                  trainer_kwargs: Mapping | None, tokenizer, amateur_tokenizer=None) -> dict | None:
    """Score the problems of ``groups`` (one batch each) by ``Trainer.predict`` into ``cache``;
    return what the run adds to the manifest (None on a rank other than 0). ``amateur_tokenizer``:
    the amateur's own, for a pair whose tokenizers differ (its prompts in its own template)."""
    system = sampler.settings.system_prompt
    prompt_ids = encode_prompts(tokenizer, [p.question for p in problems], system)
    # tokenizers that differ: the amateur reads the same question in its own chat template
    amateur_prompts = encode_prompts(amateur_tokenizer, [p.question for p in problems], system) if amateur_tokenizer is not None else None
    batches = [
        make_batch(
            [problems[i].id for i in group],
            [question_sha(problems[i].question) for i in group],
            [prompt_ids[i] for i in group],
            [amateur_prompts[i] for i in group] if amateur_prompts is not None else None,
        )
        for group in groups
    ]
    trainer = _make_trainer(trainer_kwargs, TraceWriter(cache))
    loader = DataLoader(_BatchList(batches), batch_size=1, shuffle=False, collate_fn=_unwrap, num_workers=0)
    trainer.predict(sampler, loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    sampled = [problems[i].id for group in groups for i in group]
    return {
        "generated_tokens": sum(int(r["trace_ids"].numel()) for r in cache.read(sampled)),
        "batches": len(batches),
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "dtype": {"expert": sampler.expert_spec.dtype, "amateur": sampler.amateur_spec.dtype},
        "seed": sampler.settings.seed,
    }


def check_coverage(manifest: Mapping, pair: PairSettings, expert: ModelSpec, amateur: ModelSpec) -> dict:
    """Log a cross-tokenizer cache's coverage (the manifest's ``coverage``) and fail with one line
    when the fraction of steps scored, or the aligned fraction of the expert's candidate mass at
    kept steps (at scored steps when none is kept), is below ``model_pair.min_coverage``."""
    cov = dict(manifest.get("coverage") or {})
    scored = float(cov.get("steps_scored_fraction") or 0.0)
    mass = cov.get("aligned_mass_kept")
    mass = cov.get("aligned_mass_scored") if mass is None else mass
    mass = 0.0 if mass is None else float(mass)
    log.info(
        "coverage (model_pair.alignment=string): %.1f%% of %d steps scored; aligned candidate mass %.1f%% at kept steps",
        100 * scored, int(cov.get("steps") or 0), 100 * mass,
    )
    if min(scored, mass) < pair.min_coverage:
        raise ValueError(
            f"model_pair.min_coverage: expert {expert.display_name()!r} and amateur {amateur.display_name()!r} score "
            f"{scored:.1%} of steps with {mass:.1%} of the expert's candidate mass aligned, below the floor "
            f"{pair.min_coverage:.0%}; pick a closer amateur tokenizer or lower model_pair.min_coverage"
        )
    return cov


def dataclass_dict(obj: Any) -> dict:
    """A dataclass instance as a plain dict."""
    return dataclasses.asdict(obj)


def _make_trainer(trainer_kwargs: Mapping | None, writer: TraceWriter):
    import lightning

    kwargs: dict[str, Any] = dict(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
    )
    user = dict(trainer_kwargs or {})
    callbacks = list(user.pop("callbacks", None) or [])
    # training-only keys a shared trainer config may carry; meaningless for predict
    for k in ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "val_check_interval", "log_every_n_steps"):
        user.pop(k, None)
    kwargs.update(user)
    kwargs["callbacks"] = callbacks + [writer]
    return lightning.Trainer(**kwargs)
