"""Every experiment preset composes, validates, and builds every object its groups name."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf, open_dict

import lightreasoner.core.config  # noqa: F401  (registers the resolvers)
from lightreasoner.training.distill import DistillSettings, build_optimizer, lora_config
from lightreasoner.eval.evaluate import EvalSettings
from lightreasoner.generation import Engine, build_engine
from lightreasoner.models.spec import ModelSpec, load_model, load_tokenizer, pair_specs
from lightreasoner.run.validation import validate
from lightreasoner.sampling.sampler import SamplingSettings
from lightreasoner.selection.select import SelectionSettings

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/lr-config-test"
    return cfg


def _fill_demo_pair(cfg):
    """The demo pair is filled in at run time (prepare); stand-in paths to build its specs."""
    with open_dict(cfg):
        if OmegaConf.is_missing(cfg.model_pair.expert, "name_or_path"):
            cfg.model_pair.expert.name_or_path = cfg.model_pair.amateur.name_or_path = "/tmp/demo-pair"
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_validates_and_instantiates(experiment, tiny_pair_dirs, tmp_path):
    cfg = _compose([f"experiment={experiment}"])
    if cfg.generation._target_.endswith("VLLMEngine") and importlib.util.find_spec("vllm") is None:
        # a vLLM preset without vLLM installed: one line naming the extra; the rest is checked with hf
        with pytest.raises(ImportError, match=r"generation=vllm needs vLLM: pip install"):
            validate(cfg)
        with open_dict(cfg):
            cfg.generation = OmegaConf.create({"_target_": "lightreasoner.generation.hf.HFEngine", "dtype": None})
    validate(cfg)
    _fill_demo_pair(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    # each group's settings class accepts the group as composed
    sampling = SamplingSettings.from_cfg(OmegaConf.to_container(cfg.sampling))
    SelectionSettings.from_cfg(OmegaConf.to_container(cfg.selection), alpha_min=sampling.alpha_min)
    DistillSettings.from_cfg(cfg.distill)
    EvalSettings.from_cfg(cfg.eval)
    expert, amateur = pair_specs(cfg)
    assert isinstance(expert, ModelSpec) and isinstance(amateur, ModelSpec)

    # the objects the groups build: LoRA config, optimizer, trainer, logger, generation engine
    assert lora_config(cfg.peft).r == cfg.peft.r
    opt = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, get_class(cfg.optimizer._target_))
    with open_dict(cfg):  # GPU presets compose on this CPU machine; build them on the CPU
        cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy = "cpu", 1, "auto"
        cfg.trainer.default_root_dir = str(tmp_path)
        if cfg.logger.get("save_dir") is not None:
            cfg.logger.save_dir = str(tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    if cfg.logger.get("_target_"):
        assert instantiate(cfg.logger) is not None
    assert issubclass(get_class(cfg.generation._target_), Engine)
    spec = ModelSpec(tiny_pair_dirs["expert"], device="cpu")
    engine = build_engine(cfg.generation, load_model(spec), load_tokenizer(spec), spec=spec)  # engines that load their own weights read the spec
    assert isinstance(engine, Engine) and engine.eos_token_ids


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_presets_compose_without_a_config_dir(sweep):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"+sweep={sweep}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params and all("," in str(v) for v in params.values())


@functools.cache
def _groups() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra", "sweep"))


def test_groups_that_build_objects_name_their_target():
    for group in ("generation", "optimizer", "trainer"):
        for opt in (CONF / group).glob("*.yaml"):
            node = OmegaConf.load(opt)
            target = node.get("_target_")
            if target is None and "defaults" in node:  # a preset over the group's default
                continue
            assert target, f"{group}/{opt.name}"
            get_class(target)
    assert "generation" in _groups()
