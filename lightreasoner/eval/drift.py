"""The drift guard: is the tuned expert drifting away from its base, or gaming the amateur?

A target ``log pE - log pA`` can reward text that merely lowers the amateur's probability. The
guard (:class:`DriftGuard`, a Lightning ``Callback`` the distillation stage adds when
``drift.enabled``) measures, before training, every ``drift.every_n_updates`` optimizer updates
and at the end, on problems the fine-tune never sees (:class:`HeldOut`, prepared by the run:
:func:`lightreasoner.run.heldout.prepare_heldout`; the guard runs no stage itself):

- ``kl_tuned_base``: ``KL(tuned || base)`` per token, teacher-forced over the base expert's own
  traces of the held-out problems (the base is the same LoRA model with its adapters disabled,
  peft's ``disable_adapter()``), mean over trace tokens;
- ``implausible_mass`` (and ``implausible_mass_base``): the probability the tuned (base) model
  puts, at those steps, on tokens the base expert gives ``pE < drift.junk_pe``;
- ``ppl_tuned`` / ``ppl_base`` / ``ppl_ratio``: perplexity on the held-out gold solutions (the
  dataset's solution text after the training prompt);
- ``val_accuracy``: greedy accuracy on the first ``drift.val_problems`` held-out problems (the
  evaluation prompt and scorer), with early stopping (``drift.early_stopping_patience``) and the
  best LoRA weights kept (``drift.keep_best``; the measurement before training is the base, so
  a fine-tune that never beats it ends as the base).

The target-side ``junk_rate`` (share of the kept steps' soft-label mass on candidates with base
``pE < drift.junk_pe``, :func:`lightreasoner.selection.select.junk_rate`) comes from the selection.
Each figure of the kept model is compared with its limit (``drift.max_kl``,
``drift.max_ppl_ratio``, ``drift.max_junk_rate``); :meth:`DriftGuard.summary` says which it passed
(the run's ``summary.json`` ``drift`` section and its printed summary). Everything is logged to
the run's Lightning logger (``drift/*``, ``val/accuracy``; W&B offline works through it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from lightreasoner.core.config import settings_from_cfg
from lightreasoner.data.records import Problem

log = logging.getLogger("lightreasoner")

__all__ = ["DriftSettings", "HeldOut", "DriftGuard"]

SOLUTION_FIELDS = {"gsm8k": "answer", "generic": "solution", "minerva_math": "solution"}
"""The gold-solution field of a dataset's JSONL rows by row format (``drift.solution_field``
null); GSM8K's ``answer`` is its worked solution ending in ``#### <answer>``."""

LIMITS = {"kl_tuned_base": "max_kl", "ppl_ratio": "max_ppl_ratio", "junk_rate": "max_junk_rate"}
"""Measured figure -> the ``drift`` key holding its limit."""


@dataclass
class DriftSettings:
    """The ``drift`` config group (``conf/drift/``): the guard's held-out data, schedule and limits."""

    enabled: bool = False
    """Run the guard during the fine-tune (off: no held-out measurement, the fine-tune as ever;
    the selection's ``junk_rate`` is reported either way)."""
    every_n_updates: int = 10
    """Measure every N optimizer updates (also before the first and after the last)."""
    split: str = "validation"
    """The held-out problems' split. The training split itself is allowed: then the problems
    after the training ones (``dataset.max_problems``) are held out."""
    problems: int = 16
    """Held-out problems whose base-expert traces (``KL(tuned || base)``, implausible mass) and
    gold solutions (perplexity) are measured (>= 1)."""
    val_problems: int = 16
    """Validation accuracy on the first N held-out problems (0: no accuracy, no early stopping)."""
    val_max_new_tokens: int | None = None
    """Generation limit of the validation accuracy (null: ``eval.max_new_tokens``, else the
    dataset's ``max_new_tokens``)."""
    batch_size: int = 8
    """Sequences per forward pass / problems per generation batch."""
    solution_field: str | None = None
    """JSONL field of the gold solution text (null: by row format, :data:`SOLUTION_FIELDS`; a
    format not listed there has no perplexity, which the summary says)."""
    early_stopping_patience: int | None = None
    """Stop after this many measurements in a row without a new best validation accuracy
    (null: never stop early). Needs ``val_problems`` > 0."""
    keep_best: bool = True
    """At the end, restore the LoRA weights of the best validation accuracy (the earliest of
    ties; the base when no update beat it); the adapter saved is then that model."""
    junk_pe: float = 0.01
    """A token is implausible to the base expert when its ``pE`` is below this (``0 < junk_pe < 1``)."""
    max_kl: float | None = None
    """Limit on ``kl_tuned_base`` (nats per token; null: none)."""
    max_ppl_ratio: float | None = None
    """Limit on ``ppl_tuned / ppl_base`` on the held-out gold solutions (null: none)."""
    max_junk_rate: float | None = None
    """Limit on the selection's ``junk_rate`` (0-1; null: none)."""

    @classmethod
    def from_cfg(cls, cfg: Mapping | Any | None) -> "DriftSettings":
        """From a ``drift`` mapping (None: the defaults); one ``ValueError`` naming the first invalid key."""
        return settings_from_cfg(cls, cfg, "drift")

    def validate(self) -> None:
        def integer(name: str, low: int, null: bool = False) -> None:
            v = getattr(self, name)
            if v is None and null:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"drift.{name}: expected an integer >= {low}{' or null' if null else ''}, got {v!r}")

        for name in ("enabled", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"drift.{name}: expected true or false, got {getattr(self, name)!r}")
        integer("every_n_updates", 1)
        integer("problems", 1)
        integer("val_problems", 0)
        integer("val_max_new_tokens", 1, null=True)
        integer("batch_size", 1)
        integer("early_stopping_patience", 1, null=True)
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"drift.split: expected a split name, got {self.split!r}")
        if self.solution_field is not None and (not isinstance(self.solution_field, str) or not self.solution_field):
            raise ValueError(f"drift.solution_field: expected a JSONL field name or null, got {self.solution_field!r}")
        if self.early_stopping_patience is not None and self.val_problems == 0:
            raise ValueError("drift.early_stopping_patience: needs drift.val_problems > 0 (it stops on validation accuracy)")
        jp = self.junk_pe
        if isinstance(jp, bool) or not isinstance(jp, (int, float)) or not 0 < jp < 1:
            raise ValueError(f"drift.junk_pe: expected 0 < junk_pe < 1, got {jp!r}")
        for name in LIMITS.values():
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise ValueError(f"drift.{name}: expected a number >= 0 or null, got {v!r}")

    def limits(self) -> dict[str, float]:
        """Measured figure -> its limit, for the limits that are set."""
        return {k: float(getattr(self, v)) for k, v in LIMITS.items() if getattr(self, v) is not None}


@dataclass
class HeldOut:
    """What the guard measures on (token ids, built once before the fit)."""

    traces: list[tuple[list[int], list[int]]]
    """``(prompt ids, trace ids)`` of the base expert's traces of the held-out problems."""
    solutions: list[tuple[list[int], list[int]]] = field(default_factory=list)
    """``(prompt ids, gold solution ids)`` (empty: no perplexity)."""
    val_problems: list[Problem] = field(default_factory=list)
    """Problems of the validation accuracy (empty: none)."""
    val_prompts: list[list[int]] = field(default_factory=list)
    """Their evaluation prompts."""
    val_max_new_tokens: int = 512
    stop_ids: list[int] = field(default_factory=list)
    """End-of-sequence ids of the validation generation besides the model's (``eval.stop_tokens``)."""
    verify_timeout_s: float = 5.0
    junk_rate: float | None = None
    """The selection's target-side junk rate (:func:`lightreasoner.selection.select.junk_rate`)."""
    note: str | None = None
    """Why a measurement is missing (e.g. no gold solutions), for the summary."""


# --------------------------------------------------------------------------- measurements


def _batches(seqs: Sequence[tuple[list[int], list[int]]], size: int):
    for i in range(0, len(seqs), size):
        yield seqs[i : i + size]


def _padded(chunk: Sequence[tuple[list[int], list[int]]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + continuation`` rows; ``(input_ids, attention_mask, rows, cols)``
    with ``(rows, cols)`` the positions whose logits predict the continuation's tokens, and the
    predicted ids are ``input_ids[rows, cols + 1]``."""
    seqs = [list(p) + list(c) for p, c in chunk]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), int(pad_id), dtype=torch.long)
    mask = torch.zeros_like(ids)
    rows, cols = [], []
    for r, ((p, c), s) in enumerate(zip(chunk, seqs)):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
        cols.append(torch.arange(len(p) - 1, len(s) - 1))
        rows.append(torch.full((len(c),), r, dtype=torch.long))
    return ids.to(device), mask.to(device), torch.cat(rows).to(device), torch.cat(cols).to(device)


def _logp(model, ids, mask, rows, cols) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    return torch.log_softmax(out.logits[rows, cols].float(), dim=-1)


@torch.no_grad()
def trace_drift(peft_model, traces: Sequence[tuple[list[int], list[int]]], pad_id: int, junk_pe: float, batch_size: int = 8) -> dict:
    """``kl_tuned_base`` (mean over trace tokens of ``KL(tuned || base)`` over the full width),
    ``implausible_mass`` / ``implausible_mass_base`` (mean probability on tokens with base
    ``pE < junk_pe``) over the held-out traces. The base is ``peft_model`` with its adapters off."""
    from lightreasoner.core.contrast import kl_shared

    device = next(peft_model.parameters()).device
    kl_sum, junk_t, junk_b, n = 0.0, 0.0, 0.0, 0
    for chunk in _batches(traces, batch_size):
        ids, mask, rows, cols = _padded(chunk, pad_id, device)
        tuned = _logp(peft_model, ids, mask, rows, cols)
        with peft_model.disable_adapter():
            base = _logp(peft_model, ids, mask, rows, cols)
        kl_sum += float(kl_shared(tuned, base).sum())
        implausible = base < math.log(junk_pe)
        junk_t += float(torch.where(implausible, tuned.exp(), torch.zeros_like(tuned)).sum())
        junk_b += float(torch.where(implausible, base.exp(), torch.zeros_like(base)).sum())
        n += int(rows.numel())
    if not n:
        return {}
    return {"kl_tuned_base": kl_sum / n, "implausible_mass": junk_t / n, "implausible_mass_base": junk_b / n}


@torch.no_grad()
def solution_perplexity(peft_model, solutions: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8) -> dict:
    """``ppl_tuned``, ``ppl_base`` (``exp`` of the mean negative log-likelihood per solution token,
    given the prompt) and ``ppl_ratio = ppl_tuned / ppl_base``."""
    device = next(peft_model.parameters()).device
    nll_t, nll_b, n = 0.0, 0.0, 0
    for chunk in _batches([s for s in solutions if s[1]], batch_size):
        ids, mask, rows, cols = _padded(chunk, pad_id, device)
        target = ids[rows, cols + 1].unsqueeze(-1)
        nll_t -= float(_logp(peft_model, ids, mask, rows, cols).gather(-1, target).sum())
        with peft_model.disable_adapter():
            nll_b -= float(_logp(peft_model, ids, mask, rows, cols).gather(-1, target).sum())
        n += int(rows.numel())
    if not n:
        return {}
    ppl_t, ppl_b = math.exp(nll_t / n), math.exp(nll_b / n)
    return {"ppl_tuned": ppl_t, "ppl_base": ppl_b, "ppl_ratio": ppl_t / ppl_b}


def validation_accuracy(model, tokenizer, heldout: HeldOut, batch_size: int = 8) -> float:
    """Greedy accuracy of ``model`` on the held-out validation problems (evaluation prompt and scorer)."""
    from lightreasoner.eval.evaluate import score_row
    from lightreasoner.generation import GenerationSettings, HFEngine
    from lightreasoner.models.spec import eos_token_ids

    eos = sorted(set(eos_token_ids(tokenizer, model)) | set(heldout.stop_ids))
    engine = HFEngine(model, tokenizer, eos_token_ids=eos)
    gens = engine.generate(heldout.val_prompts, GenerationSettings(heldout.val_max_new_tokens), batch_size, progress=False)
    rows = [score_row(p, g, heldout.verify_timeout_s) for p, g in zip(heldout.val_problems, gens)]
    return sum(r["correct"] for r in rows) / len(rows)


# --------------------------------------------------------------------------- the callback


class DriftGuard(Callback):
    """Measures the drift of the LoRA model a :class:`~lightreasoner.training.distill.DistillModule`
    trains (see the module doc); early stopping and best-weights keeping on validation accuracy.

    Single-process fits only. Its state (measurements, best score and weights) is part of
    Lightning checkpoints, so a resumed fit keeps them.
    """

    def __init__(self, settings: DriftSettings, heldout: HeldOut, tokenizer):
        self.settings = settings
        self.heldout = heldout
        self.tokenizer = tokenizer
        self.history: list[dict] = []
        self.best_step: int | None = None
        self.best_accuracy: float | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.bad_measurements = 0
        self.stopped_early = False
        self.kept_step: int | None = None

    # ------------------------------------------------------------------ measuring
    def measure(self, pl_module, step: int) -> dict:
        """All figures of the model as it is now (eval mode, no gradients), recorded and logged."""
        model = pl_module.model
        was_training = model.training
        model.eval()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        try:
            row: dict[str, Any] = {"step": int(step)}
            row.update(trace_drift(model, self.heldout.traces, pad, self.settings.junk_pe, self.settings.batch_size))
            row.update(solution_perplexity(model, self.heldout.solutions, pad, self.settings.batch_size))
            if self.heldout.val_problems:
                row["val_accuracy"] = validation_accuracy(model, self.tokenizer, self.heldout, self.settings.batch_size)
        finally:
            model.train(was_training)
        self.history.append(row)
        logger = pl_module.logger if pl_module._trainer is not None else None
        if logger:
            metrics = {("val/accuracy" if k == "val_accuracy" else f"drift/{k}"): v for k, v in row.items() if k != "step"}
            logger.log_metrics(metrics, step=int(step))
        log.info("drift at update %d: %s", step, json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
        return row

    def _track_best(self, pl_module, row: dict) -> None:
        acc = row.get("val_accuracy")
        if acc is None:
            return
        if self.best_accuracy is None or acc > self.best_accuracy:
            self.best_accuracy, self.best_step, self.bad_measurements = acc, row["step"], 0
            if self.settings.keep_best:
                self.best_weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        else:
            self.bad_measurements += 1

    def _measure_and_track(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if self.history and self.history[-1]["step"] == step:
            return
        row = self.measure(pl_module, step)
        self._track_best(pl_module, row)
        patience = self.settings.early_stopping_patience
        if patience is not None and self.bad_measurements >= patience and not trainer.should_stop:
            log.info("drift: no better validation accuracy in %d measurements; stopping at update %d", patience, step)
            self.stopped_early = True
            trainer.should_stop = True

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            raise ValueError("drift.enabled: the drift guard runs in single-process fits only (trainer.devices=1)")
        if self.heldout.junk_rate is not None and pl_module.logger:
            pl_module.logger.log_metrics({"drift/junk_rate": float(self.heldout.junk_rate)}, step=int(trainer.global_step))

    def on_train_start(self, trainer, pl_module) -> None:
        self._measure_and_track(trainer, pl_module)  # the base (or where a resumed fit stands)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step and step % self.settings.every_n_updates == 0:
            self._measure_and_track(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._measure_and_track(trainer, pl_module)
        self.kept_step = int(trainer.global_step)
        if self.settings.keep_best and self.best_weights is not None and self.best_step != self.kept_step:
            params = dict(pl_module.named_parameters())
            with torch.no_grad():
                for name, value in self.best_weights.items():
                    params[name].copy_(value.to(params[name].device))
            self.kept_step = self.best_step
            log.info("drift: kept the LoRA weights of update %d (validation accuracy %.4f)", self.best_step, self.best_accuracy)
        summary = self.summary()
        if pl_module.logger:
            pl_module.logger.log_metrics({"drift/beyond_limit": float(len(summary["exceeded"]))}, step=int(trainer.global_step))
        for e in summary["exceeded"]:
            log.warning("drift: %s = %.4g is beyond its limit drift.%s = %.4g", e["figure"], e["value"], LIMITS[e["figure"]], e["limit"])

    # ------------------------------------------------------------------ results
    def summary(self) -> dict:
        """The ``drift`` section of the run summary: the kept model's figures (``final``), the
        limits, those exceeded, the best validation step and every measurement."""
        final: dict[str, Any] = {}
        kept = next((r for r in self.history if r["step"] == self.kept_step), self.history[-1] if self.history else None)
        if kept is not None:
            final = {k: v for k, v in kept.items() if k != "step"}
        if self.heldout.junk_rate is not None:
            final["junk_rate"] = float(self.heldout.junk_rate)
        limits = self.settings.limits()
        exceeded = [
            {"figure": k, "value": float(final[k]), "limit": lim} for k, lim in limits.items() if k in final and final[k] > lim
        ]
        return {
            "kept_step": self.kept_step,
            "final": final,
            "limits": limits,
            "exceeded": exceeded,
            "within_limits": not exceeded,
            "best_step": self.best_step,
            "best_val_accuracy": self.best_accuracy,
            "stopped_early": self.stopped_early,
            "every_n_updates": self.settings.every_n_updates,
            "heldout_traces": len(self.heldout.traces),
            "heldout_solutions": len(self.heldout.solutions),
            "val_problems": len(self.heldout.val_problems),
            "note": self.heldout.note,
            "measurements": list(self.history),
        }

    def state_dict(self) -> dict:
        return {
            "history": self.history, "best_step": self.best_step, "best_accuracy": self.best_accuracy,
            "best_weights": self.best_weights, "bad_measurements": self.bad_measurements, "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.best_step = state_dict.get("best_step")
        self.best_accuracy = state_dict.get("best_accuracy")
        self.best_weights = state_dict.get("best_weights")
        self.bad_measurements = int(state_dict.get("bad_measurements", 0))
        self.stopped_early = bool(state_dict.get("stopped_early", False))
