"""Contrastive decoding as a method: no sampling, no fine-tune; the pair is evaluated as one
model that decodes by ``argmax_{V_t} log pE - log pA`` (:mod:`lightreasoner.generation.contrastive`).

With ``method=contrastive_decoding`` the run evaluates it in place of ``tuned``; any run can
also list it in ``eval.models`` (``eval.models=[base,contrastive_decoding]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lightreasoner.models.spec import pair_specs
from lightreasoner.training.reference import ContrastivePair

from .base import Method

EVAL_NAME = "contrastive_decoding"


def contrastive_ref(cfg: Any, alpha: float | None = None) -> dict:
    """The ``eval.models`` entry of the run's pair decoding contrastively at ``alpha``
    (default ``selection.alpha``)."""
    expert, amateur = pair_specs(cfg)
    a = float(cfg.selection.alpha if alpha is None else alpha)
    return {"name": EVAL_NAME, "ref": ContrastivePair(expert, amateur, a)}


@dataclass
class ContrastiveDecoding(Method):
    """The ``contrastive_decoding`` method."""

    trains: ClassVar[bool] = False

    name: str = EVAL_NAME
    alpha: float | None = None
    """Plausibility threshold (null: ``selection.alpha``)."""

    def __post_init__(self) -> None:
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and 0 < self.alpha <= 1):
            raise ValueError(f"method.alpha: expected 0 < alpha <= 1 or null, got {self.alpha!r}")

    def eval_models(self, cfg: Any) -> dict[str, dict]:
        """Evaluated in place of ``tuned``, and under its own name."""
        ref = contrastive_ref(cfg, self.alpha)
        return {"tuned": ref, EVAL_NAME: ref}
