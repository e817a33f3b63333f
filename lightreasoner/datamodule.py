"""Training batches of selected samples, counted in kept steps.

A :class:`~lightreasoner.records.TraceSample` holds one trace and the positions of its kept
steps. Two layouts feed the same kept steps to the distillation module:

* **packed** (default): one sequence per trace, the loss taken at all its kept positions in
  one forward pass. Whole traces are grouped into micro-batches of about ``steps_per_batch``
  kept steps.
* **unpacked** (``packing=False``, the published layout): one example per kept step (the
  trace truncated after that step's position, :meth:`TraceSample.split_steps`), exactly
  ``steps_per_batch`` examples per micro-batch (the last one may hold fewer).

Batch size counts kept steps in both layouts. Micro-batches are grouped into optimizer updates
of ``accumulate_grad_batches`` each (must equal the Trainer's), and every micro-batch carries
``update_steps``, the number of kept steps in its whole update, so that the distillation loss
can be normalised to the mean over the update's kept steps, accumulation included: with
Lightning dividing each micro-batch loss by ``accumulate_grad_batches``, the micro-batch loss
is ``sum(per-step losses) * accumulate_grad_batches / update_steps``.

Ordering is deterministic given ``seed``: the unpacked layout reshuffles its examples every
epoch; the packed layout groups traces into micro-batches once (from a seeded permutation) and
reshuffles the order of those micro-batches every epoch, so every epoch has the same number of
micro-batches (Lightning reads the loader's length once). The loader is resumable: a
checkpoint taken mid-epoch resumes with the next unseen micro-batch of the same epoch order
(pass the module as ``trainer.fit(..., datamodule=dm)``: its ``on_before_batch_transfer`` hook
records which micro-batches training has consumed). One process only (no DDP).

Collated batches (dict):

=================  =========================  ===============================================
key                type                       meaning
=================  =========================  ===============================================
``input_ids``      int64 ``[B, L]``           padded sequences (``pad_token_id``)
``attention_mask`` int64 ``[B, L]``           1 on real tokens
``position_ids``   int64 ``[B, L]``           ``cumsum(mask) - 1`` (0 on padding): the same
                                              positions for either padding side
``loss_rows``      int64 ``[K]``              row of each kept position in the batch
``loss_cols``      int64 ``[K]``              column of each kept position (padding applied)
``target_ids``     int64 ``[K, C]``           soft-label candidate ids, padded with id 0
``target_w``       float32 ``[K, C]``         soft-label weights, 0 in padding slots
``kl``             float32 ``[K]``            the sample's KL at each kept step (nan if absent)
``steps``          int64 ``[K]``              step index within its trace
``num_steps``      int                        ``K``, kept steps in this micro-batch
``update_steps``   int                        kept steps in this micro-batch's whole update
``accumulate``     int                        micro-batches per update (``accumulate_grad_batches``)
``loss_scale``     float                      ``accumulate / update_steps``
``problem_ids``    list[str]                  one per row
``epoch``          int                        epoch this micro-batch belongs to
``batch_index``    int                        index of this micro-batch within the epoch
=================  =========================  ===============================================

No vocabulary-sized tensor is ever built: soft labels stay as ``[K, C]`` candidate lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from .records import TraceSample

log = logging.getLogger(__name__)

__all__ = ["DistillDataModule", "KeptStepBatchSampler", "collate_examples", "plan_micro_batches"]


def _check_sample(s: TraceSample) -> None:
    """One clear error for a malformed sample (named by its problem id)."""
    k = s.num_steps
    where = f"TraceSample {s.problem_id!r}"
    if s.input_ids.dim() != 1 or s.input_ids.numel() == 0:
        raise ValueError(f"{where}: input_ids must be a non-empty 1-D tensor, got shape {tuple(s.input_ids.shape)}")
    if len(s.target_ids) != k or len(s.target_w) != k or s.steps.numel() != k:
        raise ValueError(
            f"{where}: {k} positions but {s.steps.numel()} steps, {len(s.target_ids)} target_ids, "
            f"{len(s.target_w)} target_w"
        )
    if k and (int(s.positions.min()) < 0 or int(s.positions.max()) >= s.input_ids.numel()):
        raise ValueError(f"{where}: positions must lie in [0, {s.input_ids.numel()}), got {s.positions.tolist()}")
    for j, (ids, w) in enumerate(zip(s.target_ids, s.target_w)):
        if ids.shape != w.shape or ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"{where}: step {j}: target_ids {tuple(ids.shape)} and target_w {tuple(w.shape)} must be equal non-empty 1-D")
    if s.kl is not None and s.kl.numel() != k:
        raise ValueError(f"{where}: kl has {s.kl.numel()} values for {k} kept steps")


def _generator(seed: int, stream: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(stream)) % (2**63))
    return g


def group_traces(step_counts: Sequence[int], order: Sequence[int], steps_per_batch: int) -> list[list[int]]:
    """Group whole traces, in ``order``, into micro-batches of about ``steps_per_batch`` kept steps.

    A trace joins the open micro-batch when that brings its kept-step count closer to (or as
    close to) ``steps_per_batch`` than closing it now; a trace with more kept steps than
    ``steps_per_batch`` forms a micro-batch of its own.
    """
    groups: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i in order:
        k = int(step_counts[i])
        if cur and abs(n + k - steps_per_batch) > abs(n - steps_per_batch):
            groups.append(cur)
            cur, n = [], 0
        cur.append(int(i))
        n += k
        if n >= steps_per_batch:
            groups.append(cur)
            cur, n = [], 0
    if cur:
        groups.append(cur)
    return groups


def plan_micro_batches(
    step_counts: Sequence[int],
    steps_per_batch: int,
    packing: bool,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[list[int]]:
    """Micro-batches (lists of example indices) of one epoch, deterministic in ``(seed, epoch)``.

    ``step_counts[i]`` is example ``i``'s number of kept steps (1 for every unpacked example).
    """
    n = len(step_counts)
    if not packing:
        order = torch.randperm(n, generator=_generator(seed, epoch + 1)).tolist() if shuffle else list(range(n))
        return [order[i : i + steps_per_batch] for i in range(0, n, steps_per_batch)]
    base = torch.randperm(n, generator=_generator(seed, 0)).tolist() if shuffle else list(range(n))
    groups = group_traces(step_counts, base, steps_per_batch)
    if shuffle:
        perm = torch.randperm(len(groups), generator=_generator(seed, epoch + 1)).tolist()
        groups = [groups[i] for i in perm]
    return groups


class KeptStepBatchSampler(Sampler[list[tuple]]):
    """Yields one epoch's micro-batches; each item is ``(example, update_steps, epoch, batch_index)``.

    Epochs are set by Lightning (``set_epoch`` on ``batch_sampler.sampler``, which is this
    object). ``mark_consumed`` records the last micro-batch training actually used, so that
    ``state_dict``/``load_state_dict`` resume mid-epoch at the next unseen micro-batch.
    """

    def __init__(
        self,
        step_counts: Sequence[int],
        steps_per_batch: int,
        accumulate_grad_batches: int,
        packing: bool,
        seed: int,
        shuffle: bool = True,
    ):
        self.step_counts = [int(k) for k in step_counts]
        self.steps_per_batch = int(steps_per_batch)
        self.accumulate = int(accumulate_grad_batches)
        self.packing = bool(packing)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.sampler = self  # where Lightning looks for set_epoch on a batch sampler
        self._consumed: tuple[int, int] | None = None  # (epoch, micro-batches used in it)
        self._resume: tuple[int, int] | None = None
        self._len = len(self.plan(0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, epoch: int) -> list[list[int]]:
        return plan_micro_batches(self.step_counts, self.steps_per_batch, self.packing, self.seed, epoch, self.shuffle)

    def update_steps(self, plan: list[list[int]]) -> list[int]:
        """Kept steps of the update each micro-batch of ``plan`` belongs to."""
        per_mb = [sum(self.step_counts[i] for i in mb) for mb in plan]
        out = []
        for u in range(0, len(plan), self.accumulate):
            total = sum(per_mb[u : u + self.accumulate])
            out.extend([total] * len(per_mb[u : u + self.accumulate]))
        return out

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            self.epoch = epoch
        plan = self.plan(epoch)
        upd = self.update_steps(plan)
        batches = [
            [(i, upd[b], epoch, b) for i in mb] for b, mb in enumerate(plan)
        ][skip:]
        return iter(batches)

    def mark_consumed(self, epoch: int, batch_index: int) -> None:
        self._consumed = (int(epoch), int(batch_index) + 1)

    def state_dict(self) -> dict[str, Any]:
        if self._consumed is None:
            return {"epoch": self.epoch, "consumed": 0}
        return {"epoch": self._consumed[0], "consumed": self._consumed[1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= self._len:
            epoch, consumed = epoch + 1, 0
        self._resume = (epoch, consumed)
        self.epoch = epoch
        self._consumed = (epoch, consumed) if consumed else None


class _Examples(Dataset):
    """Examples addressed by the batch sampler's ``(index, update_steps, epoch, batch_index)``."""

    def __init__(self, examples: Sequence[TraceSample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, item):
        i, update_steps, epoch, batch_index = item
        return self.examples[i], update_steps, epoch, batch_index


class _ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints (``_Stateful``)."""

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)


class _Collate:
    def __init__(self, pad_token_id: int, padding_side: str, accumulate: int):
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.accumulate = int(accumulate)

    def __call__(self, items):
        examples = [it[0] for it in items]
        _, update_steps, epoch, batch_index = items[0]
        batch = collate_examples(examples, self.pad_token_id, self.padding_side)
        batch["update_steps"] = int(update_steps)
        batch["accumulate"] = self.accumulate
        batch["loss_scale"] = self.accumulate / int(update_steps)
        batch["epoch"] = int(epoch)
        batch["batch_index"] = int(batch_index)
        return batch


def collate_examples(examples: Sequence[TraceSample], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad ``examples`` into one batch and index their kept positions (see the module doc).

    Does not set the update fields (``update_steps``, ``accumulate``, ``loss_scale``).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
    lengths = [int(e.input_ids.numel()) for e in examples]
    b, length = len(examples), max(lengths)
    input_ids = torch.full((b, length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    rows, cols, tids, tws, kls, steps = [], [], [], [], [], []
    for r, (e, n) in enumerate(zip(examples, lengths)):
        off = length - n if padding_side == "left" else 0
        input_ids[r, off : off + n] = e.input_ids.long()
        attention_mask[r, off : off + n] = 1
        k = e.num_steps
        rows.append(torch.full((k,), r, dtype=torch.long))
        cols.append(e.positions.long() + off)
        tids.extend(t.long() for t in e.target_ids)
        tws.extend(w.float() for w in e.target_w)
        kls.append(e.kl.float() if e.kl is not None else torch.full((k,), float("nan")))
        steps.append(e.steps.long())
    k_total = len(tids)
    c_max = max((t.numel() for t in tids), default=1)
    target_ids = torch.zeros((k_total, c_max), dtype=torch.long)
    target_w = torch.zeros((k_total, c_max), dtype=torch.float32)
    for j, (t, w) in enumerate(zip(tids, tws)):
        target_ids[j, : t.numel()] = t
        target_w[j, : w.numel()] = w
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "loss_rows": torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long),
        "loss_cols": torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long),
        "target_ids": target_ids,
        "target_w": target_w,
        "kl": torch.cat(kls) if kls else torch.zeros(0),
        "steps": torch.cat(steps) if steps else torch.zeros(0, dtype=torch.long),
        "num_steps": k_total,
        "problem_ids": [e.problem_id for e in examples],
    }


class DistillDataModule(LightningDataModule):
    """Selected samples → kept-step-counted training batches (packed or one step per example).

    Args:
        samples: the selected :class:`TraceSample` list (samples without kept steps are dropped).
        steps_per_batch: kept steps per micro-batch (published: 8). Packed micro-batches group
            whole traces to about this many; unpacked ones hold exactly this many examples.
        accumulate_grad_batches: micro-batches per optimizer update (published: 2); must equal
            the Trainer's ``accumulate_grad_batches``.
        packing: one sequence per trace (True, default) or one example per kept step (False).
        pad_token_id: id used to pad ``input_ids`` (never attended to, never a target).
        padding_side: "right" (default) or "left"; the loss is the same either way.
        seed: seed of the deterministic per-epoch shuffle.
        shuffle: shuffle at all (False: file order, for inspection and tests).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        samples: Sequence[TraceSample],
        steps_per_batch: int = 8,
        accumulate_grad_batches: int = 2,
        packing: bool = True,
        pad_token_id: int = 0,
        padding_side: str = "right",
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ):
        super().__init__()
        if int(steps_per_batch) < 1:
            raise ValueError(f"steps_per_batch: expected >= 1, got {steps_per_batch}")
        if int(accumulate_grad_batches) < 1:
            raise ValueError(f"accumulate_grad_batches: expected >= 1, got {accumulate_grad_batches}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id: required (the tokenizer's pad id)")
        for s in samples:
            _check_sample(s)
        self.samples = [s for s in samples if s.num_steps > 0]
        if not self.samples:
            raise ValueError("DistillDataModule: no sample has a kept step (lower beta, or sample more problems)")
        self.steps_per_batch = int(steps_per_batch)
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.packing = bool(packing)
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.examples = self.samples if self.packing else [x for s in self.samples for x in s.split_steps()]
        self.batch_sampler = self._new_batch_sampler()

    def _new_batch_sampler(self) -> KeptStepBatchSampler:
        return KeptStepBatchSampler(
            [e.num_steps for e in self.examples],
            self.steps_per_batch,
            self.accumulate_grad_batches,
            self.packing,
            self.seed,
            self.shuffle,
        )

    @property
    def num_kept_steps(self) -> int:
        """Kept steps in one epoch (the same in both layouts)."""
        return sum(s.num_steps for s in self.samples)

    @property
    def num_micro_batches_per_epoch(self) -> int:
        return len(self.batch_sampler)

    @property
    def num_updates_per_epoch(self) -> int:
        """Optimizer updates per pass over the samples."""
        return -(-self.num_micro_batches_per_epoch // self.accumulate_grad_batches)

    @property
    def steps_per_update(self) -> int:
        """Nominal kept steps per optimizer update (``steps_per_batch * accumulate_grad_batches``)."""
        return self.steps_per_batch * self.accumulate_grad_batches

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if trainer is None:
            return
        if trainer.world_size > 1:
            raise ValueError(
                "DistillDataModule: multi-process training is not supported (the per-update kept-step "
                "normalisation assumes one process); run on one device"
            )
        if trainer.accumulate_grad_batches != self.accumulate_grad_batches:
            raise ValueError(
                f"accumulate_grad_batches: the Trainer uses {trainer.accumulate_grad_batches} but the "
                f"DistillDataModule {self.accumulate_grad_batches}; they must be equal"
            )

    def train_dataloader(self) -> DataLoader:
        return _ResumableLoader(
            _Examples(self.examples),
            batch_sampler=self.batch_sampler,
            collate_fn=_Collate(self.pad_token_id, self.padding_side, self.accumulate_grad_batches),
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "batch_index" in batch and self.trainer is not None and self.trainer.training:
            self.batch_sampler.mark_consumed(batch["epoch"], batch["batch_index"])
        return batch

    def epoch_batches(self, epoch: int = 0) -> list[dict]:
        """All collated micro-batches of one epoch, in training order (inspection and tests)."""
        sampler = self._new_batch_sampler()
        sampler.set_epoch(epoch)
        collate = _Collate(self.pad_token_id, self.padding_side, self.accumulate_grad_batches)
        ds = _Examples(self.examples)
        return [collate([ds[it] for it in mb]) for mb in sampler]
