"""The interface every method implements (see the package docstring)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Method:
    """Base class of the methods; subclasses are dataclasses whose fields are the group's keys."""

    name: str = "method"
    """The method's name in summaries, reports and W&B."""

    trains: bool = True
    """False for inference-time methods (no sampling, no fine-tune)."""

    def settings(self) -> dict:
        """The method's keys as they ran (for the summary)."""
        return asdict(self)

    def training_samples(self, cfg: Any, state: Any) -> None:
        """Fill ``state.samples``, ``state.sample_key``, ``state.selection`` and
        ``state.sampling_cost`` for the fine-tune."""
        raise NotImplementedError(f"{type(self).__name__}.training_samples")

    def eval_model(self, cfg: Any) -> dict | None:
        """``{"name", "ref"}`` of the model an inference-time method is evaluated as (it takes
        the place of ``tuned`` in ``eval.models``); None for training methods."""
        return None
