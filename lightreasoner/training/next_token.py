"""Supervised training on (prompt, solution) traces: next-token cross-entropy on the solution.

Used to train the demo's expert/amateur pair from scratch, and by the rejection-sampling SFT
baseline (whole accepted traces, usually on a LoRA-wrapped expert: only parameters with
``requires_grad`` are optimised).

A trace is the chat prompt built exactly as the sampling/evaluation stages build it
(:func:`lightreasoner.data.prompts.encode_prompts`) followed by the solution's tokens and one
end-of-sequence token. The loss is the mean cross-entropy over the solution tokens (EOS
included) of the batch; prompt and padding positions carry label ``-100``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import lightning as L
import torch
from torch import Tensor

from lightreasoner.data import prompts

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt, padding)."""


def encode_trace(tokenizer, question: str, solution: str, system: str | None, add_eos: bool = True) -> dict:
    """Token ids and labels of one trace: ``prompt(question) + solution (+ eos)``.

    The prompt is tokenised on its own, as the sampler and evaluator do, and the solution
    after it, so training sees exactly the ids those stages feed the model.
    Returns ``{"input_ids": list[int], "labels": list[int]}`` (labels = ids on the
    solution, :data:`IGNORE_INDEX` on the prompt).
    """
    prompt_ids = prompts.encode_prompts(tokenizer, [question], system)[0]
    sol_ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("encode_trace: the tokenizer has no eos token; pass add_eos=False")
        sol_ids = sol_ids + [int(tokenizer.eos_token_id)]
    if not sol_ids:
        raise ValueError(f"encode_trace: empty solution for question {question[:60]!r}")
    return {"input_ids": list(prompt_ids) + list(sol_ids), "labels": [IGNORE_INDEX] * len(prompt_ids) + list(sol_ids)}


def encode_traces(
    tokenizer,
    rows: Iterable[tuple[str, str]],
    systems: Sequence[str | None],
    add_eos: bool = True,
) -> list[dict]:
    """One encoded trace per ``(question, solution)`` row and system message (row-major).

    Same ids as :func:`encode_trace` on each pair, tokenised in batches.
    """
    rows = list(rows)
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("encode_traces: the tokenizer has no eos token; pass add_eos=False")
    eos = [int(tokenizer.eos_token_id)] if add_eos else []
    sols = tokenizer([s for _, s in rows], add_special_tokens=False)["input_ids"] if rows else []
    per_system = [prompts.encode_prompts(tokenizer, [q for q, _ in rows], system) for system in systems]
    out = []
    for i, (q, _) in enumerate(rows):
        sol = list(sols[i]) + eos
        if not sol:
            raise ValueError(f"encode_traces: empty solution for question {q[:60]!r}")
        for ps in per_system:
            p = list(ps[i])
            out.append({"input_ids": p + sol, "labels": [IGNORE_INDEX] * len(p) + sol})
    return out


def collate_traces(examples: Sequence[dict], pad_id: int, padding_side: str = "right") -> dict:
    """Pad encoded traces into ``input_ids``, ``attention_mask``, ``labels`` (int64 ``[B, L]``)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected left or right, got {padding_side!r}")
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[i, sl] = torch.tensor(e["labels"], dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def trace_loss(model, batch: dict) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy over labelled positions, and their count.

    Position ids come from the attention mask, so left and right padding give the same loss.
    """
    mask = batch["attention_mask"]
    position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids).logits
    target = batch["labels"][:, 1:]
    logits = logits[:, :-1]
    n = (target != IGNORE_INDEX).sum()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss / n.clamp_min(1), n


class TraceSFTModule(L.LightningModule):
    """Next-token cross-entropy on traces (loss on the solution tokens only).

    Args:
        model: a transformers causal LM (possibly peft-wrapped; only ``requires_grad``
            parameters are optimised).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        max_steps: schedule length in optimizer steps (required for ``linear``/``cosine``).
        schedule: ``constant``, ``linear`` (decay to 0) or ``cosine`` (decay to
            ``min_lr_ratio * lr``) after the warm-up.
        min_lr_ratio: floor of the cosine schedule, as a fraction of ``lr``.
    """

    def __init__(
        self,
        model,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        max_steps: int | None = None,
        schedule: str = "constant",
        min_lr_ratio: float = 0.0,
    ):
        super().__init__()
        if schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"schedule: expected constant, linear or cosine, got {schedule!r}")
        if schedule != "constant" and not max_steps:
            raise ValueError(f"schedule={schedule!r} needs max_steps")
        if lr <= 0:
            raise ValueError(f"lr: expected > 0, got {lr}")
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    def forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        return trace_loss(self.model, batch)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, n = trace_loss(self.model, batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/tokens", n.float(), reduce_fx="sum", batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, n = trace_loss(self.model, batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier after ``step`` optimizer steps."""
        h = self.hparams
        if h.warmup_steps and step < h.warmup_steps:
            return (step + 1) / h.warmup_steps
        if h.schedule == "constant":
            return 1.0
        span = max(1, h.max_steps - h.warmup_steps)
        frac = min(1.0, (step - h.warmup_steps) / span)
        if h.schedule == "linear":
            return max(0.0, 1.0 - frac)
        return h.min_lr_ratio + (1 - h.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("TraceSFTModule: the model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay, betas=tuple(h.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
