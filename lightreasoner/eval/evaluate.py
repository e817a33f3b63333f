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
from lightreasoner.training.checkpoints import CONTRASTIVE, load_ref_engine, load_ref_tokenizer, model_identity, resolve_model_ref
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

    ``models``: ``[{"name": str, "ref": ModelSpec dict | adapter/merged/model dir | hub name}]``.
    ``benchmarks``: dataset configs (``conf/dataset/*.yaml`` keys, paths resolved).
    ``eval_cfg``: the ``eval`` group (:class:`EvalSettings`; ``benchmarks``/``models`` there are
    the pipeline's, the arguments here are what runs). ``generation``: the ``generation`` config
    node (default: the transformers engine). ``cache_dir``: the cross-run store of per-problem
    rows (:class:`SharedResults`; used when ``eval.cache`` is true). Returns the report (also
    saved as ``report.json``/``report.md`` in ``out_dir``).
    """
    settings = EvalSettings.from_cfg(eval_cfg)
    benchmarks = [to_plain(b) for b in benchmarks]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not models:
        raise ValueError("eval.models: no model to evaluate")
    names = [str(m["name"]) for m in models]
    if len(set(map(_safe, names))) != len(names):
        raise ValueError(f"eval.models: model names must be distinct, got {names}")
    system = settings.system
    batch_size = settings.batch_size
    timeout_s = float(settings.verify_timeout_s)
    published = bool(settings.published_numeric_tolerance)
    baseline = settings.baseline or names[0]
    if baseline not in names:
        log.warning("eval.baseline: %r is not among the evaluated models %s; no paired comparisons", baseline, names)

    # problems and their identities, once per benchmark
    bench_info: dict[str, dict] = {}
    for bench in benchmarks:
        split = _eval_split(bench, settings)
        problems = load_problems(bench, split=split, max_problems=int(settings.max_problems or 0), shuffle=False)
        max_new = int(settings.max_new_tokens or bench.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        bench_info[bench["name"]] = {
            "problems": problems,
            "split": split,
            "max_new_tokens": max_new,
            "answer_type": bench.get("answer_type"),
            "dataset": dataset_identity(bench, split),
        }

    # the configured engine (contrastive decoding is a model of its own: its pair and alpha are
    # in the model identity, and it is compared with the others as such)
    engine_ident = engine_key(generation)
    runs: dict[tuple[str, str], dict] = {}
    model_records: dict[str, dict] = {}
    for entry in models:
        name = str(entry["name"])
        info = resolve_model_ref(entry["ref"])
        what = f"eval.models[{name}]"
        tokenizer = load_ref_tokenizer(info, what)
        template = settings.prompt_template
        fingerprint = template_fingerprint(tokenizer, system or None, template)
        vocab = tokenizer.get_vocab()
        stop_ids = sorted({int(vocab[t]) for t in settings.stop_tokens if t in vocab})
        model_records[name] = {
            **info,
            "identity": model_identity(info),
            "template_fingerprint": fingerprint,
            "prompt_example": chat_prompt(tokenizer, "<<QUESTION>>", system or None, template),
            "stop_token_ids": stop_ids,
        }
        engine = None
        model_records[name]["engine"] = (
            {"engine": CONTRASTIVE, "alpha": info["alpha"]} if info["kind"] == CONTRASTIVE else engine_ident or {"engine": "hf", "dtype": "the model's"}
        )
        for bname, b in bench_info.items():
            t_run = time.perf_counter()
            run_settings = {
                "model": name,
                "model_identity": model_records[name]["identity"],
                "benchmark": bname,
                "split": b["split"],
                "dataset": b["dataset"],
                "system_prompt": system,
                "template_fingerprint": fingerprint,
                "max_new_tokens": b["max_new_tokens"],
                "do_sample": False,
                "num_beams": 1,
                "engine": engine_ident,
                "prompt_template": template,
                "stop_token_ids": stop_ids,
            }
            path = out_dir / _safe(name) / f"{bname}.jsonl"
            check_settings(path.with_name(f"{bname}.settings.json"), run_settings)
            done = read_rows(path)
            _rescore_file(path, done, b["answer_type"], timeout_s, published)
            shared = SharedResults(cache_dir, run_settings) if cache_dir is not None and settings.cache else None
            reused = 0
            if shared is not None:
                wanted = {p.id for p in b["problems"]} - set(done)
                found = {i: row for i, row in shared.rows().items() if i in wanted}
                found = {r["id"]: r for r in rescore_rows(found.values(), b["answer_type"], timeout_s, published)[0]}
                if found:
                    with open(path, "a", encoding="utf-8") as f:
                        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in found.values()))
                    done.update(found)
                    reused = len(found)
                    log.info("eval %s/%s: %d rows reused from %s", name, bname, reused, shared.dir)
            todo = [p for p in b["problems"] if p.id not in done]
            if todo:
                if engine is None:
                    engine = load_ref_engine(info, what, tokenizer, generation)
                    engine.eos_token_ids = sorted(set(engine.eos_token_ids) | set(stop_ids))
                prompt_ids = encode_prompts(tokenizer, [p.question for p in todo], system or None, template)
                with open(path, "a", encoding="utf-8") as f:

                    def write(start: int, batch: list[Generation]) -> None:
                        lines = []
                        for problem, gen in zip(todo[start : start + len(batch)], batch):
                            row = score_row(problem, gen, timeout_s, published)
                            done[problem.id] = row
                            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                        f.write("".join(lines))
                        f.flush()
                        os.fsync(f.fileno())
                        if shared is not None:
                            shared.append(lines)

                    engine.generate(
                        prompt_ids, GenerationSettings(b["max_new_tokens"]), batch_size,
                        on_batch=write, desc=f"eval {name}/{bname}", progress=progress,
                    )
            rows = [done[p.id] for p in b["problems"]]
            summary = summarize(rows)
            summary.update(model=name, benchmark=bname, regenerated=len(todo), reused=reused, wall_s=round(time.perf_counter() - t_run, 2), path=str(path))
            runs[(name, bname)] = {"model": name, "settings": run_settings, "rows": rows, "summary": summary}
            log.info("eval %s/%s: accuracy %.3f (n=%d, cut off %.2f)", name, bname, summary["accuracy"], summary["n"], summary["cut_off_frac"])
        if engine is not None:
            engine.close()
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    comparisons = []
    if baseline in names:
        for bname in bench_info:
            for name in names:
                if name == baseline:
                    continue
                try:
                    comparisons.append(paired_comparison(runs[(baseline, bname)], runs[(name, bname)]))
                except ValueError as e:
                    log.warning("%s", e)
                    comparisons.append({"benchmark": bname, "model": name, "baseline": baseline, "refused": str(e)})

    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out_dir.resolve()),
        "baseline": baseline if baseline in names else None,
        "prompt": {
            "system": system,
            "user": "the benchmark question (multiple choice: with options A-D as lines)",
            "templates": {n: {"fingerprint": r["template_fingerprint"], "example": r["prompt_example"]} for n, r in model_records.items()},
        },
        "generation": {
            "do_sample": False,
            "num_beams": 1,
            "batch_size": batch_size,
            "padding_side": "left",
            "eos": "tokenizer eos + generation config eos + eval.stop_tokens in the vocabulary",
            "stop_tokens": list(settings.stop_tokens),
            "prompt_template": settings.prompt_template or "each model's chat template",
            "max_new_tokens": {b: i["max_new_tokens"] for b, i in bench_info.items()},
            "verify_timeout_s": timeout_s,
            "numeric_comparison": "published: relative 1e-4 for every value" if published
            else "integers exact; other values relative 1e-4 (absolute 1e-8 near 0)",
        },
        "models": {n: {k: v for k, v in r.items() if k not in ("prompt_example",)} for n, r in model_records.items()},
        "benchmarks": {
            b: {"split": i["split"], "n": len(i["problems"]), "answer_type": i["answer_type"], "dataset": i["dataset"]}
            for b, i in bench_info.items()
        },
        "results": [r["summary"] for r in runs.values()],
        "comparisons": comparisons,
        "summary": {n: {b: runs[(n, b)]["summary"]["accuracy"] for b in bench_info} for n in names},
    }
    write_report(report, out_dir)
    print_report(report)
    return report
