"""The record types that flow between stages (described in docs/reference/records.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SCORED_TRACE_KEYS = (
    "problem_id",
    "question_sha",
    "prompt_ids",
    "trace_ids",
    "finished",
    "kl",
    "max_logp_e",
    "cand_offsets",
    "cand_ids",
    "cand_logp_e",
    "cand_logp_a",
)
"""Keys of a scored trace (a plain dict, one per problem, tensors on CPU)."""


@dataclass
class Problem:
    """One benchmark/training problem as every stage sees it."""

    id: str
    """``"{dataset}/{split}/{index in file order}"``."""
    question: str
    """The user turn given to the model (for multiple choice: with the options A-D inlined)."""
    answer: str
    """Gold answer as text (numbers as written, LaTeX for LaTeX answers, a letter A-D for choice)."""
    answer_type: str
    """numeric | latex | choice | asdiv (how ``answers.is_equivalent`` compares)."""
    meta: dict = field(default_factory=dict)
    """Raw fields of the source row that evaluation reports may want (subject, level, ...)."""


@dataclass
class TraceSample:
    """One trace's kept steps, ready for training (one forward pass covers all of them).

    ``positions[j]`` indexes ``input_ids``: the logits there predict kept step ``steps[j]``,
    whose soft label is ``target_ids[j]`` with weights ``target_w[j]`` (summing to 1).
    """

    problem_id: str
    input_ids: torch.Tensor  # int64 [L]
    positions: torch.Tensor  # int64 [k]
    steps: torch.Tensor  # int64 [k]
    target_ids: list[torch.Tensor] = field(default_factory=list)  # k x int64 [c_j]
    target_w: list[torch.Tensor] = field(default_factory=list)  # k x float32 [c_j]
    kl: torch.Tensor | None = None  # float32 [k]

    @property
    def num_steps(self) -> int:
        return int(self.positions.numel())

    def split_steps(self) -> list["TraceSample"]:
        """One sample per kept step, each truncated after its position (the published layout)."""
        out = []
        for j in range(self.num_steps):
            p = int(self.positions[j])
            out.append(
                TraceSample(
                    problem_id=self.problem_id,
                    input_ids=self.input_ids[: p + 1].clone(),
                    positions=self.positions[j : j + 1].clone(),
                    steps=self.steps[j : j + 1].clone(),
                    target_ids=[self.target_ids[j]],
                    target_w=[self.target_w[j]],
                    kl=None if self.kl is None else self.kl[j : j + 1].clone(),
                )
            )
        return out


@dataclass
class RunState:
    """What the stages of one run hand each other, and the figures of the final summary."""

    out_dir: Path
    """The run's output directory."""
    samples: list | None = None
    """The selection the fine-tune trains on (``TraceSample``s)."""
    sample_key: str | None = None
    """Trace-cache key (or ``published:<file>``) the samples came from."""
    selection: dict = field(default_factory=dict)
    """Selection statistics (kept steps, fractions, entropies)."""
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    tuned_tokens: int | None = None
    """Kept steps the fine-tune trained on (summed over ranks)."""
    is_global_zero: bool = True
    """False on the other ranks of a multi-process run (they stop after training)."""
    report: dict | None = None
    """The evaluation report."""
    wall_s: dict = field(default_factory=dict)
    """Seconds per stage."""
    cpu_s: dict = field(default_factory=dict)
    """Process CPU seconds per stage (all threads of this process)."""
    training_problems: int | None = None
    """Training problems the method sampled (or read) for its training data."""
    optimisation: dict = field(default_factory=dict)
    """What the fine-tune really had: updates, kept steps per update, epochs over the selection."""
    sampling_cost: dict = field(default_factory=dict)
    """What sampling the training data cost, as recorded when it was made: ``problems``,
    ``generated_tokens``, ``wall_s``, ``cpu_s``, ``cached`` (True: read from the cache)."""
    method: Any = None
    """The run's :class:`~lightreasoner.methods.Method`, built once by validation."""
    logger: Any = False
    """The run's Lightning logger (built once, finished at the end of the run), or False."""
    stage_record: Any = None
    """The run's :class:`~lightreasoner.run.resume.StageRecord` (finished stages of a named run)."""
    drift: dict = field(default_factory=dict)
    """The drift guard's summary (:meth:`lightreasoner.eval.drift.DriftGuard.summary`; empty when off)."""
    rounds: list = field(default_factory=list)
    """``rounds > 1``: one entry per round (its expert, trace-cache key, selection,
    sampling cost, adapter and evaluation); empty for a single round."""
    objective: float | None = None
    """What a hyper-parameter search maximises: the mean accuracy of the tuned model (the
    first evaluated model when there is none) over the evaluated benchmarks."""
