"""DistillDataModule: kept-step batch sizes, packing, padding, per-update normalisation, resume."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from lightreasoner.training.datamodule import DistillDataModule, collate_examples, group_traces
from lightreasoner.data.records import TraceSample

from _samples import random_trace_samples

VOCAB = 50


def make_samples(n=7, seed=0, min_len=8, max_len=20, max_steps=4, max_cands=4):
    """Hand-built traces with a few kept steps each (unequal lengths and candidate counts)."""
    return random_trace_samples(n, seed, VOCAB, min_len, max_len, max_steps, max_cands, prompt=4)


def _steps_of(batches):
    """(problem_id, step) of every kept step in a list of collated batches."""
    out = []
    for b in batches:
        for r, s in zip(b["loss_rows"].tolist(), b["steps"].tolist()):
            out.append((b["problem_ids"][r], s))
    return out


def test_packed_and_unpacked_see_the_same_kept_steps():
    samples = make_samples()
    total = sum(s.num_steps for s in samples)
    packed = DistillDataModule(samples, steps_per_batch=4, accumulate_grad_batches=2, packing=True)
    unpacked = DistillDataModule(samples, steps_per_batch=4, accumulate_grad_batches=2, packing=False)
    assert packed.num_kept_steps == unpacked.num_kept_steps == total
    for epoch in (0, 1):
        bp, bu = packed.epoch_batches(epoch), unpacked.epoch_batches(epoch)
        sp, su = _steps_of(bp), _steps_of(bu)
        assert len(sp) == len(su) == total
        assert Counter(sp) == Counter(su)
        # packed: whole traces, one row each; unpacked: one row per kept step, 4 per micro-batch
        for b in bp:
            assert len(set(b["problem_ids"])) == len(b["problem_ids"])
        assert [b["num_steps"] for b in bu] == [4] * (total // 4) + ([total % 4] if total % 4 else [])
        assert all(b["input_ids"].shape[0] == b["num_steps"] for b in bu)
    assert unpacked.num_updates_per_epoch == -(-(-(-total // 4)) // 2)


def test_packing_groups_whole_traces_to_about_steps_per_batch():
    assert group_traces([3, 3, 3, 3], [0, 1, 2, 3], 8) == [[0, 1, 2], [3]]
    assert group_traces([5, 5, 2, 9, 1], [0, 1, 2, 3, 4], 8) == [[0, 1], [2, 3], [4]]  # joins when closer to 8
    assert group_traces([6, 5, 3], [0, 1, 2], 8) == [[0], [1, 2]]
    assert group_traces([8, 8], [1, 0], 8) == [[1], [0]]
    samples = make_samples(n=20, seed=3)
    dm = DistillDataModule(samples, steps_per_batch=8, accumulate_grad_batches=1, packing=True)
    sizes = [b["num_steps"] for b in dm.epoch_batches(0)]
    assert sum(sizes) == dm.num_kept_steps
    assert all(s <= 8 + 3 for s in sizes)  # at most one trace beyond the target (max 4 steps/trace)
    assert sum(sizes) / len(sizes) > 5


def test_update_steps_normalise_each_update_to_its_mean():
    samples = make_samples(n=9, seed=1)
    for packing in (True, False):
        dm = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=3, packing=packing)
        batches = dm.epoch_batches(0)
        assert len(batches) == dm.num_micro_batches_per_epoch
        for u in range(0, len(batches), 3):
            group = batches[u : u + 3]
            total = sum(b["num_steps"] for b in group)
            assert all(b["update_steps"] == total for b in group)
            # Lightning divides each micro-batch loss by accumulate: the weights then sum to 1
            assert sum(b["num_steps"] * b["loss_scale"] / 3 for b in group) == pytest.approx(1.0)
        assert dm.num_updates_per_epoch == -(-len(batches) // 3)


def test_collate_reads_kept_positions_for_either_padding_side():
    samples = make_samples(n=4, seed=2)
    right = collate_examples(samples, pad_token_id=0, padding_side="right")
    left = collate_examples(samples, pad_token_id=0, padding_side="left")
    k = sum(s.num_steps for s in samples)
    for b in (right, left):
        assert b["target_ids"].shape == b["target_w"].shape
        assert b["target_ids"].shape[0] == k and b["target_ids"].shape[1] == 4  # [K, C_max], not [K, vocab]
        j = 0
        for s in samples:
            for p, t, w in zip(s.positions.tolist(), s.target_ids, s.target_w):
                r, c = int(b["loss_rows"][j]), int(b["loss_cols"][j])
                assert b["problem_ids"][r] == s.problem_id
                assert b["input_ids"][r, c] == s.input_ids[p]
                assert b["attention_mask"][r, c] == 1
                assert b["position_ids"][r, c] == p  # positions from the mask, either side
                assert torch.equal(b["target_ids"][j, : t.numel()], t)
                assert torch.allclose(b["target_w"][j, : w.numel()], w)
                assert (b["target_w"][j, w.numel() :] == 0).all()
                j += 1
    assert torch.equal(right["target_ids"], left["target_ids"])
    # real tokens get identical position ids under both paddings
    for r, s in enumerate(samples):
        n = s.input_ids.numel()
        assert torch.equal(right["position_ids"][r, :n], left["position_ids"][r, -n:])
        assert torch.equal(right["position_ids"][r, :n], torch.arange(n))


def test_shuffle_is_deterministic_per_epoch_and_count_is_constant():
    samples = make_samples(n=12, seed=4)
    for packing in (True, False):
        a = DistillDataModule(samples, steps_per_batch=4, packing=packing, seed=7)
        b = DistillDataModule(samples, steps_per_batch=4, packing=packing, seed=7)
        c = DistillDataModule(samples, steps_per_batch=4, packing=packing, seed=8)
        e0, e1 = _steps_of(a.epoch_batches(0)), _steps_of(a.epoch_batches(1))
        assert e0 == _steps_of(b.epoch_batches(0))
        assert e0 != e1 and Counter(e0) == Counter(e1)
        assert e0 != _steps_of(c.epoch_batches(0))
        assert len(a.epoch_batches(0)) == len(a.epoch_batches(1)) == len(a.batch_sampler)


def test_loader_resumes_mid_epoch_at_the_next_unseen_batch():
    samples = make_samples(n=10, seed=5)
    dm = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=2)
    full = [(b["epoch"], b["batch_index"], b["problem_ids"]) for b in dm.epoch_batches(1)]
    sampler = dm.batch_sampler
    sampler.set_epoch(1)
    sampler.mark_consumed(1, 2)  # micro-batches 0..2 of epoch 1 were trained on
    state = sampler.state_dict()
    assert state == {"epoch": 1, "consumed": 3}
    fresh = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=2)
    loader = fresh.train_dataloader()
    loader.load_state_dict(state)
    resumed = [(b["epoch"], b["batch_index"], b["problem_ids"]) for b in loader]
    assert resumed == full[3:]
    # a finished epoch resumes at the start of the next one
    sampler.mark_consumed(1, len(full) - 1)
    fresh.batch_sampler.load_state_dict(sampler.state_dict())
    nxt = [(b["epoch"], b["batch_index"]) for b in fresh.train_dataloader()]
    assert nxt[0] == (2, 0) and len(nxt) == len(full)


def test_worker_processes_give_the_same_batches():
    samples = make_samples(n=6, seed=6)
    dm = DistillDataModule(samples, steps_per_batch=3, num_workers=1, padding_side="left")
    got = list(dm.train_dataloader())
    want = dm.epoch_batches(0)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a["problem_ids"] == b["problem_ids"] and a["update_steps"] == b["update_steps"]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["target_w"], b["target_w"])


def test_bad_samples_give_one_clear_error():
    s = make_samples(n=2)
    bad = TraceSample("bad", s[0].input_ids, s[0].input_ids.new_tensor([999]), s[0].steps[:1], s[0].target_ids[:1], s[0].target_w[:1])
    with pytest.raises(ValueError, match="bad.*positions"):
        DistillDataModule([s[1], bad])
    with pytest.raises(ValueError, match="padding_side"):
        DistillDataModule(s, padding_side="middle")
    empty = TraceSample("e", s[0].input_ids, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no sample has a kept step"):
        DistillDataModule([empty])


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("world_size,accumulate", [(2, 1), (2, 2), (3, 2)])
def test_ranks_split_the_global_micro_batches_and_normalise_each_update(packing, world_size, accumulate):
    samples = make_samples(n=11, seed=8)
    dm = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=accumulate, packing=packing, seed=2)
    for epoch in (0, 1):
        whole = dm.epoch_batches(epoch)  # one process: the global micro-batches, in order
        n = len(whole)
        used = n - n % world_size
        ranks = [dm.epoch_batches(epoch, rank=r, world_size=world_size) for r in range(world_size)]
        assert [len(b) for b in ranks] == [used // world_size] * world_size
        by_global = {}
        for r, batches in enumerate(ranks):
            for j, b in enumerate(batches):
                assert (b["batch_index"], b["global_index"], b["world_size"]) == (j, j * world_size + r, world_size)
                assert b["problem_ids"] == whole[b["global_index"]]["problem_ids"]
                by_global[b["global_index"]] = b
        assert sorted(by_global) == list(range(used))  # every kept micro-batch once; the trailing n % W dropped
        group = accumulate * world_size
        for u in range(0, used, group):
            members = [by_global[g] for g in range(u, min(u + group, used))]
            total = sum(b["num_steps"] for b in members)
            assert all(b["update_steps"] == total for b in members)
            # Lightning divides by accumulate, DDP averages over the ranks: the weights sum to 1
            assert sum(b["num_steps"] * b["loss_scale"] / accumulate / world_size for b in members) == pytest.approx(1.0)
            # each rank holds the same number of micro-batches of every update
            assert Counter(b["global_index"] % world_size for b in members) == Counter(
                {r: len(members) // world_size for r in range(world_size)}
            )


def test_sampler_resume_state_is_per_rank():
    samples = make_samples(n=10, seed=5)
    dm = DistillDataModule(samples, steps_per_batch=2, accumulate_grad_batches=1)
    per_rank = len(dm.epoch_batches(0, rank=1, world_size=2))
    assert per_rank >= 3
    sampler = dm._new_batch_sampler(rank=1, world_size=2)
    assert len(sampler) == per_rank
    sampler.set_epoch(1)
    sampler.mark_consumed(1, 1)  # this rank trained on its micro-batches 0 and 1 of epoch 1
    state = sampler.state_dict()
    assert state == {"epoch": 1, "consumed": 2, "world_size": 2}
    want = [(b["epoch"], b["batch_index"], b["global_index"]) for b in dm.epoch_batches(1, rank=1, world_size=2)]
    fresh = dm._new_batch_sampler(rank=1, world_size=2)
    fresh.load_state_dict(state)
    got = [(item[0][2], item[0][3], item[0][4]) for item in fresh]
    assert got == want[2:]
    # mid-epoch under another world size: one clear error; a finished epoch resumes anywhere
    with pytest.raises(ValueError, match="mid-epoch.*2 process"):
        dm._new_batch_sampler(rank=0, world_size=1).load_state_dict(state)
    done = {"epoch": 1, "consumed": per_rank, "world_size": 2}
    single = dm._new_batch_sampler(rank=0, world_size=1)
    single.load_state_dict(done)
    assert [(item[0][2], item[0][3]) for item in single][0] == (2, 0)


class _Connector:
    def __init__(self, use_distributed_sampler):
        self.use_distributed_sampler = use_distributed_sampler


class _FakeTrainer:
    """What DistillDataModule.setup reads from a Lightning Trainer."""

    def __init__(self, rank, world_size, accumulate, use_distributed_sampler=False):
        self.global_rank, self.world_size, self.accumulate_grad_batches = rank, world_size, accumulate
        self._accelerator_connector = _Connector(use_distributed_sampler)
        self.training = True


def test_setup_takes_rank_and_world_from_the_trainer(caplog):
    samples = make_samples(n=9, seed=1)
    dm = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=2, seed=3)
    planned = dm.num_micro_batches_per_epoch
    assert planned % 2 == 1 and dm.num_dropped_micro_batches == 0  # odd: two ranks drop one
    dm.trainer = _FakeTrainer(1, 2, 2, use_distributed_sampler=True)
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.setup("fit")
    dm.trainer = _FakeTrainer(1, 2, 2)
    with caplog.at_level(logging.WARNING, logger="lightreasoner.training.datamodule"):
        dm.setup("fit")
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]  # logged on rank 0 only
    assert dm.num_micro_batches_per_epoch == planned // 2 and dm.num_dropped_micro_batches == planned % 2
    assert dm.num_updates_per_epoch == -(-(planned // 2) // 2)
    assert dm.steps_per_update == 3 * 2 * 2
    got = list(dm.train_dataloader())
    want = dm.epoch_batches(0, rank=1, world_size=2)
    assert [b["problem_ids"] for b in got] == [b["problem_ids"] for b in want]
    assert all(b["loss_scale"] == 4 / b["update_steps"] for b in got)
    # rank 0 logs the drop once
    dm0 = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=2, seed=3)
    dm0.trainer = _FakeTrainer(0, 2, 2)
    with caplog.at_level(logging.WARNING, logger="lightreasoner.training.datamodule"):
        dm0.setup("fit")
        dm0.train_dataloader()
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and f"1 of {planned} micro-batches" in drops[0].getMessage()
    # too few micro-batches for the processes
    tiny = DistillDataModule(samples[:1], steps_per_batch=100, accumulate_grad_batches=1)
    tiny.trainer = _FakeTrainer(0, 2, 1)
    with pytest.raises(ValueError, match="at least one"):
        tiny.setup("fit")
