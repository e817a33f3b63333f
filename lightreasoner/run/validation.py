"""Every check of a composed run config, before any work: :func:`validate`.

Each config group is checked by the settings class of the code it configures; the checks here
span groups (the demo world against the named pair and dataset, ``tuned=`` against the pair's
expert, ``eval.models`` entries, the cache directory, rounds). ``train.py`` runs
:func:`validate` on every job before Hydra starts (:mod:`lightreasoner.run.cli`), and
:func:`lightreasoner.run.main.run` runs it again in-process; the heavy modules (torch,
Lightning) are imported only where a group's settings class lives.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightreasoner.core.config import MOVED_KEYS, check_run_name, config_dir, to_plain

STAGES = ("sample", "distill", "evaluate", "all")

STAGE_NAMES = ("prepare", "sample", "distill", "evaluate")
"""The stages a run times (and sets threads for)."""

TINY_THREADS = 1
"""``threads: auto`` for the demo's tiny models: intra-op threads buy them nothing, and on a
busy machine two spinning threads sharing a core collapse (measured: the demo expert trained
at 0.27 it/s with 2 threads and one core busy elsewhere, 3.6 it/s with 1; ``bench/threads.py``)."""

EVAL_MODEL_NAMES = ("base", "tuned", "amateur", "contrastive_decoding")
"""The named entries of ``eval.models``; any other entry is a local directory or a hub id."""


def validate(cfg: DictConfig):
    """Check every setting before any work; one clear error naming the field. Returns the run's
    :class:`~lightreasoner.methods.Method`.

    The checks that need no torch come first (:func:`validate_light`), so the commonest mistakes
    are answered before the group settings classes import torch and Lightning."""
    validate_light(cfg)
    from lightreasoner.selection.select import SelectionSettings  # torch only: the commonest keys are answered before Lightning loads

    alpha_min = cfg.sampling.get("alpha_min")
    numeric_min = isinstance(alpha_min, (int, float)) and not isinstance(alpha_min, bool) and 0 < alpha_min <= 1
    SelectionSettings.from_cfg(cfg.get("selection"), alpha_min=float(alpha_min) if numeric_min else None)  # checked here only
    from lightreasoner.data.benchmarks import check_dataset_config
    from lightreasoner.training.distill import DistillSettings, check_callbacks, check_optimizer, check_scheduler, check_trainer, lora_config
    from lightreasoner.eval.drift import DriftSettings
    from lightreasoner.eval.evaluate import EvalSettings, _eval_split
    from lightreasoner.generation import check_engine_config
    from lightreasoner.methods import build_method
    from lightreasoner.models.spec import pair_specs
    from lightreasoner.models.pairs import validate_pair
    from lightreasoner.sampling.sampler import SamplingSettings

    if cfg.get("demo") is not None:
        from lightreasoner.demo.pair import DemoConfig

        DemoConfig.from_any(cfg.demo)
    SamplingSettings.from_cfg(to_plain(cfg.sampling))
    distill = DistillSettings.from_cfg(cfg.distill)
    DriftSettings.from_cfg(cfg.get("drift"))
    eval_settings = EvalSettings.from_cfg(cfg.eval)
    lora_config(cfg.peft)
    method = build_method(cfg)
    method.check(cfg)  # the method's own checks against the rest of the config
    check_scheduler(cfg.scheduler)
    check_callbacks(cfg.get("callbacks"))
    check_optimizer(cfg.optimizer)
    check_trainer(cfg.trainer)
    check_engine_config(cfg.get("generation"))
    check_dataset_config(cfg.dataset)
    if not is_demo_pair(cfg):  # the demo's pair is filled in by prepare(): checked when it is built
        for spec, what in zip(pair_specs(cfg), ("model_pair.expert", "model_pair.amateur")):
            spec.check(what, paths=False)  # a missing checkpoint is named when it is loaded
    check_tuned(cfg)
    if cfg.stage in ("evaluate", "all"):
        if cfg.stage == "evaluate" and "tuned" in cfg.eval.models and cfg.get("tuned") is None and method.trains:
            raise ValueError("eval.models: 'tuned' needs tuned=<adapter or merged dir> with stage=evaluate")
        for name in cfg.eval.benchmarks:
            bench = benchmark_config(cfg, str(name))
            check_dataset_config(bench, _eval_split(bench, eval_settings), what=f"eval.benchmarks[{name}]")
    validate_pair(cfg)
    check_rounds(cfg, cfg.get("rounds", 1), method, distill)
    return method


KEY_KINDS: dict[str, str] = {
    # keys whose group has no settings class of its own (Lightning / torch / Hydra objects are
    # built from them) or whose class checks only some fields: the kind each must have
    "method.name": "str",
    "optimizer._target_": "str", "optimizer._partial_": "bool", "optimizer.weight_decay": "number",
    "optimizer.eps": "number", "optimizer.betas": "pair",
    "trainer._target_": "str", "trainer.accelerator": "str", "trainer.strategy": "str|mapping", "trainer.devices": "int|str|list",
    "trainer.gradient_clip_val": "number|null", "trainer.log_every_n_steps": "int", "trainer.use_distributed_sampler": "bool",
    "trainer.enable_checkpointing": "bool", "trainer.enable_progress_bar": "bool", "trainer.enable_model_summary": "bool",
    "trainer.default_root_dir": "str|null",
    "logger._target_": "str|null", "logger.save_dir": "str|null", "logger.name": "str|null", "logger.project": "str|null",
    "eval.benchmarks": "list", "eval.models": "list", "eval.baseline": "str|null", "eval.system_prompt": "str|null",
    "eval.prompt_template": "str|null", "generation.dtype": "str|null", "dataset.hub": "mapping|null",
    "model_pair.name": "str", "tuned": "str|null", "about": "str|null",
}
"""The kinds: ``str``, ``bool``, ``int`` (never a bool), ``number``, ``list``, ``mapping``,
``pair`` (two numbers), ``null``; ``a|b`` either."""


def _is_kind(value: Any, kind: str) -> bool:
    from omegaconf import DictConfig as _D, ListConfig as _L

    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return any({
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": is_num,
        "list": lambda v: isinstance(v, (list, tuple, _L)),
        "mapping": lambda v: isinstance(v, (dict, _D)),
        "pair": lambda v: isinstance(v, (list, tuple, _L)) and len(v) == 2 and all(is_num(x) for x in v),
        "null": lambda v: v is None,
    }[k](value) for k in kind.split("|"))


KIND_WORDS = {"str": "a string", "bool": "true or false", "int": "an integer", "number": "a number", "list": "a list",
              "mapping": "a mapping", "pair": "two numbers [a, b]", "null": "null"}


def check_key_kinds(cfg: DictConfig) -> None:
    """Each key of :data:`KEY_KINDS` present in ``cfg`` has its kind: one line naming the key."""
    for key, kind in KEY_KINDS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None and OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False) == "<absent>":
            continue
        if not _is_kind(value, kind):
            expected = " or ".join(KIND_WORDS[k] for k in kind.split("|"))
            raise ValueError(f"{key}: expected {expected}, got {to_plain(value)!r}")
    weights = OmegaConf.select(cfg, "demo.task.op_weights", default=None)
    for op, w in (weights or {}).items():
        if not _is_kind(w, "number") or w < 0:
            raise ValueError(f"demo.task.op_weights.{op}: expected a number >= 0, got {w!r}")


def validate_light(cfg: DictConfig) -> None:
    """The checks that import neither torch nor Lightning: the run's own keys, the run name, the
    cache directory, the demo world against the named pair and dataset, ``eval.models`` names,
    the ``tuned=`` path, threads and ``trainer.max_steps``."""
    if cfg.stage not in STAGES:
        raise ValueError(f"stage: expected one of {list(STAGES)}, got {cfg.stage!r}")
    conf = config_dir()  # top-level keys: train.yaml's own and one per config group
    known = {str(k) for k in OmegaConf.load(conf / "train.yaml") if k != "defaults"} | {p.name for p in conf.iterdir() if p.is_dir()}
    unknown = sorted(str(k) for k in cfg if str(k) not in known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.7)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ValueError(f"unknown top-level key(s) {unknown}{hint}; expected some of {sorted(known)}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed: expected an integer, got {cfg.seed!r}")
    check_key_kinds(cfg)
    check_moved_keys(cfg)
    check_run_name(cfg.get("run_name"))
    check_cache_dir(cfg)
    check_demo_world(cfg)
    tuned = cfg.get("tuned")
    if tuned is not None:
        # a hub id is "owner/name"; anything with a path's prefix or more slashes is a directory
        looks_like_path = str(tuned).startswith(("/", ".", "~")) or str(tuned).count("/") > 1
        if looks_like_path and not Path(os.path.expanduser(str(tuned))).exists():
            raise FileNotFoundError(f"tuned: no such directory {str(tuned)!r} (expected the adapter or merged directory of a finished run)")
    if cfg.stage in ("evaluate", "all"):
        check_eval_models(cfg)
    max_steps = cfg.trainer.get("max_steps")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"trainer.max_steps: expected an integer >= 1, got {max_steps!r}")
    for name in STAGE_NAMES:
        stage_threads(cfg, name)


# --------------------------------------------------------------------------- the demo world


def is_demo_pair(cfg: DictConfig) -> bool:
    """True when ``model_pair`` is one of the demo's pairs (``model_pair=demo*``): its expert's
    ``name_or_path`` is ``???``, filled in by the demo's prepare step with the built pair."""
    expert = cfg.model_pair.get("expert") if "model_pair" in cfg else None
    return expert is not None and "name_or_path" in expert.keys() and OmegaConf.is_missing(expert, "name_or_path")


def _experiments() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def check_demo_world(cfg: DictConfig) -> None:
    """What is named is what runs: the demo experiment (the default) runs its own pair on its
    own task, and a demo pair or the demo task needs the demo experiment. A real pair or dataset
    named under the demo, or the demo's pair under another experiment, is one line saying which
    experiment to add (``prepare`` would otherwise run the demo under the real pair's name)."""
    demo = cfg.get("demo") is not None
    demo_pair = is_demo_pair(cfg)
    demo_data = str(cfg.dataset.get("name")) == "demo"
    presets = [e for e in _experiments() if e != "demo"]
    if demo and not demo_pair:
        raise ValueError(
            f"model_pair: {cfg.model_pair.get('name')!r} is not the demo's pair, but experiment=demo (the default) runs "
            f"the offline demo's task, benchmarks and settings; add experiment=none to run this pair with train.yaml's "
            f"defaults, or a preset: experiment={'|'.join(presets)}")
    if demo and not demo_data:
        raise ValueError(
            f"dataset: {cfg.dataset.get('name')!r} under experiment=demo (the default) would be read by the demo's tiny "
            f"pair; add experiment=none (or a preset: experiment={'|'.join(presets)}) with the model_pair you mean")
    if not demo and demo_pair:
        raise ValueError(
            f"model_pair: {cfg.model_pair.get('name')!r} is the demo's pair, built by experiment=demo; use "
            f"experiment=demo (the default) with it")
    if not demo and demo_data:
        raise ValueError("dataset: 'demo' is the demo's generated task, written by experiment=demo; use experiment=demo with it")
    if not demo:
        names = [str(b) for b in cfg.eval.get("benchmarks") or []]
        if "demo" in names:
            raise ValueError("eval.benchmarks: 'demo' is the demo's generated task, written by experiment=demo; use experiment=demo with it")
        return
    amateur = cfg.model_pair.get("amateur") or {}
    if amateur.get("kind") == "checkpoint":
        name = str(amateur.get("name_or_path") or "")
        steps = [int(s) for s in cfg.demo.get("expert_checkpoints") or []]
        if name.startswith("expert_step") and name[len("expert_step"):].isdigit():
            step = int(name[len("expert_step"):])
            if step not in steps:
                raise ValueError(
                    f"model_pair.amateur.name_or_path: {name} is the demo expert after {step} steps, kept only when "
                    f"demo.expert_checkpoints holds {step} (got {steps}); add demo.expert_checkpoints=[{step}]")
        elif not Path(os.path.expanduser(name)).is_dir():
            raise ValueError(
                f"model_pair.amateur.name_or_path: with the demo and kind=checkpoint, expected expert_stepN "
                f"(N in demo.expert_checkpoints {steps}) or a directory, got {name!r}")


def demo_expert_dir(cfg: DictConfig) -> Path:
    """Where the demo's prepare step puts the expert for this config (built or not)."""
    from lightreasoner.demo.pair import demo_root

    return demo_root(cfg.demo, cfg.paths.cache_dir) / "expert"


# --------------------------------------------------------------------------- cross-group checks


def check_moved_keys(cfg: DictConfig) -> None:
    """An old spelling added to the config (``+sampling.beta=0.6``) is one line naming the key's home now.
    ``method.*`` keys are left to the method's class: one method's old key is another's own
    (``contrastive_decoding`` has ``alpha``), and an unknown field is already one line there."""
    for old, new in MOVED_KEYS.items():
        if old.startswith("method."):
            continue
        if OmegaConf.select(cfg, old, default="<absent>", throw_on_missing=False) != "<absent>":
            raise ValueError(f"{old}: moved to {new}")


def check_cache_dir(cfg: DictConfig) -> None:
    """``paths.cache_dir``: a directory, or a path where one can be made (never a file)."""
    raw = cfg.paths.get("cache_dir")
    if raw is None:
        raise ValueError("paths.cache_dir: expected a directory (env LIGHTREASONER_CACHE), got null")
    path = Path(os.path.expanduser(str(raw)))
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        via = " (from LIGHTREASONER_CACHE)" if os.environ.get("LIGHTREASONER_CACHE") else ""
        raise NotADirectoryError(f"paths.cache_dir: expected a directory{via}, but {str(probe)!r} is a file")


def _same_model(a: dict, b: dict) -> bool:
    def norm(spec: dict) -> tuple:
        name = str(spec.get("name_or_path") or "")
        p = Path(os.path.expanduser(name))
        if p.exists() or name.startswith(("/", ".", "~")):
            name = os.path.normpath(os.path.abspath(p))
        return name, spec.get("gguf_file") or None

    return norm(a) == norm(b)


def check_tuned(cfg: DictConfig) -> None:
    """``tuned=``: an existing adapter or merged directory (or a hub id) whose base model is this
    run's expert, so ``base`` and ``tuned`` compare the same model before and after."""
    from lightreasoner.training.reference import resolve_model_ref

    tuned = cfg.get("tuned")
    if tuned is None:
        return
    ref = resolve_model_ref(str(tuned))
    ref.check("tuned")
    if ref.base is None:
        return
    base = ref.base.to_dict()
    expert = {"name_or_path": str(demo_expert_dir(cfg))} if is_demo_pair(cfg) else to_plain(cfg.model_pair.expert)
    if not _same_model(base, expert):
        shown = lambda s: f"{s.get('name_or_path')}{'/' + s['gguf_file'] if s.get('gguf_file') else ''}"  # noqa: E731
        raise ValueError(
            f"tuned: {tuned} was trained on {shown(base)}, but this run's expert (model_pair.expert) is {shown(expert)}; "
            f"name the experiment/model_pair the adapter's run used")


def check_eval_models(cfg: DictConfig) -> None:
    """``eval.models``: the named entries, an existing directory or a hub id ``owner/name``;
    a mistyped name is one line, not a hub download that fails after training."""
    for entry in cfg.eval.get("models") or []:
        if not isinstance(entry, str):
            continue  # a mapping: a model spec, checked when it is resolved
        if entry in EVAL_MODEL_NAMES or Path(os.path.expanduser(entry)).exists():
            continue
        if entry.count("/") == 1 and not entry.startswith(("/", ".", "~")):
            continue  # a hub id
        near = difflib.get_close_matches(entry, EVAL_MODEL_NAMES, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ValueError(
            f"eval.models: {entry!r} is not a model: {hint}expected {'|'.join(EVAL_MODEL_NAMES)}, an existing "
            f"directory or a hub id owner/name")


def benchmark_config(cfg: DictConfig, name: str) -> dict:
    """``conf/dataset/{name}.yaml`` resolved against this run's ``paths`` (the training set's
    own node when ``name`` is it, so its overrides apply)."""
    from lightreasoner.data.benchmarks import dataset_config

    if name == cfg.dataset.name:
        return to_plain(cfg.dataset)
    return dataset_config(name, paths=to_plain(cfg.paths))


def stage_threads(cfg: DictConfig, stage: str) -> int | None:
    """torch CPU threads for ``stage`` from the ``threads`` key (None: leave torch's default).

    ``threads``: ``auto`` (the demo's tiny models: 1; real models: torch's default, one per
    core; env ``LIGHTREASONER_THREADS`` overrides ``auto``), an integer for every stage, or a
    mapping ``{prepare, sample, distill, evaluate}`` of integers / ``auto``.
    """
    value = cfg.get("threads", "auto")
    if hasattr(value, "items"):
        unknown = sorted(set(value) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"threads: unknown stage(s) {unknown}; expected some of {list(STAGE_NAMES)}")
        value = value.get(stage, "auto")
    if value is None or value == "auto":
        env = os.environ.get("LIGHTREASONER_THREADS")
        if env:
            if not env.isdigit() or int(env) < 1:
                raise ValueError(f"LIGHTREASONER_THREADS: expected an integer >= 1, got {env!r}")
            return int(env)
        return TINY_THREADS if cfg.get("demo") is not None else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"threads: expected 'auto', an integer >= 1 or a mapping of stages to them, got {value!r}")
    return value


def check_rounds(cfg: DictConfig, rounds: Any, method, distill=None) -> None:
    """``rounds > 1`` (the top-level key; ``distill.rounds`` before issue 30) runs every stage in
    one process: it needs ``stage=all``, a method that trains, one device, and samples to
    refresh (not ``distill.import_published``) (validation, before any work)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
    if rounds == 1:
        return
    if distill is not None and distill.import_published is not None:
        raise ValueError("rounds: more than one round samples with the tuned expert; it cannot train on distill.import_published")
    if cfg.stage != "all":
        raise ValueError(f"rounds: {rounds} rounds each sample, train and evaluate; they need stage=all, got stage={cfg.stage}")
    if not method.trains:
        raise ValueError(f"rounds: method {method.name!r} trains nothing; rounds need a method that trains")
    if cfg.trainer.get("devices", 1) != 1:
        raise ValueError(f"rounds: rounds run in one process; expected trainer.devices=1, got {cfg.trainer.devices!r}")
