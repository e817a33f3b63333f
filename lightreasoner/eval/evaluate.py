"""The evaluation stage: zero-shot chain of thought, greedy, one sample per problem.

For every model × benchmark: batched greedy generation through the configured engine
(:mod:`lightreasoner.generation`; left padding, the model's chat template, greedy whatever the
checkpoint's generation config says), the final answer extracted and compared with the gold
answer (``answers.py``), one JSON line per problem in ``{out_dir}/{model}/{benchmark}.jsonl``
written batch by batch (:mod:`.results`; a rerun resumes), then a summary (accuracy, Wilson 95%
interval, cut-off fraction, time, tokens/s), paired comparisons against the baseline model
(:mod:`.stats`; only between runs with identical prompts and generation settings), and a report
printed and saved as ``report.md`` and ``report.json`` (:mod:`.tables`).

Per-problem row fields: ``id``, ``question``, ``gold``, ``generated`` (decoded text, special
tokens dropped), ``extracted`` (the answer found in it, or null), ``correct`` (the strict
score), ``cut_off`` (``max_new_tokens`` reached without an end-of-sequence token),
``num_tokens`` (generated tokens including the end-of-sequence token), ``seconds`` (this
problem's share of its batch's generation time), ``flexible`` (the flexible score:
``{"extracted", "correct", "scorer"}``) and ``format`` (``{"answer": boxed|unboxed|malformed|none,
"hedging"}``); see :mod:`.scoring`. Rows without the last two (written by an older version), or
scored under the other numeric rule (``eval.published_numeric_tolerance``), are re-scored from
their stored text when read, never regenerated, and the run's own file is rewritten with them.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightreasoner.data.benchmarks import dataset_identity, known_datasets, load_problems
from lightreasoner.training.reference import ModelRef, resolve_model_ref
from lightreasoner.core.config import settings_from_cfg, to_plain
from lightreasoner.eval.results import SharedResults, check_settings, read_rows
from lightreasoner.eval.scoring import rescore_rows, score_output
from lightreasoner.eval.stats import paired_comparison, summarize
from lightreasoner.eval.tables import print_report, write_report
from lightreasoner.core.files import atomic_write_text
from lightreasoner.generation import Generation, GenerationSettings, engine_key
from lightreasoner.data.prompts import EVAL_SYSTEM, chat_prompt, check_template, encode_prompts, template_fingerprint
from lightreasoner.data.records import Problem

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 512


@dataclass
class EvalSettings:
    """The ``eval`` config group (``conf/eval/``), checked once."""

    benchmarks: list = field(default_factory=lambda: ["gsm8k"])
    """Names of ``conf/dataset/*.yaml`` to evaluate on."""
    models: list = field(default_factory=lambda: ["base", "tuned"])
    """``base`` (the expert), ``amateur``, ``tuned`` (this run's adapter or ``tuned=``), a
    directory or a hub name."""
    baseline: str | None = "base"
    """Paired comparisons against this model (null: the first model)."""
    split: str = "test"
    """Split evaluated when the benchmark has it (else the benchmark's own)."""
    max_problems: int | None = None
    """First N problems per benchmark (null: all). A benchmark's own ``max_problems`` is
    training-side and ignored here."""
    max_new_tokens: int | None = None
    """Generation limit (null: each benchmark's ``max_new_tokens``)."""
    batch_size: int = 8
    """Problems per generation batch."""
    system_prompt: str | None = None
    """System message (null: ``prompts.EVAL_SYSTEM``; empty: no system turn)."""
    prompt_template: str | None = None
    """null: each model's own chat template; ``qwen25-math-cot``: the Qwen2.5-Math toolkit's
    fixed ChatML prompt for every model (the paper presets)."""
    stop_tokens: list = field(default_factory=lambda: ["<|im_end|>", "<|endoftext|>"])
    """Tokens that end generation besides the tokenizer's and generation config's end-of-sequence
    ids (those present in the vocabulary; the toolkit always stops at these two)."""
    verify_timeout_s: float = 5.0
    """Seconds the answer checker may spend on one answer."""
    published_numeric_tolerance: bool = False
    """Published quirk (on under ``quirks=published``): numbers compare within a relative 1e-4
    whatever their kind, as the Qwen2.5-Math toolkit does (``10001`` equals ``10000``). Off: an
    integer gold answer is matched exactly (``answers.is_equivalent``)."""
    cache: bool = True
    """Reuse the per-problem rows of an identical evaluation (same model files, benchmark,
    split, prompt, engine, token budget) from ``${paths.cache_dir}/eval``, and add this run's
    rows there: the untuned expert of a sweep is evaluated once. false: always generate."""

    @classmethod
    def from_cfg(cls, cfg: Mapping | Any | None) -> "EvalSettings":
        """From an ``eval`` mapping; one ``ValueError`` naming the first invalid key."""
        return settings_from_cfg(cls, cfg, "eval")

    def validate(self) -> None:
        def positive_or_null(name: str) -> None:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"eval.{name}: expected an integer >= 1 or null, got {v!r}")

        positive_or_null("max_new_tokens")
        positive_or_null("max_problems")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"eval.batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if not self.models:
            raise ValueError("eval.models: no model to evaluate")
        known = known_datasets()
        for name in self.benchmarks:
            if name not in known:
                raise ValueError(f"eval.benchmarks: unknown benchmark {name!r}; expected some of {known}")
        check_template(self.prompt_template)
        if not isinstance(self.stop_tokens, (list, tuple)) or not all(isinstance(t, str) for t in self.stop_tokens):
            raise ValueError(f"eval.stop_tokens: expected a list of token strings, got {self.stop_tokens!r}")
        if not isinstance(self.cache, bool):
            raise ValueError(f"eval.cache: expected true or false, got {self.cache!r}")
        if not isinstance(self.verify_timeout_s, (int, float)) or self.verify_timeout_s <= 0:
            raise ValueError(f"eval.verify_timeout_s: expected a number > 0, got {self.verify_timeout_s!r}")
        if not isinstance(self.published_numeric_tolerance, bool):
            raise ValueError(f"eval.published_numeric_tolerance: expected true or false, got {self.published_numeric_tolerance!r}")

    @property
    def system(self) -> str:
        return EVAL_SYSTEM if self.system_prompt is None else str(self.system_prompt)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", str(name)).strip("_") or "model"


def score_row(problem: Problem, gen: Generation | Mapping, timeout_s: float = 5.0, published_tolerance: bool = False) -> dict:
    """One per-problem result row from a generation (see the module docstring for fields)."""
    gen = gen.to_dict() if isinstance(gen, Generation) else gen
    scores = score_output(gen["text"], problem.answer, problem.answer_type, timeout_s, published_tolerance)
    return {
        "id": problem.id,
        "question": problem.question,
        "gold": problem.answer,
        "generated": gen["text"],
        "extracted": scores["extracted"],
        "correct": scores["correct"],
        "cut_off": bool(gen["cut_off"]),
        "num_tokens": int(gen["num_tokens"]),
        "seconds": round(float(gen["seconds"]), 4),
        "flexible": scores["flexible"],
        "format": scores["format"],
    }


def _rescore_file(path: Path, done: dict[str, dict], answer_type: str | None, timeout_s: float, published: bool) -> None:
    """Re-score the rows of ``done`` (read from ``path``) that need it (:mod:`.scoring`), in place,
    and rewrite ``path`` with them (atomically; the same rows in the same order)."""
    rows, n = rescore_rows(done.values(), answer_type, timeout_s, published)
    if not n:
        return
    done.update({r["id"]: r for r in rows})
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log.info("eval: %d rows of %s re-scored from their stored text (strict and flexible)", n, path)


def _eval_split(bench: dict, settings: EvalSettings) -> str:
    """``settings.split`` (default ``test``) when the benchmark has that split, else its own
    (a benchmark with only a test file is evaluated on it). Any other split the benchmark
    lacks is an error: a validation search must never fall back to test."""
    want = settings.split or "test"
    files = bench.get("files") or {}
    if want in files or not files:
        return want
    if want != "test":
        raise ValueError(f"eval.split: benchmark {bench.get('name')!r} has no {want!r} split (it has {sorted(files)})")
    return bench["split"]


@dataclass
class BenchmarkPlan:
    """One benchmark as evaluated: its problems (loaded once for every model), split, token
    budget, answer type and dataset identity."""

    name: str
    problems: list[Problem]
    split: str
    max_new_tokens: int
    answer_type: str | None
    dataset: dict


@dataclass
class RunPlan:
    """One (model, benchmark) pair: its settings (checked beside its records on resume, and the
    shared store's key) and its records file."""

    bench: BenchmarkPlan
    settings: dict
    path: Path


@dataclass
class ModelPlan:
    """One model: its resolved reference, tokenizer and stop ids, its report record, its runs (one
    per benchmark), and its engine, loaded for the first problem it must generate, shared by its
    runs and released after them."""

    name: str
    ref: ModelRef
    tokenizer: Any
    stop_ids: list[int]
    record: dict
    runs: list[RunPlan]
    engine: Any = None

    @property
    def what(self) -> str:
        return f"eval.models[{self.name}]"

    def load_engine(self, generation: Mapping | None):
        if self.engine is None:
            self.engine = self.ref.load_engine(self.what, self.tokenizer, generation)
            self.engine.eos_token_ids = sorted(set(self.engine.eos_token_ids) | set(self.stop_ids))
        return self.engine

    def release_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class EvalPlan:
    """What one :func:`evaluate` call runs: the checked settings, the benchmarks, the model entries
    (each planned by :func:`plan_model` when its turn comes), the baseline, the configured engine
    and where rows go."""

    settings: EvalSettings
    out_dir: Path
    models: list[dict]
    names: list[str]
    baseline: str
    benchmarks: dict[str, BenchmarkPlan]
    generation: Mapping | None
    engine_key: dict | None
    cache_dir: str | os.PathLike | None

    @property
    def timeout_s(self) -> float:
        return float(self.settings.verify_timeout_s)

    @property
    def published(self) -> bool:
        return bool(self.settings.published_numeric_tolerance)

    def shared(self, run: RunPlan) -> SharedResults | None:
        """The cross-run store of ``run``'s rows (None: no ``cache_dir``, or ``eval.cache`` false)."""
        return SharedResults(self.cache_dir, run.settings) if self.cache_dir is not None and self.settings.cache else None


def plan_evaluation(models: list[dict], benchmarks: list[dict], eval_cfg, out_dir, generation: Mapping | None,
                    cache_dir: str | os.PathLike | None) -> EvalPlan:
    """Check the arguments, create ``out_dir`` and load every benchmark's problems (see
    :func:`evaluate` for the arguments)."""
    settings = EvalSettings.from_cfg(eval_cfg)
    benchmarks = [to_plain(b) for b in benchmarks]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not models:
        raise ValueError("eval.models: no model to evaluate")
    names = [str(m["name"]) for m in models]
    if len(set(map(_safe, names))) != len(names):
        raise ValueError(f"eval.models: model names must be distinct, got {names}")
    baseline = settings.baseline or names[0]
    if baseline not in names:
        log.warning("eval.baseline: %r is not among the evaluated models %s; no paired comparisons", baseline, names)
    plans: dict[str, BenchmarkPlan] = {}
    for bench in benchmarks:
        split = _eval_split(bench, settings)
        plans[bench["name"]] = BenchmarkPlan(
            name=bench["name"],
            problems=load_problems(bench, split=split, max_problems=int(settings.max_problems or 0), shuffle=False),
            split=split,
            max_new_tokens=int(settings.max_new_tokens or bench.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
            answer_type=bench.get("answer_type"),
            dataset=dataset_identity(bench, split),
        )
    return EvalPlan(settings, out_dir, list(models), names, baseline, plans, generation, engine_key(generation), cache_dir)


def plan_model(plan: EvalPlan, entry: dict) -> ModelPlan:
    """Resolve one model entry (its tokenizer loaded, its engine not yet) and the settings of its
    run on every benchmark. The configured engine, or contrastive decoding: a model of its own,
    whose pair and alpha are in the model identity, and compared with the others as such."""
    settings, system, template = plan.settings, plan.settings.system, plan.settings.prompt_template
    name = str(entry["name"])
    ref = resolve_model_ref(entry["ref"])
    tokenizer = ref.load_tokenizer(f"eval.models[{name}]")
    fingerprint = template_fingerprint(tokenizer, system or None, template)
    vocab = tokenizer.get_vocab()
    stop_ids = sorted({int(vocab[t]) for t in settings.stop_tokens if t in vocab})
    record = {
        **ref.to_dict(),
        "identity": ref.identity(),
        "template_fingerprint": fingerprint,
        "prompt_example": chat_prompt(tokenizer, "<<QUESTION>>", system or None, template),
        "stop_token_ids": stop_ids,
        "engine": ref.engine_key(plan.engine_key),
    }
    runs = []
    for bname, b in plan.benchmarks.items():
        run_settings = {
            "model": name,
            "model_identity": record["identity"],
            "benchmark": bname,
            "split": b.split,
            "dataset": b.dataset,
            "system_prompt": system,
            "template_fingerprint": fingerprint,
            "max_new_tokens": b.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "engine": plan.engine_key,
            "prompt_template": template,
            "stop_token_ids": stop_ids,
        }
        runs.append(RunPlan(b, run_settings, plan.out_dir / _safe(name) / f"{bname}.jsonl"))
    return ModelPlan(name, ref, tokenizer, stop_ids, record, runs)


def evaluate_run(plan: EvalPlan, model: ModelPlan, run: RunPlan, progress: bool = True) -> dict:
    """Evaluate one model on one benchmark: resume its records file (re-scored where needed), take
    missing rows from the shared store, generate the rest, and summarize. Returns
    ``{"model", "settings", "rows", "summary"}`` (rows in problem order)."""
    t_run = time.perf_counter()
    b, path = run.bench, run.path
    check_settings(path.with_name(f"{b.name}.settings.json"), run.settings)
    done = read_rows(path)
    _rescore_file(path, done, b.answer_type, plan.timeout_s, plan.published)
    shared = plan.shared(run)
    reused = _reuse_shared(plan, model, run, shared, done) if shared is not None else 0
    todo = [p for p in b.problems if p.id not in done]
    if todo:
        _generate(plan, model, run, todo, done, shared, progress)
    rows = [done[p.id] for p in b.problems]
    summary = summarize(rows)
    summary.update(model=model.name, benchmark=b.name, regenerated=len(todo), reused=reused,
                   wall_s=round(time.perf_counter() - t_run, 2), path=str(path))
    log.info("eval %s/%s: accuracy %.3f (n=%d, cut off %.2f)", model.name, b.name, summary["accuracy"], summary["n"], summary["cut_off_frac"])
    return {"model": model.name, "settings": run.settings, "rows": rows, "summary": summary}


def _reuse_shared(plan: EvalPlan, model: ModelPlan, run: RunPlan, shared: SharedResults, done: dict[str, dict]) -> int:
    """Append the shared store's rows of the problems ``done`` lacks (re-scored where needed) to
    the run's records file and to ``done``; returns how many."""
    wanted = {p.id for p in run.bench.problems} - set(done)
    found = {i: row for i, row in shared.rows().items() if i in wanted}
    found = {r["id"]: r for r in rescore_rows(found.values(), run.bench.answer_type, plan.timeout_s, plan.published)[0]}
    if not found:
        return 0
    with open(run.path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in found.values()))
    done.update(found)
    log.info("eval %s/%s: %d rows reused from %s", model.name, run.bench.name, len(found), shared.dir)
    return len(found)


def _generate(plan: EvalPlan, model: ModelPlan, run: RunPlan, todo: list[Problem], done: dict[str, dict],
              shared: SharedResults | None, progress: bool) -> None:
    """Generate ``todo`` greedily with the model's engine; each batch's rows scored, added to
    ``done``, appended to the records file (flushed and synced) and to the shared store."""
    engine = model.load_engine(plan.generation)
    system, template = plan.settings.system, plan.settings.prompt_template
    prompt_ids = encode_prompts(model.tokenizer, [p.question for p in todo], system or None, template)
    with open(run.path, "a", encoding="utf-8") as f:

        def write(start: int, batch: list[Generation]) -> None:
            lines = []
            for problem, gen in zip(todo[start : start + len(batch)], batch):
                row = score_row(problem, gen, plan.timeout_s, plan.published)
                done[problem.id] = row
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            if shared is not None:
                shared.append(lines)

        engine.generate(
            prompt_ids, GenerationSettings(run.bench.max_new_tokens), plan.settings.batch_size,
            on_batch=write, desc=f"eval {model.name}/{run.bench.name}", progress=progress,
        )


def _comparisons(plan: EvalPlan, runs: dict[tuple[str, str], dict]) -> list[dict]:
    """Paired comparisons of every model against the baseline, per benchmark (a refused one
    recorded with its reason)."""
    baseline, comparisons = plan.baseline, []
    if baseline not in plan.names:
        return comparisons
    for bname in plan.benchmarks:
        for name in plan.names:
            if name == baseline:
                continue
            try:
                comparisons.append(paired_comparison(runs[(baseline, bname)], runs[(name, bname)]))
            except ValueError as e:
                log.warning("%s", e)
                comparisons.append({"benchmark": bname, "model": name, "baseline": baseline, "refused": str(e)})
    return comparisons


def build_report(plan: EvalPlan, records: dict[str, dict], runs: dict[tuple[str, str], dict]) -> dict:
    """The report: prompt, generation settings, models, benchmarks, results, comparisons and the
    accuracy summary (``records``: each model's :attr:`ModelPlan.record`)."""
    settings, names, benches = plan.settings, plan.names, plan.benchmarks
    comparisons = _comparisons(plan, runs)
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(plan.out_dir.resolve()),
        "baseline": plan.baseline if plan.baseline in names else None,
        "prompt": {
            "system": settings.system,
            "user": "the benchmark question (multiple choice: with options A-D as lines)",
            "templates": {n: {"fingerprint": r["template_fingerprint"], "example": r["prompt_example"]} for n, r in records.items()},
        },
        "generation": {
            "do_sample": False,
            "num_beams": 1,
            "batch_size": settings.batch_size,
            "padding_side": "left",
            "eos": "tokenizer eos + generation config eos + eval.stop_tokens in the vocabulary",
            "stop_tokens": list(settings.stop_tokens),
            "prompt_template": settings.prompt_template or "each model's chat template",
            "max_new_tokens": {n: b.max_new_tokens for n, b in benches.items()},
            "verify_timeout_s": plan.timeout_s,
            "numeric_comparison": "published: relative 1e-4 for every value" if plan.published
            else "integers exact; other values relative 1e-4 (absolute 1e-8 near 0)",
        },
        "models": {n: {k: v for k, v in r.items() if k not in ("prompt_example",)} for n, r in records.items()},
        "benchmarks": {
            n: {"split": b.split, "n": len(b.problems), "answer_type": b.answer_type, "dataset": b.dataset}
            for n, b in benches.items()
        },
        "results": [r["summary"] for r in runs.values()],
        "comparisons": comparisons,
        "summary": {n: {b: runs[(n, b)]["summary"]["accuracy"] for b in benches} for n in names},
    }


def evaluate(
    models: list[dict],
    benchmarks: list[dict],
    eval_cfg,
    out_dir,
    progress: bool = True,
    generation: Mapping | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Evaluate every model on every benchmark; write per-problem JSONL and the report.

    ``models``: ``[{"name": str, "ref": ModelRef | ModelSpec dict | adapter/merged/model dir | hub name}]``
    (:func:`~lightreasoner.training.reference.resolve_model_ref`).
    ``benchmarks``: dataset configs (``conf/dataset/*.yaml`` keys, paths resolved).
    ``eval_cfg``: the ``eval`` group (:class:`EvalSettings`; ``benchmarks``/``models`` there are
    the pipeline's, the arguments here are what runs). ``generation``: the ``generation`` config
    node (default: the transformers engine). ``cache_dir``: the cross-run store of per-problem
    rows (:class:`SharedResults`; used when ``eval.cache`` is true). Returns the report (also
    saved as ``report.json``/``report.md`` in ``out_dir``).

    Three steps: :func:`plan_evaluation` (settings, benchmarks), then one model at a time
    :func:`plan_model` and :func:`evaluate_run` on each benchmark (its engine released after
    them), then :func:`build_report`.
    """
    plan = plan_evaluation(models, benchmarks, eval_cfg, out_dir, generation, cache_dir)
    records: dict[str, dict] = {}
    runs: dict[tuple[str, str], dict] = {}
    for entry in plan.models:
        model = plan_model(plan, entry)
        records[model.name] = model.record
        for run in model.runs:
            runs[(model.name, run.bench.name)] = evaluate_run(plan, model, run, progress)
        model.release_engine()
    report = build_report(plan, records, runs)
    write_report(report, plan.out_dir)
    print_report(report)
    return report
