"""Strict and flexible scores of a model output, and the format of its answer (no torch).

Every per-problem evaluation row carries, beside today's ``extracted`` / ``correct`` (the
**strict** score: :func:`lightreasoner.data.answers.extract_answer`, the last box or the benchmark's
own rule), two fields:

- ``flexible``: ``{"extracted", "correct", "scorer"}``, the **flexible** score: the strict
  answer when it is well formed, else the lenient extractor's (last number; last choice letter;
  a box cut off by the token budget or the last ``$…$`` for LaTeX answers;
  :func:`lightreasoner.data.answers.flexible_answer`). A problem the strict score counts right is
  right for the flexible one too, so flexible − strict is what format alone costs. ``scorer``
  names the rules that made both verdicts (:data:`SCORER`, with ``+published-tolerance`` under
  the published numeric tolerance).
- ``format``: ``{"answer", "hedging"}``: where the strict answer stands (``boxed``, ``unboxed``,
  ``malformed``, ``none``: :func:`lightreasoner.data.answers.answer_format`) and whether the output
  states more than one distinct final answer (:func:`lightreasoner.data.answers.final_answers`).

Rows written before these fields existed are re-scored from their stored text (``generated``
and ``gold``), never regenerated (:func:`rescore_rows`); their strict verdict is re-made too, with
the current numeric comparison (integers exact). A row without its text or gold (a hand-made
one) keeps its stored verdict.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightreasoner.data.answers import (
    answer_format,
    final_answers,
    is_equivalent,
    lenient_answer,
    strict_answer,
    well_formed,
)

SCORER = "strict+flexible/1"
"""The scoring rules' version recorded in each row's ``flexible.scorer``."""

FORMATS = ("boxed", "unboxed", "malformed", "none")
OFF_FORMAT = ("unboxed", "malformed")
"""Answer formats counted as "answer present but outside the expected format"."""

def scorer_tag(published_tolerance: bool = False) -> str:
    return SCORER + ("+published-tolerance" if published_tolerance else "")


def score_output(
    text: str | None, gold: str, answer_type: str, timeout_s: float = 5.0, published_tolerance: bool = False
) -> dict:
    """``{"extracted", "correct", "flexible", "format"}`` of one output (see the module docstring)."""
    text = text or ""
    strict, source = strict_answer(text, answer_type)
    kw = {"timeout_s": timeout_s, "published_tolerance": published_tolerance}
    correct = bool(is_equivalent(strict, gold, answer_type, **kw))
    flex = strict if well_formed(strict, source, answer_type) else (lenient_answer(text, answer_type) or strict)
    flex_correct = correct or (flex is not None and flex != strict and bool(is_equivalent(flex, gold, answer_type, **kw)))
    return {
        "extracted": strict,
        "correct": correct,
        "flexible": {"extracted": flex, "correct": flex_correct, "scorer": scorer_tag(published_tolerance)},
        "format": {"answer": answer_format(strict, source, answer_type), "hedging": len(final_answers(text, answer_type)) > 1},
    }


def can_rescore(row: dict) -> bool:
    return isinstance(row.get("generated"), str) and row.get("gold") is not None


def needs_rescoring(row: dict, published_tolerance: bool | None = None) -> bool:
    """True for a row without the flexible score or the answer format (an older record), or,
    when ``published_tolerance`` is given, one scored under the other numeric rule; never for a
    row that cannot be re-scored (no ``generated`` text or no ``gold``)."""
    if not can_rescore(row):
        return False
    flex, fmt = row.get("flexible"), row.get("format")
    if not isinstance(flex, dict) or not isinstance(fmt, dict):
        return True
    return published_tolerance is not None and flex.get("scorer") != scorer_tag(published_tolerance)


def rescore_row(row: dict, answer_type: str, timeout_s: float = 5.0, published_tolerance: bool = False) -> dict:
    """A copy of ``row`` with its strict and flexible scores and format re-made from its text."""
    return {**row, **score_output(row["generated"], row["gold"], answer_type, timeout_s, published_tolerance)}


def rescore_rows(
    rows: Iterable[dict], answer_type: str | None, timeout_s: float = 5.0, published_tolerance: bool = False,
    force: bool = False,
) -> tuple[list[dict], int]:
    """``(rows, n_rescored)``: the rows that need it (:func:`needs_rescoring`; with ``force``, every
    row that can be) re-scored from their text; the others as they were. ``answer_type`` None
    (an unknown benchmark): nothing is re-scored."""
    out, n = [], 0
    for row in rows:
        stale = can_rescore(row) if force else needs_rescoring(row, published_tolerance)
        if stale and answer_type is not None:
            row = rescore_row(row, answer_type, timeout_s, published_tolerance)
            n += 1
        out.append(row)
    return out, n


def answer_type_of(benchmark: str) -> str | None:
    """The ``answer_type`` of a benchmark by name (``conf/dataset/<name>.yaml``), or None."""
    from omegaconf import OmegaConf

    from lightreasoner.core.config import config_dir

    path = config_dir() / "dataset" / f"{benchmark}.yaml"
    if not path.is_file():
        return None
    return OmegaConf.load(path).get("answer_type")


def has_flexible(rows: Iterable[dict]) -> bool:
    """Whether every row carries the flexible score and the answer format (a non-empty list)."""
    rows = list(rows)
    return bool(rows) and all(isinstance(r.get("flexible"), dict) and isinstance(r.get("format"), dict) for r in rows)


def flexible_verdicts(rows: Iterable[dict]) -> list[bool]:
    return [bool(r["flexible"]["correct"]) for r in rows]
