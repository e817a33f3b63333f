"""What a run trains on: the ``method`` config group (``conf/method/``) mirrors this package.

A method is a small object built from the group's ``_target_`` (:func:`build_method`) that the
pipeline asks, instead of branching on a name in every stage:

- :meth:`Method.training_samples` fills the run's training data (``TraceSample``s, whatever
  their targets) with its selection statistics and sampling cost;
- :attr:`Method.trains` says whether there is a fine-tune at all;
- :meth:`Method.eval_model` names the model an inference-time method evaluates as.

Every training method goes through the same distillation module (:class:`DistillModule`:
LoRA, optimizer, update budget): LightReasoner and its ablations train towards soft labels at
kept steps, rejection-sampling SFT towards one-hot labels at every solution token, which is
cross-entropy on whole solutions.
"""

from __future__ import annotations

from typing import Any

from .base import Method

__all__ = ["Method", "build_method"]


def build_method(cfg: Any) -> Method:
    """The method a run's ``method`` config node names (default: LightReasoner)."""
    from hydra.utils import instantiate

    node = cfg.get("method") if hasattr(cfg, "get") else None
    if node is None:
        from .lightreasoner import LightReasoner

        return LightReasoner()
    method = instantiate(node, _convert_="all")
    if not isinstance(method, Method):
        raise ValueError(f"method._target_: expected a lightreasoner.methods.Method, got {type(method).__name__}")
    return method
