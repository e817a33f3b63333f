"""The fine-tune built from config (issue 30 §3): the LightningModule and DataModule from their
``_target_`` nodes, the ``callbacks`` group, the scheduler as a ``_partial_`` target, ``rounds``
at the top level, and the run's training identity unchanged by the move."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import OmegaConf, open_dict

import lightreasoner.core.config  # noqa: F401  (registers the resolvers)
from lightreasoner.training.datamodule import DistillDataModule
from lightreasoner.training.distill import DistillModule, DistillSettings, TunedTokenCounter, build_callbacks, check_callbacks, check_scheduler
from lightreasoner.models.spec import ModelSpec
from lightreasoner.run.resume import training_identity
from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model, save_pair_member

from _samples import random_trace_samples

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = build_char_tokenizer()
    return save_pair_member(build_tiny_model(tok, seed=0, hidden_size=32, num_layers=1), tok, tmp_path_factory.mktemp("expert"))


def test_the_datamodule_is_instantiated_from_the_composed_config():
    cfg = _compose("distill.packing=false", "distill.steps_per_batch=3", "trainer.accumulate_grad_batches=2", "distill.padding_side=left")
    samples = random_trace_samples(5, 0, 40, 8, 16, 3, 4, 3)
    make = instantiate(cfg.distill.datamodule, _partial_=True)
    dm = make(samples, pad_token_id=7, seed=3)
    assert isinstance(dm, DistillDataModule)
    by_hand = DistillDataModule(samples, steps_per_batch=3, accumulate_grad_batches=2, packing=False, pad_token_id=7,
                                padding_side="left", seed=3)
    got, want = dm.epoch_batches(), by_hand.epoch_batches()
    assert len(got) == len(want) and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(got, want))
    assert all(b["accumulate"] == 2 for b in got)


def test_the_module_is_instantiated_from_the_composed_config(tiny_dir):
    cfg = _compose("distill.loss=jsd", "distill.jsd_beta=0.3", "peft.r=2", "peft.alpha=4", "peft.dropout=0.0",
                   "scheduler=cosine", "scheduler.warmup_steps=10", "optimizer.lr=0.01")
    settings = DistillSettings.from_cfg(cfg.distill)
    module = instantiate(cfg.distill.module, _partial_=True)(
        expert=ModelSpec(str(tiny_dir), device="cpu"), settings=settings, max_steps=100, sample_key="k", softmax_width=None
    )
    assert isinstance(module, DistillModule)
    assert (module.loss_kind, module.jsd_beta) == ("jsd", 0.3)
    assert module.model.peft_config["default"].r == 2
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 0.01
    assert sched.get_last_lr()[0] == 0.0  # warm-up starts at 0
    assert sched.lr_lambdas[0](10) == 1.0 and sched.lr_lambdas[0](55) == pytest.approx(0.5)  # then half a cosine
    assert module.hparams["loss"] == "jsd" and module.hparams["optimizer"]["lr"] == 0.01


def test_a_method_brings_its_own_module_by_target(tiny_dir):
    cfg = _compose(f"distill.module._target_={__name__}.OwnModule")
    DistillSettings.from_cfg(cfg.distill)  # its target imports
    module = instantiate(cfg.distill.module, _partial_=True)(
        expert=ModelSpec(str(tiny_dir), device="cpu"), settings=DistillSettings.from_cfg(cfg.distill), max_steps=1,
        sample_key=None, softmax_width=None)
    assert type(module).__name__ == "OwnModule"
    with pytest.raises(ValueError, match=r"^distill\.module\._target_: cannot import 'no\.such\.Module'"):
        DistillSettings.from_cfg(_compose("distill.module._target_=no.such.Module").distill)


class OwnModule(DistillModule):
    """A stand-in for a method's own LightningModule."""


def test_the_module_trusts_its_settings_and_checks_only_when_built_by_hand(tiny_dir):
    spec = ModelSpec(str(tiny_dir), device="cpu")
    with pytest.raises(ValueError, match=r"^distill\.loss"):
        DistillModule(spec, loss="mse")
    with pytest.raises(ValueError, match=r"^distill\.jsd_beta"):
        DistillModule(spec, jsd_beta=1.5)
    settings = DistillSettings(loss="reverse_kl")
    assert DistillModule(spec, settings=settings, loss="ignored").loss_kind == "reverse_kl"


def test_the_callbacks_group(tmp_path):
    cfg = _compose("trainer.max_steps=50")
    kw = dict(ckpt_dir=tmp_path, max_steps=50)
    cbs = build_callbacks(cfg.callbacks, logger=True, checkpointing=True, **kw)
    assert [type(c) for c in cbs] == [TunedTokenCounter, ModelCheckpoint, LearningRateMonitor]
    ckpt = cbs[1]
    assert Path(ckpt.dirpath) == tmp_path and ckpt.save_last and ckpt._every_n_train_steps == 10  # max_steps / 5
    assert [type(c) for c in build_callbacks(cfg.callbacks, logger=False, checkpointing=True, **kw)] == [TunedTokenCounter, ModelCheckpoint]
    assert [type(c) for c in build_callbacks(cfg.callbacks, logger=False, checkpointing=False, **kw)] == [TunedTokenCounter]
    cfg = _compose("distill.checkpoint_every=7", "callbacks.tuned_tokens=null", "callbacks.lr_monitor=null")
    cbs = build_callbacks(cfg.callbacks, logger=True, checkpointing=True, **kw)
    assert [type(c) for c in cbs] == [TunedTokenCounter, ModelCheckpoint] and cbs[1]._every_n_train_steps == 7
    check_callbacks(cfg.callbacks)
    with pytest.raises(ValueError, match=r"^callbacks\.bad\._target_: 'builtins\.dict' is not a lightning"):
        check_callbacks({**OmegaConf.to_container(cfg.callbacks, resolve=True), "bad": {"_target_": "builtins.dict"}})


def test_the_scheduler_is_a_partial_target():
    for name, at_half in (("linear", 0.5), ("cosine", 0.5)):
        cfg = _compose(f"scheduler={name}", "scheduler.warmup_steps=10")
        make = instantiate(cfg.scheduler)
        assert isinstance(make, functools.partial)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt, total_steps=110)
        f = sched.lr_lambdas[0]
        assert (f(0), f(5), f(10)) == (0.0, 0.5, 1.0) and f(60) == pytest.approx(at_half) and f(110) == pytest.approx(0.0)
        check_scheduler(cfg.scheduler)
    with pytest.raises(ValueError, match=r"^scheduler: unknown field\(s\) \['bogus'\]"):
        check_scheduler(_compose("+scheduler.bogus=1").scheduler)
    with pytest.raises(ValueError, match=r"^scheduler\._target_: cannot import"):
        check_scheduler({"_target_": "no.such.schedule", "_partial_": True})


def test_rounds_is_a_top_level_key():
    cfg = _compose("rounds=3")
    assert cfg.rounds == 3 and "rounds" not in cfg.distill
    assert _compose().rounds == 1
    with pytest.raises(ConfigCompositionException, match="distill.rounds"):
        _compose("distill.rounds=3")
    with pytest.raises(ValueError, match=r"^distill: unknown field\(s\) \['rounds'\]"):
        DistillSettings.from_cfg({"rounds": 2})


def _old_shape(cfg):
    """The config as composed before issue 30 §3: no build nodes, rounds in distill, the scheduler
    a plain {type, warmup_steps}."""
    old = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(old):
        del old.distill["module"], old.distill["datamodule"], old.scheduler["_target_"], old.scheduler["_partial_"]
        old.distill.rounds = old.rounds
        del old["rounds"]
    return old


@pytest.mark.parametrize("overrides", [(), ("rounds=3",), ("scheduler=cosine", "scheduler.warmup_steps=10"),
                                       ("distill.loss=jsd", "distill.jsd_beta=0.3", "distill.packing=false"),
                                       ("quirks=published",), ("experiment=coder_cpu", "trainer.accumulate_grad_batches=4")])
def test_the_training_identity_is_the_one_before_the_move(overrides):
    """A run named before the fine-tune was built from config resumes: same settings, same hash."""
    cfg = _compose(*overrides)
    sha, settings = training_identity(cfg)
    assert training_identity(_old_shape(cfg)) == (sha, settings)
    assert "module" not in settings["distill"] and settings["distill"]["rounds"] == cfg.rounds
    assert set(settings["scheduler"]) == {"type", "warmup_steps"}


def test_what_the_build_nodes_add_is_part_of_the_identity():
    base = training_identity(_compose())[0]
    assert training_identity(_compose(f"distill.module._target_={__name__}.OwnModule"))[0] != base
    assert training_identity(_compose("+distill.datamodule.shuffle=false"))[0] != base
    assert training_identity(_compose("rounds=2"))[0] != base
    assert training_identity(_compose("distill.checkpoint_every=3", "callbacks.lr_monitor=null"))[0] == base
