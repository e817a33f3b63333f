"""The drift guard's held-out data, prepared by the run before the fit (issue 33: the guard in
:mod:`lightreasoner.eval.drift` measures what it is given and runs no stage itself).

The held-out pool (``drift.split``'s first problems, or the problems after the training ones),
the base expert's traces of them (sampled through the trace cache like the training traces),
their gold solutions and the validation prompts; :func:`build_drift_guard` makes the run's guard."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightreasoner.core.config import to_plain
from lightreasoner.data.benchmarks import dataset_identity, load_problems, local_file
from lightreasoner.data.records import Problem
from lightreasoner.eval.drift import SOLUTION_FIELDS, DriftGuard, DriftSettings, HeldOut

log = logging.getLogger("lightreasoner")  # the guard's log lines, as before


def heldout_problems(cfg: Any, settings: DriftSettings, training_problems: int | None) -> list[Problem]:
    """The held-out pool: ``drift.split``'s first problems, or, when that is the training split,
    the problems after the training ones (the same order and shuffle as the training set)."""
    ds = cfg.dataset
    want = max(settings.problems, settings.val_problems)
    if settings.split == ds.split:
        skip = int(training_problems if training_problems is not None else (ds.max_problems or 0))
        pool = load_problems(ds, split=ds.split, max_problems=0, shuffle=ds.shuffle, seed=int(cfg.seed))[skip:]
    else:
        files = to_plain(ds.get("files")) or {}
        if files and settings.split not in files and not ds.get("hub"):
            raise ValueError(f"drift.split: dataset {ds.name!r} has no {settings.split!r} split (it has {sorted(files)})")
        pool = load_problems(ds, split=settings.split, max_problems=0, shuffle=False)
    if not pool:
        raise ValueError(f"drift.split: no held-out problem left in split {settings.split!r} of dataset {ds.name!r}")
    return pool[:want]


def gold_solutions(dataset_cfg: Any, split: str, problems: Sequence[Problem], solution_field: str) -> list[str]:
    """The gold solution text of each problem, read from the split's local JSONL (row = the
    index in the problem id, as :func:`~lightreasoner.data.benchmarks.load_problems` numbers them)."""
    path = local_file(dataset_cfg, split)
    if path is None or not path.is_file():
        raise ValueError(f"drift.solution_field: gold solutions are read from the split's local JSONL; {split!r} has none ({path})")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = []
    for p in problems:
        index = int(p.id.rsplit("/", 1)[1])
        text = rows[index].get(solution_field) if index < len(rows) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"drift.solution_field: row {index + 1} of {path} has no {solution_field!r} text")
        out.append(text.strip())
    return out


def prepare_heldout(
    cfg: Any,
    settings: DriftSettings,
    tokenizer,
    training_problems: int | None = None,
    junk_rate: float | None = None,
    models: tuple | None = None,
) -> HeldOut:
    """The held-out traces (scored like the training traces, through the trace cache: a grid
    samples them once), gold solutions and validation prompts. ``models`` as for
    :func:`~lightreasoner.sampling.sampler.run_sampling` (tests)."""
    from lightreasoner.eval.evaluate import DEFAULT_MAX_NEW_TOKENS, EvalSettings
    from lightreasoner.models.spec import pair_specs
    from lightreasoner.data.prompts import encode_prompts
    from lightreasoner.sampling.sampler import run_sampling

    ds = cfg.dataset
    pool = heldout_problems(cfg, settings, training_problems)
    trace_problems = pool[: settings.problems]
    split = ds.split if settings.split == ds.split else settings.split
    expert, amateur = pair_specs(cfg)
    t = cfg.trainer
    cache = run_sampling(
        expert=expert, amateur=amateur, problems=trace_problems, dataset_identity=dataset_identity(ds, split),
        sampling_cfg=to_plain(cfg.sampling), cache_dir=Path(cfg.paths.cache_dir),
        trainer_kwargs={"accelerator": t.accelerator, "devices": 1, "strategy": "auto"},
        generation=cfg.get("generation"), models=models,
    )
    records = cache.read([p.id for p in trace_problems])
    traces = [(r["prompt_ids"].tolist(), r["trace_ids"].tolist()) for r in records if r["trace_ids"].numel()]
    field_name = settings.solution_field or SOLUTION_FIELDS.get(str(ds.get("format") or ds.name))
    solutions: list[tuple[list[int], list[int]]] = []
    note = None
    if field_name is None:
        note = f"no perplexity: no gold-solution field known for format {ds.get('format')!r} (set drift.solution_field)"
        log.warning("drift: %s", note)
    else:
        texts = gold_solutions(ds, split, trace_problems, field_name)
        prompts = encode_prompts(tokenizer, [p.question for p in trace_problems], cfg.sampling.system_prompt or None)
        solutions = [(pr, tokenizer(x, add_special_tokens=False)["input_ids"]) for pr, x in zip(prompts, texts)]
    ev = EvalSettings.from_cfg(cfg.eval)
    val = pool[: settings.val_problems]
    vocab = tokenizer.get_vocab()
    return HeldOut(
        traces=traces,
        solutions=solutions,
        val_problems=val,
        val_prompts=encode_prompts(tokenizer, [p.question for p in val], ev.system or None, ev.prompt_template) if val else [],
        val_max_new_tokens=int(settings.val_max_new_tokens or ev.max_new_tokens or ds.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        stop_ids=sorted({int(vocab[s]) for s in ev.stop_tokens if s in vocab}),
        verify_timeout_s=float(ev.verify_timeout_s),
        junk_rate=junk_rate,
        note=note,
    )


def build_drift_guard(cfg: Any, state: Any, tokenizer) -> DriftGuard | None:
    """The run's guard when ``drift.enabled`` (None otherwise), its held-out data prepared."""
    settings = DriftSettings.from_cfg(cfg.get("drift"))
    if not settings.enabled:
        return None
    junk = (state.selection or {}).get("junk_rate")
    heldout = prepare_heldout(cfg, settings, tokenizer, training_problems=state.training_problems, junk_rate=junk)
    return DriftGuard(settings, heldout, tokenizer)
