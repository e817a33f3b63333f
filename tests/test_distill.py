"""DistillModule: loss at kept positions, packing/padding/accumulation invariance, fit, resume,
adapter save/load, merge (including a GGUF-style expert)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from lightreasoner.models import spec as models
from lightreasoner.core.contrast import distill_loss
from lightreasoner.training.datamodule import DistillDataModule, collate_examples
from lightreasoner.training.checkpoints import load_adapted_model, merge_adapter, save_adapter
from lightreasoner.training.distill import DistillModule, build_optimizer, schedule_lambda
from lightreasoner.models.spec import ModelSpec
from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model, save_pair_member

from _samples import random_trace_samples

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "init_lora_weights": False}  # B random: non-trivial gradients


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden_size=32, num_layers=2, num_heads=4, extra_vocab=5)
    return save_pair_member(model, tok, tmp_path_factory.mktemp("expert"))


@pytest.fixture(scope="module")
def vocab(tiny_dir):
    return models.load_model(ModelSpec(str(tiny_dir), device="cpu")).config.vocab_size


def make_module(tiny_dir, seed=0, **kw):
    torch.manual_seed(seed)
    return DistillModule(ModelSpec(str(tiny_dir), device="cpu"), lora=kw.pop("lora", LORA), **kw)


def make_samples(vocab, n=6, seed=0, min_len=10, max_len=24, max_steps=4, max_cands=5):
    """Traces of unequal lengths with a few kept steps; targets may include the extra (special) ids."""
    return random_trace_samples(n, seed, vocab, min_len, max_len, max_steps, max_cands, prompt=5,
                                ids=(3, vocab - 5), weight_scale=2.0)


def lora_grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}


def lora_weights(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def accumulated_grad(module, batches):
    """Gradient of one update over ``batches`` as Lightning computes it (loss / accumulate each)."""
    module.zero_grad(set_to_none=True)
    total = 0.0
    for b in batches:
        loss = module.compute_loss(b)["loss"] / b["accumulate"]
        loss.backward()
        total += float(loss.detach())
    return total, lora_grads(module)


def assert_grads_close(a, b, rtol=1e-4, atol=1e-7):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol, msg=n)
    assert any(float(g.abs().max()) > 1e-5 for g in a.values())  # non-trivial


def reference_step_losses(module, samples):
    """Per-step loss from the full causal-LM forward of each unpadded trace (positions read directly)."""
    out = []
    for s in samples:
        logits = module.model(input_ids=s.input_ids[None]).logits[0]
        for p, t, w in zip(s.positions.tolist(), s.target_ids, s.target_w):
            out.append(distill_loss(logits[p][None], t[None], w[None])[0])
    return torch.stack(out)


def test_loss_is_read_at_the_kept_positions(tiny_dir, vocab):
    module = make_module(tiny_dir)
    samples = make_samples(vocab)
    ref = reference_step_losses(module, samples)
    for side in ("right", "left"):
        batch = collate_examples(samples, 0, side)
        batch.update(update_steps=batch["num_steps"], accumulate=1)
        per_step = module.compute_loss(batch)["per_step"]
        torch.testing.assert_close(per_step, ref.detach(), rtol=1e-5, atol=1e-6)
    # the logits cover the model's full width (the 5 extra ids can be targets)
    assert module.step_logits(batch).shape == (batch["num_steps"], vocab)


def test_packed_and_unpacked_batches_give_equal_losses_and_gradients(tiny_dir, vocab):
    module = make_module(tiny_dir)
    samples = make_samples(vocab, n=5)
    total = sum(s.num_steps for s in samples)
    results = {}
    for packing in (True, False):
        dm = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=1, packing=packing, shuffle=False)
        mbs = dm.epoch_batches(0)
        # one update over the whole epoch: accumulate = number of micro-batches
        dm = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=len(mbs), packing=packing, shuffle=False)
        batches = dm.epoch_batches(0)
        assert all(b["update_steps"] == total for b in batches)
        loss, grads = accumulated_grad(module, batches)
        per_step = {}
        for b in batches:
            for (r, s), v in zip(zip(b["loss_rows"].tolist(), b["steps"].tolist()), module.compute_loss(b)["per_step"]):
                per_step[(b["problem_ids"][r], s)] = float(v)
        results[packing] = (loss, grads, per_step)
    (lp, gp, sp), (lu, gu, su) = results[True], results[False]
    assert sp.keys() == su.keys() and len(sp) == total
    for key in sp:
        assert sp[key] == pytest.approx(su[key], rel=1e-5, abs=1e-6)
    assert lp == pytest.approx(lu, rel=1e-5)
    assert lp == pytest.approx(sum(sp.values()) / total, rel=1e-5)  # the update's mean over kept steps
    assert_grads_close(gp, gu)


def test_padding_side_does_not_change_loss_or_gradients(tiny_dir, vocab):
    module = make_module(tiny_dir, seed=1)
    samples = make_samples(vocab, n=4, seed=1)
    out = {}
    for side in ("right", "left"):
        dm = DistillDataModule(samples, steps_per_batch=100, accumulate_grad_batches=1, padding_side=side, shuffle=False)
        (batch,) = dm.epoch_batches(0)
        assert batch["input_ids"].shape[0] == 4  # all traces padded together
        out[side] = accumulated_grad(module, [batch])
    assert out["right"][0] == pytest.approx(out["left"][0], rel=1e-5)
    assert_grads_close(out["right"][1], out["left"][1])


def test_accumulated_update_equals_one_big_batch(tiny_dir, vocab):
    module = make_module(tiny_dir, seed=2)
    samples = make_samples(vocab, n=5, seed=2)
    steps = [x for s in samples for x in s.split_steps()]
    assert len(steps) >= 9
    steps = steps[:9]
    # 9 single-step examples, 2 per micro-batch, 2 micro-batches per update: updates of 4, 4, 1 steps
    acc = DistillDataModule(steps, steps_per_batch=2, accumulate_grad_batches=2, packing=False, shuffle=False)
    mbs = acc.epoch_batches(0)
    assert [b["update_steps"] for b in mbs] == [4, 4, 4, 4, 1]
    big = DistillDataModule(steps, steps_per_batch=4, accumulate_grad_batches=1, packing=False, shuffle=False)
    bigs = big.epoch_batches(0)
    assert [b["num_steps"] for b in bigs] == [4, 4, 1]
    for u, big_batch in enumerate(bigs):
        la, ga = accumulated_grad(module, mbs[2 * u : 2 * u + 2])
        lb, gb = accumulated_grad(module, [big_batch])
        assert la == pytest.approx(lb, rel=1e-5)
        assert_grads_close(ga, gb)
    # and the big batch's loss is the plain mean of its per-step losses
    ref = reference_step_losses(module, steps[:4]).mean()
    assert float(module.compute_loss(bigs[0])["loss"].detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


def test_rank_split_gradients_average_to_the_update_mean(tiny_dir, vocab):
    """W ranks x A micro-batches, each loss / A (Lightning), gradients averaged over ranks (DDP):
    every update's gradient is that of the mean over all its kept steps (a short last update too)."""
    module = make_module(tiny_dir, seed=2)
    samples = make_samples(vocab, n=7, seed=6)
    world, acc = 2, 2
    dm = DistillDataModule(samples, steps_per_batch=2, accumulate_grad_batches=acc, shuffle=False)
    ranks = [dm.epoch_batches(0, rank=r, world_size=world) for r in range(world)]
    per_rank = len(ranks[0])
    assert per_rank % acc  # the epoch ends with a shorter update
    assert dm.num_dropped_micro_batches == 0 and dm.batch_sampler.num_planned % world  # and one is dropped
    for u in range(0, per_rank, acc):
        grads = [accumulated_grad(module, ranks[r][u : u + acc])[1] for r in range(world)]
        ddp = {n: sum(g[n] for g in grads) / world for n in grads[0]}
        members = [b for r in range(world) for b in ranks[r][u : u + acc]]
        assert sum(b["num_steps"] for b in members) == members[0]["update_steps"]
        # reference: the plain mean of the update's per-step losses, one backward
        module.zero_grad(set_to_none=True)
        per_step = torch.cat([distill_loss(module.step_logits(b), b["target_ids"], b["target_w"]) for b in members])
        per_step.mean().backward()
        assert_grads_close(ddp, lora_grads(module))


def _trainer(tmp_path, max_steps, callbacks=(), accumulate=2, **kw):
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=pl.loggers.CSVLogger(str(tmp_path), name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        callbacks=list(callbacks),
        default_root_dir=str(tmp_path),
        **kw,
    )


def _mean_loss(module, samples):
    dm = DistillDataModule(samples, steps_per_batch=1000, accumulate_grad_batches=1, shuffle=False)
    with torch.no_grad():
        return float(module.compute_loss(dm.epoch_batches(0)[0])["mean_loss"])


def test_short_fit_lowers_the_loss_logs_and_warns_about_repeats(tiny_dir, vocab, tmp_path, caplog):
    samples = make_samples(vocab, n=4, seed=3)
    # LoRA on lm_head too: a tiny random model learns the random soft labels visibly in 12 updates
    lora = {**LORA, "target_modules": ["q_proj", "v_proj", "lm_head"]}
    module = make_module(tiny_dir, seed=3, lora=lora, optimizer={"_target_": "torch.optim.AdamW", "lr": 2e-2, "weight_decay": 0.0})
    dm = DistillDataModule(samples, steps_per_batch=4, accumulate_grad_batches=2)
    before = _mean_loss(module, samples)
    trainer = _trainer(tmp_path, max_steps=12, log_every_n_steps=1)
    with caplog.at_level(logging.WARNING, logger="lightreasoner.training.distill"):
        trainer.fit(module, datamodule=dm)
    after = _mean_loss(module, samples)
    assert trainer.global_step == 12
    assert after < 0.7 * before, (before, after)
    warnings = [r for r in caplog.records if "repeat" in r.getMessage()]
    assert len(warnings) == 1 and "passes over" in warnings[0].getMessage()
    # logged metrics
    import csv

    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    keys = set().union(*(r.keys() for r in rows))
    assert {"train/loss", "train/kl", "train/soft_label_entropy", "train/lr"} <= keys
    lrs = [float(r["train/lr"]) for r in rows if r.get("train/lr")]
    assert lrs[0] == pytest.approx(2e-2) and lrs[-1] < lrs[0]  # linear decay, no warm-up


def test_checkpoint_resume_continues_at_the_right_step_and_batch(tiny_dir, vocab, tmp_path):
    import lightning.pytorch as pl

    class Record(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append((batch["epoch"], batch["batch_index"]))

    samples = make_samples(vocab, n=6, seed=4)
    opt = {"_target_": "torch.optim.AdamW", "lr": 1e-2}

    def data():
        return DistillDataModule(samples, steps_per_batch=2, accumulate_grad_batches=2, seed=1)

    assert data().num_updates_per_epoch == 3 and data().num_micro_batches_per_epoch == 6
    # uninterrupted: 5 updates (crossing into epoch 1)
    rec_a = Record()
    full = make_module(tiny_dir, seed=5, optimizer=opt, max_steps=5)
    _trainer(tmp_path / "a", 5, [rec_a]).fit(full, datamodule=data())
    # interrupted after 2 updates (mid-epoch), then resumed to 5
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = make_module(tiny_dir, seed=5, optimizer=opt, max_steps=5)
    _trainer(tmp_path / "b", 2, [ckpt]).fit(first, datamodule=data())
    (path,) = list((tmp_path / "ckpt").glob("*step=2*.ckpt"))
    state = torch.load(path, weights_only=False)
    assert set(state["state_dict"]) == {n for n, p in first.named_parameters() if p.requires_grad}
    rec_b = Record()
    second = make_module(tiny_dir, seed=99, optimizer=opt, max_steps=5)  # different LoRA init: restored from ckpt
    trainer = _trainer(tmp_path / "c", 5, [rec_b])
    trainer.fit(second, datamodule=data(), ckpt_path=str(path))
    assert trainer.global_step == 5
    assert rec_b.seen == rec_a.seen[4:]
    assert rec_a.seen[:6] == [(0, i) for i in range(6)] and rec_a.seen[6:] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    wa, wb = lora_weights(full), lora_weights(second)
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-5, atol=1e-6, msg=n)


def _inputs(vocab):
    g = torch.Generator().manual_seed(11)
    return torch.randint(3, vocab, (2, 13), generator=g)


def test_save_adapter_load_and_merge_reproduce_logits(tiny_dir, vocab, tmp_path):
    module = make_module(tiny_dir, seed=6)
    module.eval()
    x = _inputs(vocab)
    with torch.no_grad():
        adapted = module.model(input_ids=x).logits
        base = module.model.get_base_model()
        with module.model.disable_adapter():
            plain = module.model(input_ids=x).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter does something
    spec = ModelSpec(str(tiny_dir), device="cpu")
    out = save_adapter(module, tmp_path / "adapter", spec, sample_key="abc123", extra={"max_steps": 7})
    meta = json.loads((out / "lightreasoner.json").read_text())
    assert meta["kind"] == "lora_adapter" and meta["sample_key"] == "abc123" and meta["max_steps"] == 7
    assert meta["base"] == spec.to_dict() and "gguf_file" in meta["base"] and meta["base"]["dtype"] == "float32"
    assert meta["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    loaded, tok = load_adapted_model(out, device="cpu")
    assert tok.padding_side == "left"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, adapted, rtol=0, atol=1e-5)

    merged_dir = merge_adapter(out, tmp_path / "merged")
    mmeta = json.loads((merged_dir / "lightreasoner.json").read_text())
    assert mmeta["kind"] == "merged" and mmeta["base"] == spec.to_dict() and mmeta["adapter"]["sample_key"] == "abc123"
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, adapted, rtol=0, atol=1e-5)
        m2, _ = load_adapted_model(merged_dir, device="cpu")
        torch.testing.assert_close(m2(input_ids=x).logits, adapted, rtol=0, atol=1e-5)
        m3, _ = load_adapted_model(out, device="cpu", merge=True)
        torch.testing.assert_close(m3(input_ids=x).logits, adapted, rtol=0, atol=1e-5)
    del base


def test_failed_save_leaves_nothing_and_keeps_the_old_dir(tiny_dir, tmp_path, monkeypatch):
    module = make_module(tiny_dir)
    spec = ModelSpec(str(tiny_dir), device="cpu")
    out = save_adapter(module, tmp_path / "adapter", spec, sample_key="old")
    real = models.load_tokenizer

    class Broken:
        def __init__(self, tok):
            self.tok = tok

        def save_pretrained(self, path):
            (Path(path) / "partial.txt").write_text("x")
            raise OSError("disk full")

    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: Broken(real(*a, **k)))
    with pytest.raises(OSError, match="disk full"):
        save_adapter(module, tmp_path / "adapter", spec, sample_key="new")
    with pytest.raises(OSError, match="disk full"):
        save_adapter(module, tmp_path / "other", spec, sample_key="new")
    assert json.loads((out / "lightreasoner.json").read_text())["sample_key"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_optimizer_and_schedule_configs():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(None, p)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 5e-5 and opt.param_groups[0]["weight_decay"] == 0.0
    opt = build_optimizer({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}, p)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    import functools

    opt = build_optimizer(functools.partial(torch.optim.Adam, lr=0.3), p)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="_target_"):
        build_optimizer({"lr": 1.0}, p)
    lin = schedule_lambda("linear", 0, 10)
    assert [lin(s) for s in (0, 5, 10, 11)] == [1.0, 0.5, 0.0, 0.0]
    warm = schedule_lambda("linear", 2, 10)
    assert [warm(s) for s in (0, 1, 2, 6)] == [0.0, 0.5, 1.0, 0.5]
    cos = schedule_lambda("cosine", 0, 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert schedule_lambda("constant", 0, 10)(9) == 1.0
    with pytest.raises(ValueError, match="scheduler.type"):
        schedule_lambda("step", 0, 10)


def test_hydra_style_configs_are_accepted(tiny_dir, tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]},
            "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.0},
            "scheduler": {"type": "cosine", "warmup_steps": 1},
        }
    )
    module = DistillModule(
        OmegaConf.create({"name_or_path": str(tiny_dir), "device": "cpu"}),
        lora=cfg.lora, optimizer=cfg.optimizer, scheduler=cfg.scheduler, max_steps=4,
    )
    assert module.model.peft_config["default"].r == 2
    assert sorted(module.model.peft_config["default"].target_modules) == ["q_proj"]
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.AdamW)
    assert conf["lr_scheduler"]["scheduler"].get_last_lr()[0] == 0.0  # warm-up starts at 0
    with pytest.raises(ValueError, match="scheduler"):
        DistillModule(ModelSpec(str(tiny_dir), device="cpu"), scheduler={"type": "linear", "warmup": 3})


def test_gguf_expert_is_rebuilt_plain_and_recorded(tiny_dir, vocab, tmp_path, monkeypatch):
    """A GGUF-style spec: loaded with plain=True for training and merging; gguf_file recorded.

    No GGUF file is needed: the loaders are replaced by ones that check the spec and load the
    tiny checkpoint (the real-file path is covered by the slow test below)."""
    calls = []
    real_model, real_tok = models.load_model, models.load_tokenizer

    def fake_model(spec, what="model", plain=False, dtype=None):
        assert spec.gguf_file == "expert-q4.gguf"
        calls.append(("model", plain, dtype))
        return real_model(ModelSpec(spec.name_or_path, dtype=spec.dtype, device=spec.device), what, dtype=dtype)

    def fake_tok(spec, what="model", padding_side="left"):
        calls.append(("tokenizer", spec.gguf_file))
        return real_tok(ModelSpec(spec.name_or_path), what, padding_side=padding_side)

    monkeypatch.setattr(models, "load_model", fake_model)
    monkeypatch.setattr(models, "load_tokenizer", fake_tok)
    spec = ModelSpec(str(tiny_dir), gguf_file="expert-q4.gguf", device="cpu")
    torch.manual_seed(0)
    module = DistillModule(spec, lora=LORA)
    assert calls[-1] == ("model", True, None)
    x = _inputs(vocab)
    with torch.no_grad():
        adapted = module.model.eval()(input_ids=x).logits
    out = save_adapter(module, tmp_path / "adapter", module.expert_spec, sample_key="k")
    assert json.loads((out / "lightreasoner.json").read_text())["base"]["gguf_file"] == "expert-q4.gguf"
    merged_dir = merge_adapter(out, tmp_path / "merged")
    assert ("model", True, torch.float32) in calls
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, adapted, rtol=0, atol=1e-5)


def _gguf_dir():
    root = Path(os.environ.get("LIGHTREASONER_MODELS", Path.home() / ".cache/lightreasoner/models")).expanduser()
    return root if (root / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_gguf_dir() is None, reason="needs SmolLM2-135M-Instruct.Q4_1.gguf (../shared/tools/fetch-offline-models)")
def test_real_gguf_expert_trains_saves_and_merges(tmp_path):
    spec = ModelSpec(str(_gguf_dir()), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    torch.manual_seed(0)
    module = DistillModule(spec, lora=LORA)
    v = module.model.get_base_model().config.vocab_size
    samples = make_samples(v, n=2, seed=7, max_len=16)
    dm = DistillDataModule(samples, steps_per_batch=100, accumulate_grad_batches=1)
    (batch,) = dm.epoch_batches(0)
    loss = module.compute_loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)
    module.zero_grad(set_to_none=True)
    x = samples[0].input_ids[None]
    with torch.no_grad():
        adapted = module.model.eval()(input_ids=x).logits
        with module.model.disable_adapter():
            plain = module.model(input_ids=x).logits
    out = save_adapter(module, tmp_path / "adapter", spec, sample_key="k")
    meta = json.loads((out / "lightreasoner.json").read_text())
    assert meta["base"]["gguf_file"] == spec.gguf_file and (out / "tokenizer.json").is_file()
    merged_dir = merge_adapter(out, tmp_path / "merged")
    merged, _ = load_adapted_model(merged_dir, device="cpu")
    with torch.no_grad():
        got = merged(input_ids=x).logits
    # 30 fp32 layers: merged vs unmerged rounding reaches ~3e-4 on logits of magnitude ~20,
    # far below the adapter's own effect
    effect = float((adapted - plain).abs().max())
    err = float((got - adapted).abs().max())
    assert effect > 0.05 and err < 2e-3 and err < effect / 50, (effect, err)


def test_merged_model_keeps_the_adapters_tokenizer_files_byte_for_byte(tiny_dir, tmp_path):
    # a re-saved tokenizer records flags of the process that saved it (HF_HUB_OFFLINE ->
    # "local_files_only"); a merged model rebuilt from its adapter in another environment must
    # carry the same files, or its evaluation rows' model identity no longer matches
    module = make_module(tiny_dir)
    out = save_adapter(module, tmp_path / "adapter", ModelSpec(str(tiny_dir), device="cpu"), sample_key="k")
    cfg_path = out / "tokenizer_config.json"
    written_elsewhere = json.loads(cfg_path.read_text())
    written_elsewhere["local_files_only"] = not written_elsewhere.get("local_files_only", False)
    cfg_path.write_text(json.dumps(written_elsewhere, indent=4, sort_keys=True) + "\n")
    merged_dir = merge_adapter(out, tmp_path / "merged")
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (merged_dir / name).read_bytes() == (out / name).read_bytes(), name
    first = {p.name: p.read_bytes() for p in merged_dir.iterdir() if p.name != "lightreasoner.json"}
    again = merge_adapter(out, tmp_path / "merged_again")
    assert {p.name: p.read_bytes() for p in again.iterdir() if p.name != "lightreasoner.json"} == first
