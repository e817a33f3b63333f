"""Cross-tokenizer contrast (``model_pair.alignment=string``): pure alignment math, no models.

When expert and amateur tokenize differently, ``log pE − log pA`` is defined only where both
models predict *the same next text* from *the same context*:

1. **Vocabularies** are aligned by token string. Each token is normalised to the bytes it
   stands for (:func:`token_bytes`: the byte-level BPE alphabet ``Ġ``/``Ċ``… of GPT-2-style
   tokenizers mapped back to bytes, SentencePiece's ``▁`` to a space and its ``<0xNN>``
   byte-fallback tokens to one byte; added/special tokens by their content), and expert id
   ``v`` is aligned to the amateur id with the same bytes (:class:`VocabAlignment`).
2. **Steps** are compared only at *shared boundaries*: the expert's generated text is
   tokenised by the amateur (one teacher-forced pass of the amateur over it), and expert step
   ``t`` is scored iff the bytes of ``y_<t`` end exactly where some amateur prefix ``a_<j``
   ends (character offsets, measured in bytes), so ``pA`` at amateur position ``j`` predicts
   the text that ``pE_t`` predicts (:meth:`TokenAligner.amateur_inputs`).
3. **KL and candidates** at a scored step run over the expert ids that have an aligned amateur
   token (:func:`aligned_kl`, :func:`aligned_candidates`), unrenormalised as on the shared
   path; steps that are not scored carry ``KL = NaN`` and no candidates, so no ``beta`` keeps
   them.

Coverage (:func:`coverage`) reports the fraction of steps scored and the fraction of the
expert's candidate probability mass (``pE >= alpha_min * max pE``) that is aligned, at kept
steps. Pairs that share a tokenizer (``models.check_pair_tokenizers`` passes) never come here:
the amateur then reads the expert's own ids, exactly as ``alignment=shared``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from lightreasoner.core import contrast

__all__ = [
    "ALIGNMENT_KEYS",
    "TokenAligner",
    "VocabAlignment",
    "aligned_candidates",
    "aligned_kl",
    "boundary_positions",
    "coverage",
    "token_bytes",
]

ALIGNMENT_KEYS = ("aligned_mass",)
"""Record keys a scored trace has in addition under ``alignment=string``: ``aligned_mass``
float32 ``[T]``, the aligned fraction of the expert's candidate mass per step (NaN where the
step is not scored)."""

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode alphabet for bytes, inverted (character -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kinds(tokenizer) -> set[str]:
    """Types of the fast tokenizer's decoder chain (``ByteLevel``, ``Metaspace``, ``Replace``, ...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"model_pair.alignment=string: needs a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}"
        )
    node = json.loads(backend.to_str()).get("decoder") or {}
    kinds: set[str] = set()
    stack = [node]
    while stack:
        d = stack.pop()
        if not isinstance(d, dict):
            continue
        kinds.add(str(d.get("type")))
        if d.get("type") == "Replace" and "▁" in json.dumps(d.get("pattern"), ensure_ascii=False):
            kinds.add("Metaspace")
        stack.extend(d.get("decoders") or [])
    return kinds


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each id of ``tokenizer`` stands for (index = id, up to ``len(tokenizer)``).

    Byte-level BPE tokens map back through GPT-2's byte alphabet; SentencePiece-style tokens
    (``Metaspace`` decoder) turn ``▁`` into a space and ``<0xNN>`` into that byte; other
    vocabularies (word/char level) are taken as UTF-8 text. Added tokens (``<|im_end|>`` …)
    stand for their content, as text containing them is tokenised back to them. The unknown
    token and ids without a token are ``None`` (their bytes are unknown).
    """
    kinds = _decoder_kinds(tokenizer)
    byte_level = "ByteLevel" in kinds
    metaspace = "Metaspace" in kinds
    decoder = _byte_decoder()
    vocab = tokenizer.get_vocab()
    added = {int(i): t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    unk = tokenizer.unk_token_id
    width = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    out: list[bytes | None] = [None] * width
    for tok, i in vocab.items():
        if i in added or i == unk:
            continue
        if byte_level:
            try:
                out[i] = bytes(decoder[c] for c in tok)
            except KeyError:  # not in the byte alphabet: take it as text
                out[i] = tok.encode("utf-8")
        elif metaspace:
            m = _BYTE_FALLBACK.match(tok)
            out[i] = bytes([int(m.group(1), 16)]) if m else tok.replace("▁", " ").encode("utf-8")
        else:
            out[i] = tok.encode("utf-8")
    for i, content in added.items():
        if i != unk and 0 <= i < width:
            out[i] = content.encode("utf-8")
    return out


@dataclass
class VocabAlignment:
    """Expert id -> amateur id with the same bytes (``-1``: none)."""

    expert_to_amateur: Tensor
    """int64 ``[W]``: the aligned amateur id of expert ids ``0 .. W-1`` (``W`` = one past the
    last aligned expert id; ids from ``W`` on have no aligned token)."""
    expert_tokens: int
    """Expert ids with known bytes."""
    aligned: int
    """Expert ids with an aligned amateur token."""

    @classmethod
    def build(cls, expert_bytes: Sequence[bytes | None], amateur_bytes: Sequence[bytes | None]) -> "VocabAlignment":
        by_bytes: dict[bytes, int] = {}
        for j, b in enumerate(amateur_bytes):
            if b is not None and b not in by_bytes:  # the lowest id of duplicate strings
                by_bytes[b] = j
        vmap = [by_bytes.get(b, -1) if b is not None else -1 for b in expert_bytes]
        last = max((i for i, j in enumerate(vmap) if j >= 0), default=-1)
        return cls(
            expert_to_amateur=torch.tensor(vmap[: last + 1], dtype=torch.long),
            expert_tokens=sum(b is not None for b in expert_bytes),
            aligned=sum(j >= 0 for j in vmap),
        )

    @classmethod
    def identity(cls, width: int) -> "VocabAlignment":
        """Every id aligned to itself (two models over one tokenizer, ``width`` shared ids)."""
        return cls(torch.arange(int(width), dtype=torch.long), int(width), int(width))

    @property
    def fraction(self) -> float:
        """Aligned share of the expert's tokens."""
        return self.aligned / self.expert_tokens if self.expert_tokens else 0.0


def _offsets(ids: Sequence[int], table: Sequence[bytes | None]) -> list[int | None]:
    """Byte offset where each token starts, plus the end (``None`` after a token of unknown bytes)."""
    out: list[int | None] = [0]
    pos: int | None = 0
    for i in ids:
        b = table[i] if 0 <= i < len(table) else None
        pos = None if (pos is None or b is None) else pos + len(b)
        out.append(pos)
    return out


def _joined(ids: Sequence[int], table: Sequence[bytes | None]) -> bytes:
    """The bytes of ``ids`` up to the first token of unknown bytes."""
    parts = []
    for i in ids:
        b = table[i] if 0 <= i < len(table) else None
        if b is None:
            break
        parts.append(b)
    return b"".join(parts)


def boundary_positions(
    expert_ids: Sequence[int],
    amateur_ids: Sequence[int],
    expert_table: Sequence[bytes | None],
    amateur_table: Sequence[bytes | None],
) -> list[int | None]:
    """For each expert step ``t`` (predicting ``expert_ids[t]``), the amateur position ``j`` whose
    prefix ``amateur_ids[:j]`` covers exactly the bytes of ``expert_ids[:t]`` (``None``: ``y_<t``
    does not end on an amateur token boundary, or the two byte strings differ before it).

    ``j`` ranges over ``0 .. len(amateur_ids)``; of several (zero-length amateur tokens) the
    first is taken.
    """
    e_off = _offsets(expert_ids, expert_table)
    a_off = _offsets(amateur_ids, amateur_table)
    e_bytes, a_bytes = _joined(expert_ids, expert_table), _joined(amateur_ids, amateur_table)
    common = 0
    for x, y in zip(e_bytes, a_bytes):
        if x != y:
            break
        common += 1
    at: dict[int, int] = {}
    for j, off in enumerate(a_off):
        if off is not None and off not in at:
            at[off] = j
    out: list[int | None] = []
    for t in range(len(expert_ids)):
        off = e_off[t]
        out.append(at.get(off) if off is not None and off <= common else None)
    return out


class TokenAligner:
    """Both tokenizers' byte tables, their vocabulary alignment, and the amateur's view of a trace.

    Pure (tokenizers only, no models): :meth:`amateur_inputs` turns an expert trace into the
    amateur's tokens of the same text and, per expert step, the amateur position that scores it.
    """

    def __init__(self, expert_tokenizer, amateur_tokenizer) -> None:
        self.expert_tokenizer = expert_tokenizer
        self.amateur_tokenizer = amateur_tokenizer
        self.expert_bytes = token_bytes(expert_tokenizer)
        self.amateur_bytes = token_bytes(amateur_tokenizer)
        self.vocab = VocabAlignment.build(self.expert_bytes, self.amateur_bytes)

    def text(self, expert_ids: Sequence[int]) -> str:
        """The text of an expert trace (tokens of unknown bytes as the tokenizer decodes them)."""
        parts = []
        for i in expert_ids:
            b = self.expert_bytes[i] if 0 <= i < len(self.expert_bytes) else None
            parts.append(b if b is not None else self.expert_tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
        return b"".join(parts).decode("utf-8", errors="replace")

    def amateur_inputs(self, expert_ids: Sequence[int]) -> tuple[list[int], list[int | None]]:
        """``(amateur_ids, positions)``: the amateur's tokens of the trace's text, and for each
        expert step the amateur position scoring it (:func:`boundary_positions`)."""
        ids = [int(i) for i in expert_ids]
        a_ids = self.amateur_tokenizer(self.text(ids), add_special_tokens=False)["input_ids"]
        return list(a_ids), boundary_positions(ids, a_ids, self.expert_bytes, self.amateur_bytes)


# ----------------------------------------------------------------------------- the aligned math


def _aligned_logp_a(logp_a: Tensor, vmap: Tensor) -> tuple[Tensor, Tensor]:
    """``log pA`` at each expert id's aligned amateur id ``[..., W]``, and the aligned mask ``[W]``."""
    aligned = vmap >= 0
    idx = vmap.clamp_min(0).to(logp_a.device)
    la = logp_a.float().index_select(-1, idx)
    return la, aligned.to(logp_a.device)


def aligned_kl(logp_e: Tensor, logp_a: Tensor, vmap: Tensor) -> Tensor:
    """``KL(pE || pA)`` over the expert ids with an aligned amateur token, no renormalisation.

    ``logp_e`` ``[..., V_e]`` and ``logp_a`` ``[..., V_a]`` are full-width log-probabilities of
    the same step; ``vmap`` is :attr:`VocabAlignment.expert_to_amateur`. With the identity map
    over the shared width this is :func:`lightreasoner.core.contrast.kl_shared`.
    """
    w = min(int(vmap.numel()), logp_e.shape[-1])
    vmap = vmap[:w]
    la, aligned = _aligned_logp_a(logp_a, vmap)
    le = logp_e[..., :w].float()
    pe = le.exp()
    term = torch.where((pe > 0) & aligned, pe * (le - la), torch.zeros_like(pe))
    return term.sum(-1)


def aligned_candidates(
    logp_e: Tensor,
    logp_a: Tensor,
    vmap: Tensor,
    alpha_min: float,
    max_candidates: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The candidate set of :func:`lightreasoner.core.contrast.top_candidates` restricted to aligned
    expert ids, and the aligned share of the expert's candidate mass.

    Candidates are expert ids ``v`` with an aligned amateur token and ``pE(v) >= alpha_min *
    max pE`` (max over the expert's full width), at most ``max_candidates``, most probable first;
    ``cand_logp_a`` is ``log pA`` of the aligned amateur token. ``aligned_mass`` ``[...]`` is
    ``sum pE`` over the aligned ids of ``{v : pE(v) >= alpha_min * max pE}`` divided by ``sum pE``
    over the whole set. Returns ``ids, cand_logp_e, cand_logp_a, valid, max_logp_e,
    aligned_mass``; with the identity map the first five equal ``top_candidates``.
    """
    w = min(int(vmap.numel()), logp_e.shape[-1])
    vmap = vmap[:w]
    la, aligned = _aligned_logp_a(logp_a, vmap)
    max_logp_e = logp_e.max(dim=-1).values.float()
    threshold = max_logp_e.unsqueeze(-1) + math.log(alpha_min) - 1e-6
    n_aligned = int(aligned.sum())
    k = max(1, min(int(max_candidates), n_aligned))
    le = logp_e[..., :w].float()
    masked = le if n_aligned == w else le.masked_fill(~aligned, float("-inf"))
    top_lpe, ids = masked.topk(k, dim=-1)
    lpa = la.gather(-1, ids)
    valid = (top_lpe >= threshold) & torch.isfinite(top_lpe)
    plausible = logp_e.float() >= threshold
    pe = logp_e.float().exp()
    total = (pe * plausible).sum(-1)
    kept = (pe[..., :w] * (plausible[..., :w] & aligned)).sum(-1)
    aligned_mass = torch.where(total > 0, kept / total.clamp_min(1e-30), torch.zeros_like(total))
    return ids, top_lpe, lpa, valid, max_logp_e, aligned_mass


# ----------------------------------------------------------------------------- coverage


def coverage(records: Sequence[Mapping], beta: float, first_step: int = 1) -> dict:
    """Coverage of cross-tokenizer scored traces: steps scored, and the aligned share of the
    expert's candidate mass at the steps ``beta`` keeps and at every scored step.

    Returns ``{"steps", "steps_scored", "steps_scored_fraction", "kept_steps",
    "aligned_mass_kept", "aligned_mass_scored"}``; the mass figures are means over steps (None over no step).
    """
    steps = scored = kept = 0
    mass_kept: list[Tensor] = []
    mass_scored: list[Tensor] = []
    for r in records:
        kl = r["kl"].float()
        ok = ~torch.isnan(kl)
        keep = contrast.keep_steps(kl, beta, first_step) & ok
        mass = r["aligned_mass"].float() if "aligned_mass" in r else torch.where(ok, torch.ones_like(kl), torch.full_like(kl, float("nan")))
        steps += int(kl.numel())
        scored += int(ok.sum())
        kept += int(keep.sum())
        mass_scored.append(mass[ok])
        mass_kept.append(mass[keep])
    ms = torch.cat(mass_scored) if mass_scored else torch.zeros(0)
    mk = torch.cat(mass_kept) if mass_kept else torch.zeros(0)
    mean = lambda x: float(x.mean()) if x.numel() else None  # noqa: E731
    return {
        "steps": steps,
        "steps_scored": scored,
        "steps_scored_fraction": scored / steps if steps else 0.0,
        "kept_steps": kept,
        "aligned_mass_kept": mean(mk),
        "aligned_mass_scored": mean(ms),
    }
