"""Distillation under Lightning DDP (CPU, gloo, two spawned processes) gives exactly the updates
of one process: W=2 ranks x A=2 micro-batches per update == 1 process x 4 micro-batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightreasoner.models import spec as models
from lightreasoner.training.datamodule import DistillDataModule
from lightreasoner.training.distill import DistillModule
from lightreasoner.models.spec import ModelSpec
from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model, save_pair_member
from test_distill import LORA, make_samples

pl = pytest.importorskip("lightning.pytorch")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden_size=32, num_layers=2, num_heads=4, extra_vocab=5)
    return save_pair_member(model, tok, tmp_path_factory.mktemp("expert"))


class RecordRank(pl.Callback):
    """Saves, per rank, the micro-batches trained on and the final LoRA weights (spawned
    processes cannot hand Python objects back to the test)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((batch["epoch"], batch["global_index"], batch["update_steps"]))

    def on_train_end(self, trainer, pl_module):
        weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        torch.save({"seen": self.seen, "weights": weights, "world_size": trainer.world_size},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def _fit(tiny_dir, samples, out: Path, devices: int, accumulate: int, strategy: str) -> list[dict]:
    out.mkdir(parents=True)
    torch.manual_seed(5)
    module = DistillModule(
        ModelSpec(str(tiny_dir), device="cpu"), lora=LORA,
        # plain SGD: the weights are linear in the gradients, so a wrong gradient scale shows too
        # (Adam would hide a constant factor such as a missing world size)
        optimizer={"_target_": "torch.optim.SGD", "lr": 1.0}, max_steps=3,
    )
    dm = DistillDataModule(samples, steps_per_batch=2, accumulate_grad_batches=accumulate, seed=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=3,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordRank(str(out))],
        default_root_dir=str(out),
    )
    trainer.fit(module, datamodule=dm)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(devices)]


def test_ddp_fit_matches_one_process_with_the_same_updates(tiny_dir, tmp_path):
    vocab = models.load_model(ModelSpec(str(tiny_dir), device="cpu")).config.vocab_size
    samples = make_samples(vocab, n=6, seed=2)
    planned = DistillDataModule(samples, steps_per_batch=2, accumulate_grad_batches=1, seed=1).num_micro_batches_per_epoch
    # 6 global micro-batches per epoch: updates [0-3], [4-5] (shorter), then epoch 1's [0-3]
    assert planned == 6
    (single,) = _fit(tiny_dir, samples, tmp_path / "single", devices=1, accumulate=4, strategy="auto")
    ranks = _fit(tiny_dir, samples, tmp_path / "ddp", devices=2, accumulate=2, strategy="ddp_spawn")
    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    # the same global micro-batches with the same update sizes, rank r taking g % 2 == r
    assert [s[:2] for s in single["seen"]] == [(0, g) for g in range(6)] + [(1, g) for g in range(4)]
    assert [s[1] for s in ranks[0]["seen"]] == [0, 2, 4, 0, 2] and [s[1] for s in ranks[1]["seen"]] == [1, 3, 5, 1, 3]
    want = {(e, g): u for e, g, u in single["seen"]}
    for r in ranks:
        assert all(want[(e, g)] == u for e, g, u in r["seen"])
    # identical LoRA weights on both ranks and equal to the single-process run
    w1, w2, ws = ranks[0]["weights"], ranks[1]["weights"], single["weights"]
    assert w1.keys() == ws.keys() and w1
    moved = 0.0
    for n in ws:
        torch.testing.assert_close(w1[n], w2[n], rtol=0, atol=0, msg=n)
        torch.testing.assert_close(w1[n], ws[n], rtol=1e-5, atol=1e-5, msg=n)
    torch.manual_seed(5)
    init = DistillModule(ModelSpec(str(tiny_dir), device="cpu"), lora=LORA)
    for n, p in init.named_parameters():
        if p.requires_grad:
            moved = max(moved, float((ws[n] - p.detach()).abs().max()))
    assert moved > 1e-3  # the three updates changed the weights


def test_ddp_trainer_must_leave_the_batch_sampler_alone(tiny_dir, tmp_path):
    """With Lightning's default use_distributed_sampler=True the data module refuses to start."""
    vocab = models.load_model(ModelSpec(str(tiny_dir), device="cpu")).config.vocab_size
    dm = DistillDataModule(make_samples(vocab, n=6, seed=2), steps_per_batch=2, accumulate_grad_batches=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", accumulate_grad_batches=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    dm.trainer = trainer  # what Lightning sets before calling setup (checked in-process, nothing spawned)
    assert trainer.world_size == 2
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.setup("fit")
