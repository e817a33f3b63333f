"""What a run trains on: the ``method`` config group (``conf/method/``) mirrors this package.

A method is a small dataclass built from the group's ``_target_`` (:func:`build_method`) with a
typed contract (:mod:`lightreasoner.methods.base`), so the pipeline never branches on a name:

- :meth:`Method.prepare` turns explicit inputs (:class:`MethodInputs`, built from the run's
  config by :func:`method_inputs`) into the fine-tune's :class:`TrainingData`;
- :meth:`Method.check` holds the method's own checks against the rest of the config;
- :meth:`Method.eval_models` defines its evaluation entries (an inference-time method takes the
  place of ``tuned``); :data:`EVAL_ENTRIES` names the entries any run may list;
- :attr:`Method.trains` (a class property) says whether there is a fine-tune at all, and
  :attr:`Method.objective` which ``distill.loss`` it trains with when it brings its own.

Every training method goes through the same distillation module (:class:`DistillModule`:
LoRA, optimizer, update budget): LightReasoner and its ablations train towards soft labels at
kept steps, rejection-sampling SFT towards one-hot labels at every solution token, which is
cross-entropy on whole solutions. Adding one: ``docs/how-to/extend.md``.
"""

from __future__ import annotations

from typing import Any

from .base import Method, MethodInputs, TrainingData

__all__ = ["EVAL_ENTRIES", "Method", "MethodInputs", "TrainingData", "build_method", "method_inputs"]


def build_method(cfg: Any) -> Method:
    """The method a run's ``method`` config node names (default: LightReasoner)."""
    node = cfg.get("method") if hasattr(cfg, "get") else None
    if node is None:
        from .lightreasoner import LightReasoner

        return LightReasoner()
    method = _instantiate(node)
    if not isinstance(method, Method):
        raise ValueError(f"method._target_: expected a lightreasoner.methods.Method, got {type(method).__name__}")
    return method


def _instantiate(node: Any) -> Any:
    """``instantiate`` with its errors as one line: the method's own ``ValueError`` as it is, an
    unknown key named with the keys the method knows (not Hydra's wrapped multi-line report)."""
    import dataclasses

    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ValueError):
            raise cause from None
        target = str(node.get("_target_"))
        try:
            cls = get_class(target)
        except Exception:  # noqa: BLE001 - the target itself is wrong
            raise ValueError(f"method._target_: cannot import {target!r}") from None
        if dataclasses.is_dataclass(cls):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(str(k) for k in node if not str(k).startswith("_") and k not in known)
            if unknown:
                raise ValueError(f"method: unknown field(s) {unknown}; expected some of {sorted(known)}") from None
        raise ValueError(f"method: cannot build {target} ({type(cause).__name__}: {str(cause).splitlines()[0] if cause else err})") from None


def _contrastive_decoding_entry(cfg: Any) -> dict:
    from .contrastive_decoding import contrastive_ref

    return contrastive_ref(cfg)


EVAL_ENTRIES = {"contrastive_decoding": _contrastive_decoding_entry}
"""Named ``eval.models`` entries any run may list beside ``base``, ``tuned`` and ``amateur``:
name -> ``cfg -> {"name", "ref"}`` (a method's own :meth:`Method.eval_models` comes first)."""


def method_inputs(cfg: Any, out_dir: Any = None, logger: Any = None) -> MethodInputs:
    """The explicit inputs of :meth:`Method.prepare` from a run's composed config."""
    from pathlib import Path

    from lightreasoner.data.benchmarks import dataset_identity, load_problems
    from lightreasoner.core.config import to_plain
    from lightreasoner.models.spec import pair_specs
    from lightreasoner.models.pairs import PairSettings
    from lightreasoner.selection.select import SelectionSettings

    ds = cfg.dataset
    expert, amateur = pair_specs(cfg)
    t = cfg.trainer
    return MethodInputs(
        problems=load_problems(ds, split=ds.split, max_problems=ds.max_problems, shuffle=ds.shuffle, seed=cfg.seed),
        dataset_identity=dataset_identity(ds, ds.split),
        expert=expert,
        amateur=amateur,
        pair=PairSettings.from_cfg(cfg.model_pair),
        sampling=to_plain(cfg.sampling),
        selection=SelectionSettings(**(to_plain(cfg.get("selection")) or {})),  # resolved against the cache by the method
        generation=cfg.get("generation"),
        cache_dir=Path(cfg.paths.cache_dir),
        seed=int(cfg.seed),
        max_new_tokens=ds.get("max_new_tokens"),
        trainer_placement={"accelerator": t.accelerator, "devices": t.devices, "strategy": t.strategy},
        out_dir=out_dir,
        export_published=bool(cfg.distill.get("export_published", False)),
        logger=logger,
    )
