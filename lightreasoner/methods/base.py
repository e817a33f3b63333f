"""The contract every method implements (see the package docstring).

A method gets explicit inputs (:class:`MethodInputs`: the problems, the pair, the group settings
it reads, the engine config, the cache directory, the seed) and returns a typed result
(:class:`TrainingData`: the training samples, their cache key, statistics and cost). It owns its
checks (:meth:`Method.check`, run by validation before any work) and its evaluation entries
(:meth:`Method.eval_models`). ``trains`` is a property of the class. A method that changes the
objective names it in :attr:`Method.objective` (a ``distill.loss`` name), as TRL's trainers
override only their loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class MethodInputs:
    """What a method may read to make its training data. Built by the pipeline from the run's
    config (:func:`method_inputs`); a method never reads the whole config."""

    problems: list
    """The training problems (``records.Problem``), in order."""
    dataset_identity: dict
    """What names the training set in cache keys (``benchmarks.dataset_identity``)."""
    expert: Any
    """The expert's ``ModelSpec``."""
    amateur: Any
    """The amateur's ``ModelSpec``."""
    pair: Any
    """The pair keys (``pairs.PairSettings``: alignment, amateur kind)."""
    sampling: dict
    """The ``sampling`` group (trace-determining keys), plain."""
    selection: Any
    """The ``selection`` group (``selection.SelectionSettings``, not yet resolved against a cache)."""
    generation: Any
    """The ``generation`` node (the engine that writes traces), or None for the default."""
    cache_dir: Path
    """The shared cache (``paths.cache_dir``)."""
    seed: int
    """The run's seed."""
    max_new_tokens: int | None = None
    """The training dataset's generation budget (``dataset.max_new_tokens``), for methods that
    sample whole solutions."""
    trainer_placement: dict = field(default_factory=dict)
    """Where sampling runs (``accelerator``, ``devices``, ``strategy`` of the trainer)."""
    out_dir: Path | None = None
    """The run's directory (for exports such as ``samples.jsonl``)."""
    export_published: bool = False
    """Also write the selection in the published samples format (``distill.export_published``)."""
    logger: Any = None
    """The run's Lightning logger (media), or None."""


@dataclass
class TrainingData:
    """What a method's :meth:`Method.prepare` returns: the fine-tune's input and its record."""

    samples: list
    """``records.TraceSample``s: positions and soft (or one-hot) targets."""
    sample_key: str
    """The cache key the samples were read from (recorded with the adapter)."""
    statistics: dict
    """The run's ``selection`` section of ``summary.json`` (kept steps, rule counts, ...)."""
    cost: dict
    """What making the samples cost (``problems``, ``generated_tokens``, ``wall_s``, ``cached`` ...)."""
    training_problems: int
    """Problems the samples came from."""


@dataclass
class Method:
    """Base class of the methods; subclasses are dataclasses whose fields are the group's keys."""

    trains: ClassVar[bool] = True
    """False for inference-time methods (no sampling, no fine-tune): a property of the class."""
    objective: ClassVar[str | None] = None
    """The ``distill.loss`` this method trains with when not the configured one (None: ``distill.loss``)."""

    name: str = "method"
    """The method's name in summaries, reports and W&B."""

    def settings(self) -> dict:
        """The method's keys as they ran (for the summary)."""
        return asdict(self)

    def check(self, cfg: Any) -> None:
        """Checks of this method against the rest of the run's config (validation, before any
        work); one ``ValueError`` naming the key. Default: none."""

    def prepare(self, inputs: MethodInputs) -> TrainingData:
        """The training data for the fine-tune (training methods)."""
        raise NotImplementedError(f"{type(self).__name__}.prepare")

    def eval_models(self, cfg: Any) -> dict[str, dict]:
        """Evaluation entries this method defines: ``eval.models`` name -> ``{"name", "ref"}``.
        An inference-time method maps ``tuned`` to what it evaluates as; any method may add
        named entries (``contrastive_decoding``). Default: none."""
        return {}
