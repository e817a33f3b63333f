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
