"""Generation engines behind one interface (``conf/generation/`` mirrors this package).

``build_engine(cfg, model, tokenizer)`` turns a ``generation`` config node (``_target_`` = an
:class:`~.base.Engine` subclass, built with ``hydra.utils.instantiate``) into an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Engine, GeneratedBatch, Generation, GenerationSettings
from .hf import HFEngine

__all__ = ["Engine", "GeneratedBatch", "Generation", "GenerationSettings", "HFEngine", "build_engine"]


def build_engine(cfg: Mapping | Any | None, model, tokenizer, **kwargs) -> Engine:
    """The engine a ``generation`` config node names, for ``model``/``tokenizer``
    (``None``: the transformers engine)."""
    if cfg is None:
        return HFEngine(model, tokenizer, **kwargs)
    from hydra.utils import instantiate

    return instantiate(cfg, model=model, tokenizer=tokenizer, **kwargs)
