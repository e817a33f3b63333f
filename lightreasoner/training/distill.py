"""Stage 2: LoRA distillation of the expert on the contrastive soft labels.

:class:`DistillModule` wraps the expert (a :class:`~lightreasoner.models.spec.ModelSpec`; GGUF
experts are rebuilt as plain models so peft and saving work) in a peft LoRA model and trains it
to minimise ``KL(vC_t || softmax(logits_t))`` at every kept position of a batch from
:class:`~lightreasoner.training.datamodule.DistillDataModule` (``distill.loss``: that forward KL, the
method; or a reverse KL or a generalized JSD, :func:`lightreasoner.core.contrast.objective_loss`).
The decoder runs once over each padded sequence; the output embedding is applied only at the
kept positions (``[K, V]`` logits, the softmax over the model's full logit width, so special
tokens can be targets). The loss of each
optimizer update is the mean over its kept steps, accumulation and data parallelism (DDP, the
batches' ``loss_scale``) included.

Saving, reloading and merging the trained adapter: :mod:`lightreasoner.training.checkpoints`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightreasoner.models import spec as models
from lightreasoner.core.config import settings_from_cfg, to_plain
from lightreasoner.core.contrast import LOSSES, objective_loss, soft_label_entropy
from lightreasoner.models.spec import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LORA",
    "DEFAULT_OPTIMIZER",
    "DEFAULT_SCHEDULER",
    "DistillModule",
    "DistillSettings",
    "TunedTokenCounter",
    "lora_config",
    "build_optimizer",
    "schedule_lambda",
    "lr_schedule",
    "build_scheduler",
    "build_callbacks",
    "check_callbacks",
    "check_target",
    "check_optimizer",
    "check_scheduler",
    "check_trainer",
]

DEFAULT_LORA: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
"""Published LoRA setting (rank 8, alpha 16, dropout 0.05 on q_proj and v_proj)."""

DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.AdamW", "lr": 5e-5, "weight_decay": 0.0}
"""Published optimizer (the HF Trainer's AdamW at lr 5e-5, weight decay 0)."""

DEFAULT_SCHEDULER: dict[str, Any] = {"type": "linear", "warmup_steps": 0}
"""Published schedule: linear decay to 0 over ``max_steps``, no warm-up."""

LR_SCHEDULE = "lightreasoner.training.distill.lr_schedule"
"""The ``scheduler`` group's ``_target_`` (a ``_partial_``: :func:`lr_schedule`)."""

SCHEDULER_TYPES = ("linear", "cosine", "constant")


@dataclass
class DistillSettings:
    """The ``distill`` config group (``conf/distill/``): how the kept steps are batched for the
    fine-tune (:class:`~lightreasoner.training.datamodule.DistillDataModule`) and what is saved after it."""

    packing: bool = True
    """One sequence per trace with the loss at all its kept positions (False: one kept step per
    example, as the published code)."""
    steps_per_batch: int = 8
    """Kept steps per micro-batch (published: 8 per device x 2 accumulation = 16 per update)."""
    padding_side: str = "right"
    """``right`` or ``left``; the loss is the same either way."""
    num_workers: int = 0
    """DataLoader worker processes."""
    checkpoint_every: int | None = None
    """Optimizer updates between the resumable checkpoints (``checkpoints/last.ckpt``); None:
    a fifth of ``trainer.max_steps``. A long fine-tune on a machine that may be handed back at
    any moment loses at most this many updates. Changes no result, so it is left out of the
    run's training identity (:mod:`lightreasoner.run.resume`)."""
    merge: bool = True
    """Merge the adapter into a standalone full-precision model after training."""
    export_published: bool = False
    """Also write the selection in the published samples format (JSONL) to the run directory."""
    import_published: str | None = None
    """Train on a published samples JSONL instead of the trace cache (one step per example)."""
    published_loss_column: bool = False
    """Published quirk, off by default: read every row's loss at the *last column* of the
    right-padded micro-batch (the published ``logits[:, -1]``), i.e. at a padding position for
    every example but the longest. Needs ``packing: false`` and ``padding_side: right``."""
    published_softmax_width: bool = False
    """Published quirk, off by default: the tuned model's softmax spans only
    ``tokenizer.vocab_size`` ids (151,643 for Qwen2.5: the added special tokens such as
    ``<|im_end|>`` are cut off), and soft-label mass on ids beyond it is dropped without
    renormalising the rest."""
    loss: str = "forward_kl"
    """What the kept steps are trained towards their soft labels with (:data:`~lightreasoner.core.contrast.LOSSES`):
    ``forward_kl`` ``KL(vC || q)`` (the method), ``reverse_kl`` ``KL(q_S || vC)`` on the label's
    support (mode-seeking; a one-candidate label gives 0), ``jsd`` the generalized
    Jensen-Shannon divergence with mixing weight ``jsd_beta``."""
    jsd_beta: float = 0.5
    """``jsd``: ``M = jsd_beta * vC + (1 - jsd_beta) * q``, ``0 < jsd_beta < 1`` (TRL's GKD beta;
    0.5 is the symmetric JSD). Unused by the other losses."""
    module: Any = None
    """How the LightningModule is built: a ``_target_`` node that
    :func:`hydra.utils.instantiate` turns into a callable, called with the run-time arguments
    (``expert``, ``settings`` (this object, checked), ``max_steps``, ``sample_key``,
    ``softmax_width``); default :class:`DistillModule`. A method that brings its own
    LightningModule sets ``distill.module._target_``."""
    datamodule: Any = None
    """How the DataModule is built, as ``module``; run-time arguments ``samples``,
    ``pad_token_id``, ``seed``; default :class:`~lightreasoner.training.datamodule.DistillDataModule`."""

    @classmethod
    def from_cfg(cls, cfg: Mapping | Any | None) -> "DistillSettings":
        """From a ``distill`` mapping; one ``ValueError`` naming the first invalid key."""
        return settings_from_cfg(cls, cfg, "distill")

    def validate(self) -> None:
        for name in ("packing", "merge", "export_published", "published_loss_column", "published_softmax_width"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"distill.{name}: expected true or false, got {getattr(self, name)!r}")
        if isinstance(self.steps_per_batch, bool) or not isinstance(self.steps_per_batch, int) or self.steps_per_batch < 1:
            raise ValueError(f"distill.steps_per_batch: expected an integer >= 1, got {self.steps_per_batch!r}")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"distill.padding_side: expected 'right' or 'left', got {self.padding_side!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"distill.num_workers: expected an integer >= 0, got {self.num_workers!r}")
        ce = self.checkpoint_every
        if ce is not None and (isinstance(ce, bool) or not isinstance(ce, int) or ce < 1):
            raise ValueError(f"distill.checkpoint_every: expected an integer >= 1 or null, got {ce!r}")
        if self.published_loss_column and (self.packing or self.padding_side != "right"):
            raise ValueError(
                "distill.published_loss_column: needs distill.packing=false and distill.padding_side=right "
                f"(the published layout), got packing={self.packing}, padding_side={self.padding_side!r}"
            )
        if self.import_published is not None and not Path(str(self.import_published)).expanduser().is_file():
            raise ValueError(f"distill.import_published: expected a samples JSONL file, {self.import_published!r} does not exist")
        if self.loss not in LOSSES:
            raise ValueError(f"distill.loss: expected one of {list(LOSSES)}, got {self.loss!r}")
        jb = self.jsd_beta
        if isinstance(jb, bool) or not isinstance(jb, (int, float)) or not 0 < jb < 1:
            raise ValueError(f"distill.jsd_beta: expected 0 < jsd_beta < 1, got {jb!r}")
        for name in ("module", "datamodule"):
            check_target(getattr(self, name), f"distill.{name}", required=False)


class TunedTokenCounter(Callback):
    """Counts the kept steps (= tuned tokens) the fine-tune trained on; survives resume."""

    def __init__(self):
        self.tuned_tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tuned_tokens += int(batch["num_steps"])

    def state_dict(self):
        return {"tuned_tokens": self.tuned_tokens}

    def load_state_dict(self, state_dict):
        self.tuned_tokens = int(state_dict["tuned_tokens"])


def decoder_layer_classes(names: list[str]) -> set[type]:
    """The transformers decoder-layer classes named (e.g. ``Qwen2DecoderLayer``): FSDP's
    ``auto_wrap_policy`` in ``conf/trainer/fsdp.yaml``. One error naming any that is unknown."""
    import transformers

    out, unknown = set(), []
    for name in names:
        module = name.replace("DecoderLayer", "").lower()
        try:
            mod = __import__(f"transformers.models.{module}.modeling_{module}", fromlist=[name])
            out.add(getattr(mod, name))
        except (ImportError, AttributeError):
            unknown.append(name)
    if unknown:
        raise ValueError(f"trainer.strategy.auto_wrap_policy.names: unknown decoder layer class(es) {unknown} in transformers {transformers.__version__}")
    return out


def check_target(spec: Any, what: str, required: bool = True, base: type | None = None) -> None:
    """A ``_target_`` node (Hydra style), before any work: a mapping whose ``_target_`` imports
    (and is a subclass of ``base`` when given), whose build flags are true or false, and whose
    keys are arguments of the target of the kinds its signature names (:func:`check_arguments`).
    The shipped :class:`DistillModule` also has its ``lora``, ``optimizer`` and ``scheduler``
    checked as their groups are. ``None`` passes unless ``required``."""
    from hydra.utils import get_object

    spec = to_plain(spec)
    if spec is None and not required:
        return
    if not isinstance(spec, Mapping) or not isinstance(spec.get("_target_"), str):
        raise ValueError(f"{what}: expected a mapping with a `_target_` (a dotted class or function name), got {spec!r}")
    try:
        obj = get_object(spec["_target_"])
    except Exception as e:  # noqa: BLE001 - import error, missing attribute: one line naming the key
        raise ValueError(f"{what}._target_: cannot import {spec['_target_']!r} ({_first_line(e)})") from None
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise ValueError(f"{what}._target_: {spec['_target_']!r} is not a {base.__module__}.{base.__name__}")
    check_arguments(obj, spec, what)
    if isinstance(obj, type) and issubclass(obj, DistillModule):
        lora_config(spec.get("lora"))
        check_optimizer(spec.get("optimizer"))
        check_scheduler(spec.get("scheduler"))


def check_arguments(target: Any, spec: Mapping, what: str) -> None:
    """The keys of a ``_target_`` node against ``target``'s signature: the build flags
    (``_partial_``, ``_recursive_``) true or false, no unknown keyword (unless it takes
    ``**kwargs``), and each value of the kind its annotation names where the kind is one a config
    can hold (bool, int, float, str, None, a literal, a mapping, a list, a callable; anything else
    is left to the target)."""
    import inspect
    import typing

    for flag in ("_partial_", "_recursive_"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise ValueError(f"{what}.{flag}: expected true or false, got {spec[flag]!r}")
    fn = target.__init__ if isinstance(target, type) else target
    try:
        params = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in spec.items():
        if key.startswith("_"):
            continue
        if key not in params and not open_kwargs:
            raise ValueError(f"{what}: unknown field {key!r}; {spec['_target_']} takes {sorted(k for k in params if k != 'self')}")
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(f"{what}.{key}: expected {_kind_words(hints[key])}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether a config value fits an annotation (True where the kind is not one a config holds)."""
    import collections.abc
    import types
    import typing

    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if base in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if base is collections.abc.Callable:
        return callable(value)
    return isinstance(value, hint) if isinstance(hint, type) and hint.__module__ == "builtins" else True


def _kind_words(hint: Any) -> str:
    import collections.abc
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind_words(a) for a in typing.get_args(hint))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping", collections.abc.Mapping: "a mapping", list: "a list", tuple: "a list",
             collections.abc.Sequence: "a list", collections.abc.Callable: "a callable"}
    return words.get(origin or hint, getattr(hint, "__name__", None) or str(hint))


def check_callbacks(callbacks: Mapping | Any | None) -> None:
    """The ``callbacks`` group (``conf/callbacks/``), before any work: every entry ``null`` (off)
    or a ``_target_`` naming a Lightning ``Callback``."""
    specs = to_plain(callbacks)
    if specs is None:
        return
    if not isinstance(specs, Mapping):
        raise ValueError(f"callbacks: expected a mapping of names to `_target_` entries, got {specs!r}")
    for name, spec in specs.items():
        check_target(spec, f"callbacks.{name}", required=False, base=Callback)


def build_callbacks(
    callbacks: Mapping | Any | None, *, ckpt_dir: Path, max_steps: int, logger: bool, checkpointing: bool
) -> list[Callback]:
    """The ``callbacks`` group instantiated in order (an entry set to ``null`` is off), with the
    run-time arguments the run gives them: a ``ModelCheckpoint`` writes the resumable
    checkpoints to ``ckpt_dir`` every ``every_n_train_steps`` updates (``conf/callbacks``:
    ``distill.checkpoint_every``; null: a fifth of ``max_steps``) and is left out when the Trainer's checkpointing is off; a
    ``LearningRateMonitor`` is left out without a logger. A :class:`TunedTokenCounter` is added
    when the group has none (the summary's tuned-token count reads it)."""
    from hydra.utils import get_class, instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    out: list[Callback] = []
    for spec in (callbacks or {}).values():
        if spec is None:
            continue
        cls = get_class(spec["_target_"])
        kwargs: dict[str, Any] = {}
        if issubclass(cls, ModelCheckpoint):
            if not checkpointing:
                continue
            every = spec.get("every_n_train_steps")
            kwargs = {"dirpath": ckpt_dir, "every_n_train_steps": every or max(1, int(max_steps) // 5)}
        elif issubclass(cls, LearningRateMonitor) and not logger:
            continue
        out.append(instantiate(spec, **kwargs))
    if not any(isinstance(cb, TunedTokenCounter) for cb in out):
        out.insert(0, TunedTokenCounter())
    return out


def lora_config(lora: Mapping | None):
    """peft ``LoraConfig`` from ``{r, alpha, dropout, target_modules, ...}`` (published defaults).

    Extra keys are passed to ``LoraConfig`` as they are (e.g. ``init_lora_weights``, ``bias``).
    """
    from peft import LoraConfig, TaskType

    cfg = dict(DEFAULT_LORA)
    cfg.update(dict(to_plain(lora) or {}))
    unknown_ok = set(LoraConfig.__dataclass_fields__)
    r, alpha, dropout, targets = cfg.pop("r"), cfg.pop("alpha"), cfg.pop("dropout"), cfg.pop("target_modules")
    bad = set(cfg) - unknown_ok
    if bad:
        raise ValueError(f"peft: unknown field(s) {sorted(bad)}; expected r, alpha, dropout, target_modules or a peft.LoraConfig field")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"peft.r: expected an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"peft.alpha: expected a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"peft.dropout: expected 0 <= dropout < 1, got {dropout!r}")
    dropout = float(dropout)
    # a list of module names, or one string (peft: a regex over module names, or "all-linear")
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
        targets = list(targets)
    elif not (isinstance(targets, str) and targets):
        raise ValueError(f"peft.target_modules: expected a list of module names (or one regex string), got {targets!r}")
    if cfg.get("bias", "none") not in ("none", "all", "lora_only"):
        raise ValueError(f"peft.bias: expected one of ['none', 'all', 'lora_only'], got {cfg['bias']!r}")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=TaskType.CAUSAL_LM,
        **cfg,
    )


def build_optimizer(spec: Any, params) -> torch.optim.Optimizer:
    """Optimizer from a callable (``params -> Optimizer``, e.g. a Hydra partial) or a
    ``_target_`` mapping (Hydra style; ``_partial_`` allowed); ``None`` → published AdamW."""
    if spec is None:
        spec = DEFAULT_OPTIMIZER
    spec = to_plain(spec)
    if isinstance(spec, Mapping):
        if "_target_" not in spec:
            raise ValueError(f"optimizer: expected a `_target_` entry (e.g. torch.optim.AdamW), got keys {sorted(spec)}")
        from hydra.utils import instantiate

        d = {k: v for k, v in spec.items() if k != "_partial_"}
        d["_partial_"] = True
        spec = instantiate(d)
    if not callable(spec):
        raise TypeError(f"optimizer: expected a callable or a `_target_` mapping, got {type(spec).__name__}")
    return spec(params)


def schedule_lambda(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier per optimizer step, as the HF Trainer's schedules.

    ``linear``: warm-up from 0, then linear decay to 0 at ``total_steps``; ``cosine``: warm-up,
    then half a cosine to 0; ``constant``: warm-up, then 1.
    """
    if kind not in SCHEDULER_TYPES:
        raise ValueError(f"scheduler.type: expected one of {SCHEDULER_TYPES}, got {kind!r}")
    warmup_steps = int(warmup_steps)
    total_steps = max(1, int(total_steps))
    if warmup_steps < 0:
        raise ValueError(f"scheduler.warmup_steps: expected >= 0, got {warmup_steps}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return f


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, type: str = "linear", warmup_steps: int = 0):  # noqa: A002 - the group's key
    """The ``scheduler`` group's target (``_partial_: true``; ``conf/scheduler/``): a
    ``LambdaLR`` stepping :func:`schedule_lambda` ``(type, warmup_steps, total_steps)`` once per
    optimizer update. :class:`DistillModule` calls the partial with the optimizer and the
    updates the schedule spans."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambda(type, warmup_steps, total_steps))


def check_scheduler(scheduler: Mapping | Any | None) -> None:
    """The ``scheduler`` group, before any work: one ``ValueError`` naming the first bad key.

    :func:`lr_schedule` (the default ``_target_``, or a mapping without one: ``{type,
    warmup_steps}``) has its keys checked; another ``_target_`` must import."""
    spec = to_plain(scheduler)
    if spec is None or callable(spec):
        return
    if not isinstance(spec, Mapping):
        raise ValueError(f"scheduler: expected a `_target_` mapping or {{type, warmup_steps}}, got {spec!r}")
    if spec.get("_target_", LR_SCHEDULE) != LR_SCHEDULE:
        check_target(spec, "scheduler")
        return
    if "_partial_" in spec and spec["_partial_"] is not True:
        raise ValueError(f"scheduler._partial_: expected true (the module calls it with the optimizer), got {spec['_partial_']!r}")
    sched = {**DEFAULT_SCHEDULER, **{k: v for k, v in spec.items() if k not in ("_target_", "_partial_")}}
    unknown = sorted(set(sched) - set(DEFAULT_SCHEDULER))
    if unknown:
        raise ValueError(f"scheduler: unknown field(s) {unknown}; expected some of {sorted(DEFAULT_SCHEDULER)}")
    w = sched["warmup_steps"]
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise ValueError(f"scheduler.warmup_steps: expected an integer >= 0, got {w!r}")
    schedule_lambda(sched["type"], w, 1)


def build_scheduler(spec: Any) -> Callable[..., Any]:
    """``(optimizer, total_steps) -> LR scheduler`` from the ``scheduler`` group (checked by
    :func:`check_scheduler`): a callable as it is (e.g. a Hydra partial); a ``_target_``
    mapping instantiated as a partial; ``{type, warmup_steps}`` or ``None`` → :func:`lr_schedule`."""
    check_scheduler(spec)
    spec = to_plain(spec)
    if callable(spec):
        return spec
    from hydra.utils import instantiate

    d = {"_target_": LR_SCHEDULE, **dict(spec or {})}
    d["_partial_"] = True
    return instantiate(d)


def check_optimizer(optimizer: Mapping | Any | None) -> None:
    """Build the ``optimizer`` group on one dummy parameter, before any work: a bad learning
    rate or an unknown key is one ``ValueError`` naming the group, not an error at fit time."""
    spec = to_plain(optimizer)
    if isinstance(spec, Mapping) and "lr" in spec:
        lr = spec["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"optimizer.lr: expected a number > 0, got {lr!r}")
    try:
        build_optimizer(spec, [torch.nn.Parameter(torch.zeros(1))])
    except ValueError as e:
        if str(e).startswith("optimizer"):
            raise
        raise ValueError(f"optimizer: {_target_name(spec)} rejects the group's settings: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - unknown keyword, wrong type, import error: one line naming the group
        raise ValueError(f"optimizer: cannot build {_target_name(spec)} from the group ({type(e).__name__}: {_first_line(e)})") from None


def check_trainer(trainer: Mapping | Any | None) -> None:
    """The ``trainer`` group (``lightning.Trainer`` keyword arguments), before any work: unknown
    keys, the integer budgets the pipeline reads, precision, accelerator and strategy names."""
    import inspect
    import typing

    import lightning
    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    t = dict(to_plain(trainer) or {})
    target = t.pop("_target_", "lightning.Trainer")
    for key in ("max_steps", "accumulate_grad_batches"):
        v = t.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"trainer.{key}: expected an integer >= 1, got {v!r}")
    if target not in ("lightning.Trainer", "lightning.pytorch.Trainer", "pytorch_lightning.Trainer"):
        return  # another trainer class: its own arguments
    known = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(t) - known)
    if unknown:
        raise ValueError(f"trainer: unknown field(s) {unknown}; expected lightning.Trainer arguments ({', '.join(sorted(known)[:8])}, ...)")
    precisions = [p for lit in typing.get_args(_PRECISION_INPUT) for p in typing.get_args(lit)]
    if "precision" in t and t["precision"] is not None and t["precision"] not in precisions:
        raise ValueError(f"trainer.precision: expected one of {[str(p) for p in precisions if isinstance(p, str)]}, got {t['precision']!r}")
    accelerators = sorted(AcceleratorRegistry.available_accelerators() | {"auto", "gpu"})
    if isinstance(t.get("accelerator"), str) and t["accelerator"] not in accelerators:
        raise ValueError(f"trainer.accelerator: expected one of {accelerators}, got {t['accelerator']!r}")
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if isinstance(t.get("strategy"), str) and t["strategy"] not in strategies:
        raise ValueError(f"trainer.strategy: expected one of {strategies[:8]} ..., got {t['strategy']!r}")
    devices = t.get("devices", "auto")
    if not (devices in ("auto", -1, "-1", None) or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
            or (isinstance(devices, list) and all(isinstance(d, int) for d in devices)) or (isinstance(devices, str) and devices.replace(",", "").isdigit())):
        raise ValueError(f"trainer.devices: expected an integer >= 1, a list of device ids or 'auto', got {devices!r}")


def _target_name(spec: Any) -> str:
    return str(spec.get("_target_", "the optimizer")) if isinstance(spec, Mapping) else getattr(spec, "__name__", "the optimizer")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


class DistillModule(LightningModule):
    """The expert with LoRA adapters, trained on kept-step soft labels.

    Args:
        expert: the expert's :class:`ModelSpec` (or its dict / a path). GGUF experts are
            loaded dequantized and rebuilt plain (``plain=True``).
        lora: LoRA fields ``{r, alpha, dropout, target_modules}`` (published defaults) plus
            any other ``peft.LoraConfig`` field.
        optimizer: a callable ``params -> Optimizer`` (e.g. a Hydra partial) or a ``_target_``
            mapping; default AdamW, lr 5e-5, weight decay 0.
        scheduler: a callable ``(optimizer, total_steps) -> LR scheduler`` (the ``scheduler``
            group's partial, :func:`lr_schedule`), a ``_target_`` mapping, or ``{type:
            linear|cosine|constant, warmup_steps: int}``; default linear decay to 0 over
            ``max_steps`` without warm-up. Stepped once per optimizer update.
        max_steps: optimizer updates the schedule spans; default the Trainer's ``max_steps``
            (or its estimated stepping batches when that is unset).
        sample_key: the selection the samples came from (recorded with saved adapters).
        repeat_warn_epochs: warn when the budget repeats the samples more than this many times.
        softmax_width: the published quirk ``distill.published_softmax_width``: the softmax over
            the first ``softmax_width`` ids only (the tokenizer's ``vocab_size``) and soft-label
            weight on ids beyond it dropped, not renormalised. None (default): the full width.
        model: an already built causal LM to use instead of loading ``expert`` (its weights
            must be those ``expert`` names, since saved adapters record ``expert`` as base).
        settings: the checked ``distill`` group (:class:`DistillSettings`; built from config,
            ``run.stages.distill_stage`` passes it): the objective is read from it, unchecked here.
        loss: without ``settings``, the objective (``distill.loss``: ``forward_kl``, the method;
            ``reverse_kl``; ``jsd``), checked by :class:`DistillSettings`.
        jsd_beta: without ``settings``, the ``jsd`` mixing weight (``distill.jsd_beta``).
    """

    def __init__(
        self,
        expert: ModelSpec | Mapping | str,
        lora: Mapping | None = None,
        optimizer: Callable[..., Any] | Mapping | None = None,
        scheduler: Callable[..., Any] | Mapping | None = None,
        max_steps: int | None = None,
        sample_key: str | None = None,
        repeat_warn_epochs: float = 3.0,
        model: torch.nn.Module | None = None,
        softmax_width: int | None = None,
        loss: str = "forward_kl",
        jsd_beta: float = 0.5,
        settings: DistillSettings | None = None,
    ):
        super().__init__()
        from peft import get_peft_model

        if settings is None:  # built by hand: the settings class checks the objective (its one check)
            settings = DistillSettings(loss=loss, jsd_beta=jsd_beta)
            settings.validate()
        self.expert_spec = ModelSpec.from_any(to_plain(expert))
        self.lora = {**DEFAULT_LORA, **dict(to_plain(lora) or {})}
        self.scheduler_factory = build_scheduler(scheduler)  # checked now, not at fit time
        sched = to_plain(scheduler)
        self.optimizer_spec = optimizer
        self.max_steps = max_steps
        self.sample_key = sample_key
        self.repeat_warn_epochs = float(repeat_warn_epochs)
        if softmax_width is not None and (isinstance(softmax_width, bool) or int(softmax_width) < 1):
            raise ValueError(f"softmax_width: expected an integer >= 1 or None, got {softmax_width!r}")
        self.softmax_width = None if softmax_width is None else int(softmax_width)
        self.loss_kind, self.jsd_beta = str(settings.loss), float(settings.jsd_beta)
        self.save_hyperparameters(
            {
                "expert": self.expert_spec.to_dict(),
                "lora": self.lora,
                "optimizer": to_plain(optimizer) if (optimizer is None or isinstance(to_plain(optimizer), Mapping)) else repr(optimizer),
                "scheduler": sched if (sched is None or isinstance(sched, Mapping)) else repr(sched),
                "max_steps": max_steps,
                "sample_key": sample_key,
                "softmax_width": self.softmax_width,
                "loss": self.loss_kind,
                "jsd_beta": self.jsd_beta,
            }
        )
        if model is None:
            model = models.load_model(self.expert_spec, "expert", plain=bool(self.expert_spec.gguf_file))
        model.config.use_cache = False
        self.model = get_peft_model(model, lora_config(self.lora))
        self.model.train()
        # Only the LoRA weights are saved in (and restored from) Lightning checkpoints.
        self.strict_loading = False

    # ------------------------------------------------------------------ forward / loss
    def step_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """``[K, V]`` logits at the batch's kept positions (output embedding applied only there).

        Under FSDP the model's own forward must run (a sharded root holds the embeddings and
        head, gathered only inside it), so there the full ``[B, L, V]`` logits are computed and
        indexed: the same values, more memory."""
        if self._trainer is not None and type(self.trainer.strategy).__name__.startswith("FSDP"):
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"], use_cache=False)
            return out.logits[batch["loss_rows"], batch["loss_cols"]]
        base = self.model.get_base_model()
        decoder = base.get_decoder()
        out = decoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        )
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        h = hidden[batch["loss_rows"], batch["loss_cols"]]
        logits = base.get_output_embeddings()(h)
        cfg = base.config
        scale = getattr(cfg, "logit_scale", None)
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def compute_loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Loss of one micro-batch and its statistics (no logging).

        ``loss`` = sum of per-step losses (``distill.loss``; the method: KLs) × ``loss_scale``
        (``accumulate * world_size / update_steps``; ``accumulate / update_steps`` when a batch
        has no ``loss_scale``): after
        Lightning divides by ``accumulate_grad_batches`` and DDP averages over the processes,
        each update's gradient is that of the mean over its kept steps. Also returns ``per_step`` ``[K]``, ``mean_loss``, ``kl`` (the samples' mean KL at
        the kept steps) and ``entropy`` (mean soft-label entropy).
        """
        logits = self.step_logits(batch)
        target_ids, target_w = batch["target_ids"], batch["target_w"]
        if self.softmax_width is not None:  # the published quirk (see __init__): ids past the width get weight 0
            logits = logits[..., : self.softmax_width]
            target_w = target_w.masked_fill(target_ids >= self.softmax_width, 0.0)
            target_ids = target_ids.clamp_max(logits.shape[-1] - 1)
        per_step = objective_loss(self.loss_kind, logits, target_ids, target_w, self.jsd_beta)
        scale = batch.get("loss_scale")
        if scale is None:
            scale = int(batch["accumulate"]) / int(batch["update_steps"])
        loss = per_step.sum() * float(scale)
        kl = batch["kl"]
        kl_mean = kl[~torch.isnan(kl)].mean() if bool((~torch.isnan(kl)).any()) else kl.new_tensor(float("nan"))
        return {
            "loss": loss,
            "per_step": per_step.detach(),
            "mean_loss": per_step.detach().mean(),
            "kl": kl_mean,
            "entropy": soft_label_entropy(batch["target_w"]).mean(),
        }

    def training_step(self, batch, batch_idx):
        if self.trainer.accumulate_grad_batches != int(batch["accumulate"]):
            raise ValueError(
                f"accumulate_grad_batches: the Trainer uses {self.trainer.accumulate_grad_batches} but the batches "
                f"were built for {batch['accumulate']}; set both to the same value"
            )
        if self.trainer.world_size != int(batch.get("world_size", 1)):
            raise ValueError(
                f"world size: the Trainer runs {self.trainer.world_size} process(es) but the batches were built "
                f"for {batch.get('world_size', 1)}; train from a DistillDataModule set up by this Trainer"
            )
        out = self.compute_loss(batch)
        bs = int(batch["num_steps"])
        self.log("train/loss", out["mean_loss"], on_step=True, prog_bar=True, batch_size=bs)
        self.log("train/kl", out["kl"], on_step=True, batch_size=bs)
        self.log("train/soft_label_entropy", out["entropy"], on_step=True, batch_size=bs)
        self.log("train/update_steps", float(batch["update_steps"]), on_step=True, batch_size=bs)
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("train/lr", float(opt.param_groups[0]["lr"]), on_step=True, prog_bar=True, batch_size=bs)
        return out["loss"]

    # ------------------------------------------------------------------ optimisation
    def _total_steps(self) -> int:
        if self.max_steps:
            return int(self.max_steps)
        trainer = self._trainer
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        if trainer is not None:
            return int(trainer.estimated_stepping_batches)
        raise ValueError("max_steps: set DistillModule(max_steps=...) or the Trainer's max_steps")

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = build_optimizer(self.optimizer_spec, params)
        sched = self.scheduler_factory(opt, total_steps=self._total_steps())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_fit_start(self) -> None:
        dm = getattr(self._trainer, "datamodule", None)
        upe = getattr(dm, "num_updates_per_epoch", None)
        if not upe:
            return
        total = self._total_steps()
        epochs = total / upe
        if epochs > self.repeat_warn_epochs:
            log.warning(
                "distill budget: %d updates x ~%d kept steps = %.1f passes over the %d selected kept steps "
                "(%d updates per pass); the samples repeat many times over: sample more problems or lower max_steps",
                total, dm.steps_per_update, epochs, dm.num_kept_steps, upe,
            )

    # ------------------------------------------------------------------ checkpoints
    def _trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # the RNG that LoRA dropout draws from: a resumed fine-tune continues the same stream
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = self._trainable_names() - set(checkpoint.get("state_dict", {}))
        if missing:
            raise ValueError(
                f"checkpoint: {len(missing)} LoRA weight(s) missing (e.g. {sorted(missing)[0]}); "
                "was it written by a DistillModule with the same LoRA setting?"
            )
        self._resume_rng = checkpoint.get("rng")

    def on_train_start(self) -> None:
        """Resuming: put back the RNG state of the checkpoint (after the restore and set-up,
        just before the first update), so dropout draws what the uninterrupted run drew."""
        rng = getattr(self, "_resume_rng", None)
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._resume_rng = None
