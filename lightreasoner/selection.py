"""Read-time selection: beta, alpha and the first eligible step applied to scored traces.

:func:`select` turns scored traces (``docs/DESIGN.md``; from :mod:`trace_cache`) into
:class:`~lightreasoner.records.TraceSample`s: keep step ``t`` iff ``KL_t >= beta`` and
``t >= first_step``; over the stored candidates apply the tail filter at ``alpha`` (which must
be ``>= alpha_min`` of the cached traces) and take the contrastive soft label
(``contrast.soft_label``). Cheap: a beta x alpha grid never touches the models.

Also: :func:`export_samples` / :func:`import_samples` for the published samples format
(JSON Lines: ``prompt_id`` = the question text, ``step``, ``prefix``, ``tokens``,
``token_ids``, ``weights``, ``kl_divergence``; one row per kept step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import contrast
from .files import atomic_write_bytes
from .prompts import SAMPLING_SYSTEM, chat_prompt
from .records import TraceSample

log = logging.getLogger(__name__)

EXPORT_FIELDS = ("prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence")
"""Fields of one row of the published samples format."""


@dataclass(frozen=True)
class SelectionSettings:
    """The read-time keys of the ``sampling`` config group (they never change the scored traces)."""

    beta: float = 0.4
    """Keep step t iff ``KL_t >= beta`` (published 0.4; 0 keeps every eligible step)."""
    alpha: float = 0.2
    """Tail filter: candidates with ``pE >= alpha * max pE`` (published 0.2); ``0 <= alpha <= 1``
    and at least the cached traces' ``alpha_min``, except ``0`` (the paper's "no tail filter"),
    which means the widest set the cache holds: ``alpha_min``, at most ``max_candidates`` per step."""
    first_step: int = 1
    """First eligible step (the published code never keeps step 0)."""

    KEYS = ("beta", "alpha", "first_step")

    @classmethod
    def from_cfg(cls, cfg: Mapping | None, alpha_min: float | None = None) -> "SelectionSettings":
        """From a ``sampling`` mapping (other keys ignored), validated against ``alpha_min``."""
        d = {k: v for k, v in dict(cfg or {}).items() if k in cls.KEYS}
        if d.get("alpha") == 0 and not isinstance(d.get("alpha"), bool):
            if alpha_min is None:
                raise ValueError("sampling.alpha=0 (no tail filter) needs the scored traces' sampling.alpha_min")
            log.info(
                "sampling.alpha=0 (no tail filter): the widest candidate set the traces hold, pE >= %s * max pE, "
                "at most sampling.max_candidates per step; a lower sampling.alpha_min (a re-score) widens it", alpha_min,
            )
            d["alpha"] = float(alpha_min)
        settings = cls(**d)
        settings.validate(alpha_min)
        return settings

    def validate(self, alpha_min: float | None = None) -> None:
        """One ``ValueError`` naming the first invalid field (``sampling.beta`` / ``alpha`` / ``first_step``)."""
        beta, alpha, first_step = self.beta, self.alpha, self.first_step
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"sampling.beta: expected a number >= 0 (0 keeps every step), got {beta!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha <= 1):
            raise ValueError(f"sampling.alpha: expected 0 < alpha <= 1, got {alpha!r}")
        if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
            raise ValueError(f"sampling.first_step: expected an integer >= 0, got {first_step!r}")
        if alpha_min is not None and alpha < alpha_min - 1e-12:
            raise ValueError(
                f"sampling.alpha={alpha} is below alpha_min={alpha_min} of the cached scored traces: candidates with "
                f"pE < alpha_min * max pE were not stored. Re-score with sampling.alpha_min <= {alpha} "
                "(a new trace-cache key; the models run again), or use alpha >= alpha_min"
            )


TARGETS = ("contrast", "expert")
"""``contrast``: softmax(log pE - log pA) over V_t (the method); ``expert``: the expert's own
distribution over V_t, renormalised (the *no contrast* ablation)."""
STEP_RULES = ("kl", "random")
"""``kl``: the steps with KL >= beta (the method); ``random``: as many steps per trace as
``kl`` keeps, drawn uniformly among the eligible ones (the *random steps* ablation)."""


def _label(rec: Mapping, t: int, alpha: float, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ids and weights (zeros dropped) of step ``t``'s training target."""
    off = rec["cand_offsets"]
    a, b = int(off[t]), int(off[t + 1])
    if target == "contrast":
        w = contrast.soft_label(rec["cand_logp_e"][a:b], rec["cand_logp_a"][a:b], rec["max_logp_e"][t], alpha)
    else:
        w = contrast.expert_label(rec["cand_logp_e"][a:b], rec["max_logp_e"][t], alpha)
    nz = w > 0
    return rec["cand_ids"][a:b][nz].long(), w[nz].float()


def _has_label(rec: Mapping, t: int, alpha: float) -> bool:
    """True when step ``t``'s tail set holds at least one stored (shared-id) candidate."""
    off = rec["cand_offsets"]
    a, b = int(off[t]), int(off[t + 1])
    return bool(contrast.tail_mask(rec["cand_logp_e"][a:b], alpha, rec["max_logp_e"][t]).any()) if b > a else False


def _step_generator(seed: int, problem_id: str) -> torch.Generator:
    h = hashlib.sha256(f"{seed}|{problem_id}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(h[:15], 16))


def select(
    records: Sequence[Mapping],
    beta: float,
    alpha: float,
    first_step: int = 1,
    alpha_min: float | None = None,
    target: str = "contrast",
    steps: str = "kl",
    seed: int = 0,
) -> list[TraceSample]:
    """Scored traces -> TraceSamples (one per trace with at least one kept step, input order).

    ``alpha_min`` is the cached traces' (``TraceCache.alpha_min``); ``alpha`` below it is an
    error. A kept step whose tail set is empty (the expert's mode lies outside the shared ids)
    has no target and is dropped. ``target`` (:data:`TARGETS`) and ``steps`` (:data:`STEP_RULES`)
    choose the ablations; ``steps="random"`` draws, per trace, exactly as many steps as ``kl``
    keeps, uniformly among the eligible steps that have a target, from a generator seeded by
    ``seed`` and the problem id (reproducible, independent of trace order).
    """
    SelectionSettings(beta, alpha, first_step).validate(alpha_min)
    if target not in TARGETS:
        raise ValueError(f"method.target: expected one of {list(TARGETS)}, got {target!r}")
    if steps not in STEP_RULES:
        raise ValueError(f"method.steps: expected one of {list(STEP_RULES)}, got {steps!r}")
    out: list[TraceSample] = []
    for rec in records:
        kl = rec["kl"].float()
        chosen = [t for t in contrast.keep_steps(kl, beta, first_step).nonzero().flatten().tolist() if _has_label(rec, t, alpha)]
        if steps == "random" and chosen:
            eligible = torch.tensor([t >= first_step and _has_label(rec, t, alpha) for t in range(kl.numel())])
            chosen = contrast.random_steps(eligible, len(chosen), _step_generator(seed, str(rec["problem_id"]))).tolist()
        if not chosen:
            continue
        labels = [_label(rec, t, alpha, target) for t in chosen]
        steps_t = torch.tensor(chosen, dtype=torch.long)
        prompt = rec["prompt_ids"].long()
        positions = steps_t + len(prompt) - 1
        input_ids = torch.cat([prompt, rec["trace_ids"].long()])[: int(positions[-1]) + 1]
        out.append(
            TraceSample(
                problem_id=str(rec["problem_id"]),
                input_ids=input_ids,
                positions=positions,
                steps=steps_t,
                target_ids=[ids for ids, _ in labels],
                target_w=[w for _, w in labels],
                kl=kl[steps_t].clone(),
            )
        )
    return out


def selection_stats(records: Sequence[Mapping], samples: Sequence[TraceSample]) -> dict:
    """Kept-step fraction, kept steps per trace, mean KL at kept steps, mean soft-label entropy."""
    total_steps = sum(int(r["kl"].numel()) for r in records)
    kept = sum(s.num_steps for s in samples)
    kls = [s.kl for s in samples if s.kl is not None and s.kl.numel()]
    ent = [float(contrast.soft_label_entropy(w)) for s in samples for w in s.target_w]
    return {
        "traces": len(records),
        "traces_with_kept_steps": len(samples),
        "steps": total_steps,
        "kept_steps": kept,
        "kept_step_fraction": kept / total_steps if total_steps else 0.0,
        "kept_steps_per_trace": kept / len(records) if records else 0.0,
        "mean_kl_kept": float(torch.cat(kls).mean()) if kls else 0.0,
        "mean_soft_label_entropy": sum(ent) / len(ent) if ent else 0.0,
        "mean_candidates_per_kept_step": (sum(int(w.numel()) for s in samples for w in s.target_w) / kept) if kept else 0.0,
    }


# ----------------------------------------------------------------------------- export / import
def export_samples(
    samples: Sequence[TraceSample],
    path: str | os.PathLike,
    tokenizer,
    questions: Mapping[str, str],
) -> int:
    """Write the published samples format (one JSON line per kept step), atomically.

    ``questions`` maps problem id -> question text (the published ``prompt_id``). The prompt
    length of each sample is ``positions - steps + 1``. Returns the number of rows.
    """
    lines = []
    for s in samples:
        if s.problem_id not in questions:
            raise KeyError(f"export_samples: no question text for problem {s.problem_id!r}")
        q = questions[s.problem_id]
        kl = s.kl if s.kl is not None else torch.full((s.num_steps,), float("nan"))
        for j in range(s.num_steps):
            t = int(s.steps[j])
            plen = int(s.positions[j]) - t + 1
            trace_before = s.input_ids[plen : plen + t].tolist()
            ids = [int(i) for i in s.target_ids[j].tolist()]
            row = {
                "prompt_id": q,
                "step": t,
                "prefix": tokenizer.decode(trace_before, skip_special_tokens=False),
                "tokens": [tokenizer.decode([i], skip_special_tokens=False) for i in ids],
                "token_ids": ids,
                "weights": [float(w) for w in s.target_w[j].tolist()],
                "kl_divergence": float(kl[j]),
            }
            lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_bytes(Path(path), ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return len(lines)


def import_samples(
    path: str | os.PathLike,
    tokenizer,
    system_prompt: str | None = SAMPLING_SYSTEM,
    vocab_size: int | None = None,
) -> list[TraceSample]:
    """Read the published samples format -> one-step TraceSamples at the last position.

    Each row is re-tokenised from ``chat_prompt(question, system_prompt) + prefix`` (as the
    published fine-tuning code does); its target is ``token_ids`` with ``weights``
    (renormalised to sum 1). A malformed row raises one ``ValueError`` naming the line and field;
    nothing is returned then. ``vocab_size`` (the model's logit width) bounds the token ids.
    """
    path = Path(path)
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            rows.append((n, _check_row(row, path, n, vocab_size)))
    out = []
    for n, row in rows:
        text = chat_prompt(tokenizer, row["prompt_id"], system_prompt) + row["prefix"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"{path}:{n}: prompt_id/prefix tokenise to nothing")
        w = torch.tensor(row["weights"], dtype=torch.float64)
        w = (w / w.sum()).float()
        sha = hashlib.sha256(row["prompt_id"].encode("utf-8")).hexdigest()[:16]
        out.append(
            TraceSample(
                problem_id=f"import/{sha}",
                input_ids=torch.tensor(ids, dtype=torch.long),
                positions=torch.tensor([len(ids) - 1], dtype=torch.long),
                steps=torch.tensor([row["step"]], dtype=torch.long),
                target_ids=[torch.tensor(row["token_ids"], dtype=torch.long)],
                target_w=[w],
                kl=torch.tensor([row["kl_divergence"]], dtype=torch.float32),
            )
        )
    return out


def _check_row(row: Any, path: Path, n: int, vocab_size: int | None) -> dict:
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{path}:{n}: field {field!r} {why}")

    if not isinstance(row, dict):
        raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
    for field in ("prompt_id", "step", "prefix", "token_ids", "weights", "kl_divergence"):
        if field not in row:
            raise bad(field, "is missing")
    if not isinstance(row["prompt_id"], str) or not row["prompt_id"]:
        raise bad("prompt_id", "must be the question text (a non-empty string)")
    if not isinstance(row["prefix"], str):
        raise bad("prefix", "must be a string")
    if isinstance(row["step"], bool) or not isinstance(row["step"], int) or row["step"] < 0:
        raise bad("step", f"must be an integer >= 0, got {row['step']!r}")
    ids, w = row["token_ids"], row["weights"]
    if not isinstance(ids, list) or not ids:
        raise bad("token_ids", "must be a non-empty list of integers")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0 or (vocab_size is not None and i >= vocab_size):
            raise bad("token_ids", f"holds an invalid id {i!r}" + (f" (vocabulary width {vocab_size})" if vocab_size else ""))
    if len(set(ids)) != len(ids):
        raise bad("token_ids", "holds duplicate ids")
    if not isinstance(w, list) or len(w) != len(ids):
        raise bad("weights", f"must be a list as long as token_ids ({len(ids)})")
    for x in w:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise bad("weights", f"holds an invalid weight {x!r} (need finite, >= 0)")
    total = float(sum(w))
    if not abs(total - 1.0) <= 1e-3:
        raise bad("weights", f"must sum to 1 (got {total:.6f})")
    kl = row["kl_divergence"]
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not math.isfinite(kl):
        raise bad("kl_divergence", f"must be a finite number, got {kl!r}")
    if "tokens" in row and (not isinstance(row["tokens"], list) or len(row["tokens"]) != len(ids)):
        raise bad("tokens", f"must be a list as long as token_ids ({len(ids)})")
    return row
