"""Training batches of selected samples, counted in kept steps.

A :class:`~lightreasoner.data.records.TraceSample` holds one trace and the positions of its kept
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
records which micro-batches training has consumed).

**Several processes** (data parallelism, e.g. Lightning DDP, world size ``W``, rank ``r``).
Micro-batches are still planned once per epoch for the whole run (the *global* micro-batches,
the same on every rank). One optimizer update is ``A * W`` consecutive global micro-batches
(``A = accumulate_grad_batches``); rank ``r`` trains on the global micro-batches ``g`` with
``g % W == r``, so each rank contributes ``A`` of them to every update. ``update_steps`` is the
number of kept steps of the whole ``A * W`` group (all ranks) and ``loss_scale =
A * W / update_steps``: Lightning divides each micro-batch loss by ``A`` and DDP averages the
gradients over the ``W`` ranks, so every update's gradient is exactly that of the mean over all
its kept steps (a last, shorter update of an epoch included). Every rank must run the same
number of micro-batches, so the trailing ``P % W`` global micro-batches of each epoch's order
(``P`` planned per epoch) are **dropped** (logged once, on rank 0); as the order is reshuffled
every epoch, different micro-batches are dropped in different epochs. The rank and world size
come from the Trainer in :meth:`DistillDataModule.setup` (``trainer.global_rank``,
``trainer.world_size``), or from an initialised ``torch.distributed`` when no Trainer is
attached. Lightning must be told to leave the loader alone (``Trainer(use_distributed_sampler=
False)``; ``conf/trainer/*.yaml`` set it): with its default (True) it would try to wrap the
custom batch sampler in a ``DistributedSampler``, so :meth:`DistillDataModule.setup` refuses a
multi-process Trainer that has it on. The loader's length, its resume state (micro-batches this
rank has consumed, the same count on every rank) and :attr:`num_updates_per_epoch` are per
rank. A checkpoint taken mid-epoch resumes only with the same world size (at an epoch boundary
any world size may resume). With ``W = 1`` nothing is dropped and ``loss_scale = A /
update_steps``, as above.

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
``world_size``     int                        processes training together (``W``)
``loss_scale``     float                      ``accumulate * world_size / update_steps``
``problem_ids``    list[str]                  one per row
``epoch``          int                        epoch this micro-batch belongs to
``batch_index``    int                        index of this micro-batch among this rank's
                                              micro-batches of the epoch
``global_index``   int                        index among all ranks' micro-batches of the
                                              epoch (``batch_index * W + rank``)
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

from lightreasoner.data.records import TraceSample

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
    """Yields this rank's micro-batches of one epoch.

    Each item is ``(example, update_steps, epoch, batch_index, global_index)``: ``batch_index``
    counts this rank's micro-batches, ``global_index`` the epoch's planned (global) ones. With
    ``world_size`` W > 1 this rank yields the global micro-batches ``g`` with ``g % W == rank``
    (the trailing ``P % W`` of the ``P`` planned are dropped) and ``update_steps`` counts the
    kept steps of the whole ``accumulate * W`` group of global micro-batches (see the module doc).

    Epochs are set by Lightning (``set_epoch`` on ``batch_sampler.sampler``, which is this
    object). ``mark_consumed`` records the last micro-batch training actually used, so that
    ``state_dict``/``load_state_dict`` resume mid-epoch at the next unseen micro-batch; the
    state counts this rank's micro-batches (the same number on every rank) and records the
    world size when it is above 1.
    """

    def __init__(
        self,
        step_counts: Sequence[int],
        steps_per_batch: int,
        accumulate_grad_batches: int,
        packing: bool,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.step_counts = [int(k) for k in step_counts]
        self.steps_per_batch = int(steps_per_batch)
        self.accumulate = int(accumulate_grad_batches)
        self.packing = bool(packing)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.sampler = self  # where Lightning looks for set_epoch on a batch sampler
        self._consumed: tuple[int, int] | None = None  # (epoch, micro-batches of this rank used in it)
        self._resume_state: tuple[int, int, int] | None = None  # (epoch, consumed, world size) as saved
        self._resume: tuple[int, int] | None = None
        self.num_planned = len(self.plan(0))  # global micro-batches per epoch (the same every epoch)
        self.set_distributed(rank, world_size)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Take this process's share: ``rank`` of ``world_size`` processes (0 of 1: everything)."""
        rank, world_size = int(rank), int(world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size}: expected world_size >= 1 and 0 <= rank < world_size")
        if self.num_planned < world_size:
            raise ValueError(
                f"{self.num_planned} micro-batch(es) per epoch for {world_size} processes: every process needs at "
                "least one (lower steps_per_batch, use fewer processes, or select more samples)"
            )
        self.rank, self.world_size = rank, world_size
        self._len = self.num_planned // world_size
        if self._resume_state is not None:
            self._resume = self._resolve_resume(*self._resume_state)

    @property
    def num_dropped(self) -> int:
        """Global micro-batches dropped per epoch so that every rank runs as many (``P % W``)."""
        return self.num_planned - self._len * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, epoch: int) -> list[list[int]]:
        return plan_micro_batches(self.step_counts, self.steps_per_batch, self.packing, self.seed, epoch, self.shuffle)

    def update_steps(self, plan: list[list[int]]) -> list[int]:
        """Kept steps of the update each used global micro-batch of ``plan`` belongs to.

        An update is ``accumulate * world_size`` consecutive global micro-batches; the result
        covers the ``len(plan) - len(plan) % world_size`` micro-batches that are trained on.
        """
        per_mb = [sum(self.step_counts[i] for i in mb) for mb in plan]
        used = len(per_mb) - len(per_mb) % self.world_size
        group = self.accumulate * self.world_size
        out = []
        for u in range(0, used, group):
            chunk = per_mb[u : min(u + group, used)]
            out.extend([sum(chunk)] * len(chunk))
        return out

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = self._resume_state = None
            self.epoch = epoch
        plan = self.plan(epoch)
        upd = self.update_steps(plan)
        mine = range(self.rank, len(upd), self.world_size)
        batches = [[(i, upd[g], epoch, b, g) for i in plan[g]] for b, g in enumerate(mine)][skip:]
        return iter(batches)

    def mark_consumed(self, epoch: int, batch_index: int) -> None:
        self._consumed = (int(epoch), int(batch_index) + 1)

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": self.epoch, "consumed": 0} if self._consumed is None else {"epoch": self._consumed[0], "consumed": self._consumed[1]}
        if self.world_size > 1:
            state["world_size"] = self.world_size
        return state

    def _resolve_resume(self, epoch: int, consumed: int, saved_world: int) -> tuple[int, int]:
        """Where a saved state resumes under the current world size: ``(epoch, skip)``."""
        if consumed >= self.num_planned // saved_world:
            return epoch + 1, 0  # the saved epoch was finished
        if consumed and saved_world != self.world_size:
            raise ValueError(
                f"resume: the checkpoint was taken mid-epoch ({consumed} micro-batches per process into epoch "
                f"{epoch}) with {saved_world} process(es), but this run has {self.world_size}; resume with "
                f"{saved_world} process(es), or from a checkpoint at an epoch boundary"
            )
        return epoch, consumed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_state = (int(state["epoch"]), int(state["consumed"]), int(state.get("world_size", 1)))
        epoch, consumed = self._resume = self._resolve_resume(*self._resume_state)
        self.epoch = epoch
        self._consumed = (epoch, consumed) if consumed else None


class _Examples(Dataset):
    """Examples addressed by the batch sampler's ``(index, update_steps, epoch, batch_index, global_index)``."""

    def __init__(self, examples: Sequence[TraceSample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, item):
        i, update_steps, epoch, batch_index, global_index = item
        return self.examples[i], update_steps, epoch, batch_index, global_index


class _ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints (``_Stateful``)."""

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)


class _Collate:
    def __init__(self, pad_token_id: int, padding_side: str, accumulate: int, world_size: int = 1, last_column: bool = False):
        self.last_column = bool(last_column)
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.accumulate = int(accumulate)
        self.world_size = int(world_size)

    def __call__(self, items):
        examples = [it[0] for it in items]
        _, update_steps, epoch, batch_index, global_index = items[0]
        batch = collate_examples(examples, self.pad_token_id, self.padding_side, self.last_column)
        batch["update_steps"] = int(update_steps)
        batch["accumulate"] = self.accumulate
        batch["world_size"] = self.world_size
        batch["loss_scale"] = self.accumulate * self.world_size / int(update_steps)
        batch["epoch"] = int(epoch)
        batch["batch_index"] = int(batch_index)
        batch["global_index"] = int(global_index)
        return batch


def collate_examples(
    examples: Sequence[TraceSample], pad_token_id: int, padding_side: str = "right", last_column: bool = False
) -> dict:
    """Pad ``examples`` into one batch and index their kept positions (see the module doc).

    ``last_column`` is the published quirk ``distill.published_loss_column``: one kept step per
    example, right-padded, and every row's loss read at the batch's last column (a padding
    position for every row shorter than the longest), as the published ``logits[:, -1]``.

    Does not set the update fields (``update_steps``, ``accumulate``, ``loss_scale``).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side: expected 'right' or 'left', got {padding_side!r}")
    if last_column and (padding_side != "right" or any(e.num_steps != 1 for e in examples)):
        raise ValueError("distill.published_loss_column: needs one kept step per example (packing: false) and right padding")
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
        cols.append(torch.full((k,), length - 1, dtype=torch.long) if last_column else e.positions.long() + off)
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

    Multi-process (DDP): the rank and world size are read in :meth:`setup` (or, without a
    Trainer, from torch.distributed in :meth:`train_dataloader`); the Trainer needs
    ``use_distributed_sampler=False``. See the module doc for the split and the normalisation.

    Args:
        samples: the selected :class:`TraceSample` list (samples without kept steps are dropped).
        steps_per_batch: kept steps per micro-batch (published: 8). Packed micro-batches group
            whole traces to about this many; unpacked ones hold exactly this many examples.
        accumulate_grad_batches: micro-batches per optimizer update and process (published: 2);
            must equal the Trainer's ``accumulate_grad_batches``. With ``W`` processes an update
            spans ``accumulate_grad_batches * W`` micro-batches.
        packing: one sequence per trace (True, default) or one example per kept step (False).
        pad_token_id: id used to pad ``input_ids`` (never attended to, never a target).
        padding_side: "right" (default) or "left"; the loss is the same either way.
        seed: seed of the deterministic per-epoch shuffle.
        shuffle: shuffle at all (False: file order, for inspection and tests).
        num_workers: DataLoader worker processes.
        published_loss_column: the published quirk (``distill.published_loss_column``): every
            row's loss at the batch's last column (needs ``packing=False``, right padding).
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
        published_loss_column: bool = False,
    ):
        super().__init__()
        if published_loss_column and (packing or padding_side != "right"):
            raise ValueError("distill.published_loss_column: needs distill.packing=false and distill.padding_side=right")
        self.published_loss_column = bool(published_loss_column)
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
        self.rank, self.world_size = 0, 1
        self._drop_logged = False
        self.batch_sampler = self._new_batch_sampler()

    def _new_batch_sampler(self, rank: int | None = None, world_size: int | None = None) -> KeptStepBatchSampler:
        return KeptStepBatchSampler(
            [e.num_steps for e in self.examples],
            self.steps_per_batch,
            self.accumulate_grad_batches,
            self.packing,
            self.seed,
            self.shuffle,
            rank=self.rank if rank is None else rank,
            world_size=self.world_size if world_size is None else world_size,
        )

    @property
    def num_kept_steps(self) -> int:
        """Kept steps in one epoch (the same in both layouts), micro-batches dropped for W > 1 included."""
        return sum(s.num_steps for s in self.samples)

    @property
    def num_micro_batches_per_epoch(self) -> int:
        """Micro-batches this process trains on per epoch."""
        return len(self.batch_sampler)

    @property
    def num_dropped_micro_batches(self) -> int:
        """Planned micro-batches left out per epoch so that every process runs as many (0 for W = 1)."""
        return self.batch_sampler.num_dropped

    @property
    def num_updates_per_epoch(self) -> int:
        """Optimizer updates per pass over the samples."""
        return -(-self.num_micro_batches_per_epoch // self.accumulate_grad_batches)

    @property
    def steps_per_update(self) -> int:
        """Nominal kept steps per optimizer update (``steps_per_batch * accumulate_grad_batches * world_size``)."""
        return self.steps_per_batch * self.accumulate_grad_batches * self.world_size

    def _distributed_context(self) -> tuple[int, int]:
        """``(rank, world_size)``: the attached Trainer's, else an initialised torch.distributed's, else (0, 1)."""
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return int(torch.distributed.get_rank()), int(torch.distributed.get_world_size())
        return 0, 1

    def _configure_distributed(self) -> None:
        rank, world_size = self._distributed_context()
        if (rank, world_size) != (self.batch_sampler.rank, self.batch_sampler.world_size):
            self.batch_sampler.set_distributed(rank, world_size)
        self.rank, self.world_size = rank, world_size
        dropped = self.batch_sampler.num_dropped
        if dropped and rank == 0 and not self._drop_logged:
            self._drop_logged = True
            log.warning(
                "DistillDataModule: %d of %d micro-batches per epoch dropped so that each of the %d processes "
                "trains on %d (the trailing ones of each epoch's order; they differ between epochs)",
                dropped, self.batch_sampler.num_planned, world_size, len(self.batch_sampler),
            )

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if trainer is None:
            self._configure_distributed()
            return
        if trainer.world_size > 1 and getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
            raise ValueError(
                "DistillDataModule: with several processes, create the Trainer with use_distributed_sampler=False "
                "(trainer.use_distributed_sampler=false): the kept-step batch sampler splits the micro-batches "
                "between the ranks itself, and Lightning cannot wrap it in a DistributedSampler"
            )
        if trainer.accumulate_grad_batches != self.accumulate_grad_batches:
            raise ValueError(
                f"accumulate_grad_batches: the Trainer uses {trainer.accumulate_grad_batches} but the "
                f"DistillDataModule {self.accumulate_grad_batches}; they must be equal"
            )
        self._configure_distributed()

    def train_dataloader(self) -> DataLoader:
        self._configure_distributed()
        return _ResumableLoader(
            _Examples(self.examples),
            batch_sampler=self.batch_sampler,
            collate_fn=_Collate(self.pad_token_id, self.padding_side, self.accumulate_grad_batches, self.world_size, self.published_loss_column),
            num_workers=self.num_workers,
            persistent_workers=False,
            # its own generator: creating an epoch's iterator never draws from the global RNG
            # (that LoRA dropout uses), so a resumed fine-tune sees the same dropout stream
            generator=torch.Generator().manual_seed(self.seed),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "batch_index" in batch and self.trainer is not None and self.trainer.training:
            self.batch_sampler.mark_consumed(batch["epoch"], batch["batch_index"])
        return batch

    def epoch_batches(self, epoch: int = 0, rank: int | None = None, world_size: int | None = None) -> list[dict]:
        """All collated micro-batches of one epoch that ``rank`` of ``world_size`` trains on, in
        training order (inspection and tests; default: this process's rank and world size)."""
        sampler = self._new_batch_sampler(rank, world_size)
        sampler.set_epoch(epoch)
        collate = _Collate(self.pad_token_id, self.padding_side, self.accumulate_grad_batches, sampler.world_size, self.published_loss_column)
        ds = _Examples(self.examples)
        return [collate([ds[it] for it in mb]) for mb in sampler]
