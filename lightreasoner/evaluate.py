"""The evaluation stage: zero-shot chain of thought, greedy, one sample per problem.

For every model × benchmark: batched greedy generation (left padding, the model's chat
template, ``do_sample=False`` whatever the checkpoint's generation config says), the final
answer extracted and compared with the gold answer (``answers.py``), one JSON line per
problem in ``{out_dir}/{model}/{benchmark}.jsonl`` written batch by batch (a rerun resumes:
problems already there are not regenerated), then a summary (accuracy, Wilson 95% interval,
cut-off fraction, time, tokens/s), paired comparisons against the baseline model (difference
with a paired-bootstrap 95% interval, exact McNemar p-value; only between runs with identical
prompts and generation settings), and a report printed and saved as ``report.md`` and
``report.json``.

Per-problem row fields: ``id``, ``question``, ``gold``, ``generated`` (decoded text, special
tokens dropped), ``extracted`` (the answer found in it, or null), ``correct``, ``cut_off``
(``max_new_tokens`` reached without an end-of-sequence token), ``num_tokens`` (generated
tokens including the end-of-sequence token), ``seconds`` (this problem's share of its batch's
generation time).

Each ``{benchmark}.jsonl`` has a ``{benchmark}.settings.json`` beside it (model identity,
dataset identity, prompt, generation settings); resuming with different settings is refused.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import math
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from lightreasoner import models as lr_models
from lightreasoner.answers import extract_answer, is_equivalent
from lightreasoner.benchmarks import dataset_identity, load_problems
from lightreasoner.models import ModelSpec
from lightreasoner.prompts import EVAL_SYSTEM, chat_prompt, template_fingerprint
from lightreasoner.records import Problem

log = logging.getLogger(__name__)

META_FILE = "lightreasoner.json"
DEFAULT_MAX_NEW_TOKENS = 512
BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0
Z95 = 1.959963984540054

COMPARABLE_SETTINGS = (
    "benchmark",
    "split",
    "dataset",
    "system_prompt",
    "template_fingerprint",
    "max_new_tokens",
    "do_sample",
    "num_beams",
)
"""Settings two runs must share for a paired comparison (model identity aside)."""


# --------------------------------------------------------------------------- generation


def generate_batched(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    eos_token_ids: list[int] | None = None,
    on_batch: Callable[[int, list[dict]], None] | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[dict]:
    """Greedy continuations of ``prompts`` (text already templated), in batches, left-padded.

    Returns one dict per prompt: ``text`` (decoded, special tokens dropped), ``token_ids``
    (generated ids up to and including the first end-of-sequence id), ``cut_off`` (no
    end-of-sequence id within ``max_new_tokens``), ``num_tokens`` and ``seconds`` (the
    prompt's share of its batch's time). ``on_batch(start, results)`` is called after each
    batch (``start`` = index of its first prompt), e.g. to write results as they come.
    Greedy overrides the checkpoint's generation config (``do_sample=False``, one beam).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an integer >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    eos = list(eos_token_ids or lr_models.eos_token_ids(tokenizer, model))
    eos_set = set(eos)
    device = next(model.parameters()).device
    gen_cfg = lr_models.neutral_generation_config(model, tokenizer, max_new_tokens, eos)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    results: list[dict] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="problem", disable=not progress, leave=False)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            t0 = time.perf_counter()
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode(), lr_models.using_generation_config(model, gen_cfg):
                out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=gen_cfg)
            new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
            seconds = (time.perf_counter() - t0) / len(chunk)
            batch = []
            for row in new_tokens:
                end = next((i for i, t in enumerate(row) if t in eos_set), None)
                ids = row if end is None else row[: end + 1]
                text = tokenizer.decode(ids if end is None else ids[:-1], skip_special_tokens=True)
                batch.append({"text": text, "token_ids": ids, "cut_off": end is None, "num_tokens": len(ids), "seconds": seconds})
            if on_batch is not None:
                on_batch(start, batch)
            results.extend(batch)
            bar.update(len(chunk))
    finally:
        bar.close()
        tokenizer.padding_side = padding_side
    return results


# --------------------------------------------------------------------------- model references


def resolve_model_ref(ref: Any) -> dict:
    """What a model entry's ``ref`` points at.

    Returns ``{"kind", "spec", "base", "path"}``: ``kind`` is ``spec`` (a ModelSpec dict or a
    plain dir/hub name, loaded with ``models.load_model``), ``lora_adapter`` (a dir whose
    ``lightreasoner.json`` says so; ``base`` = its saved base spec) or ``merged`` (loaded as
    a local ModelSpec at the base spec's dtype and device).
    """
    if isinstance(ref, (ModelSpec, Mapping)) or hasattr(ref, "items"):
        spec = ModelSpec.from_any(dict(ref) if not isinstance(ref, ModelSpec) else ref)
        return {"kind": "spec", "spec": spec.to_dict(), "base": None, "path": None}
    ref = str(ref)
    path = Path(os.path.expanduser(ref))
    meta_path = path / META_FILE
    if path.is_dir() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        kind = meta.get("kind")
        base = ModelSpec.from_any(meta["base"]).to_dict() if meta.get("base") else None
        if kind == "lora_adapter":
            if base is None:
                raise ValueError(f"{meta_path}: a lora_adapter needs its 'base' model spec")
            return {"kind": "lora_adapter", "spec": None, "base": base, "path": str(path.resolve())}
        if kind == "merged" and base is not None:
            spec = ModelSpec(
                name_or_path=str(path.resolve()),
                dtype=base["dtype"],
                device=base["device"],
                trust_remote_code=base["trust_remote_code"],
            )
            return {"kind": "merged", "spec": spec.to_dict(), "base": base, "path": str(path.resolve())}
    name = str(path.resolve()) if path.exists() else ref
    return {"kind": "spec", "spec": ModelSpec(name_or_path=name).to_dict(), "base": None, "path": None}


def model_identity(info: dict) -> dict:
    """Identity of a resolved model (file fingerprints or hub name + revision), for settings."""
    if info["kind"] == "lora_adapter":
        return {
            "adapter": ModelSpec(name_or_path=info["path"]).identity(),
            "base": ModelSpec.from_any(info["base"]).identity(),
        }
    return ModelSpec.from_any(info["spec"]).identity()


def load_eval_tokenizer(info: dict, what: str):
    if info["kind"] == "lora_adapter":
        adapter = Path(info["path"])
        source = ModelSpec(name_or_path=str(adapter)) if (adapter / "tokenizer_config.json").is_file() else ModelSpec.from_any(info["base"])
        return lr_models.load_tokenizer(source, what)
    return lr_models.load_tokenizer(ModelSpec.from_any(info["spec"]), what)


def load_eval_model(info: dict, what: str):
    if info["kind"] == "lora_adapter":
        from lightreasoner.distill import load_adapted_model

        model, _ = load_adapted_model(info["path"], device=None)
        return model
    return lr_models.load_model(ModelSpec.from_any(info["spec"]), what)


# --------------------------------------------------------------------------- per-problem files


def _safe(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", str(name)).strip("_") or "model"


def read_rows(path: Path) -> dict[str, dict]:
    """Rows already written to ``path`` by id. A truncated last line (an interrupted write)
    is cut from the file; a malformed line elsewhere is an error naming the line."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if line.strip():
            try:
                row = json.loads(line)
                if last:  # complete JSON but no newline yet: finish the line
                    with open(path, "ab") as f:
                        f.write(b"\n")
            except json.JSONDecodeError:
                if not last:
                    raise ValueError(f"{path}:{i + 1}: malformed JSON line in evaluation results") from None
                log.warning("%s: dropping a truncated last line (an interrupted write)", path)
                with open(path, "r+b") as f:
                    f.truncate(offset)
                break
            rows[row["id"]] = row
        offset += len(line) + 1
    return rows


def _check_settings(path: Path, settings: dict) -> None:
    """Write ``settings`` beside a results file, or refuse to resume under different ones."""
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{path}: results in this directory were generated with different settings ({', '.join(diff)}); "
                "use another output directory or delete these results"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def score_row(problem: Problem, gen: dict, timeout_s: float = 5.0) -> dict:
    """One per-problem result row from a generation (see the module docstring for fields)."""
    extracted = extract_answer(gen["text"], problem.answer_type)
    return {
        "id": problem.id,
        "question": problem.question,
        "gold": problem.answer,
        "generated": gen["text"],
        "extracted": extracted,
        "correct": bool(is_equivalent(extracted, problem.answer, problem.answer_type, timeout_s=timeout_s)),
        "cut_off": bool(gen["cut_off"]),
        "num_tokens": int(gen["num_tokens"]),
        "seconds": round(float(gen["seconds"]), 4),
    }


# --------------------------------------------------------------------------- statistics


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(0, 1)`` when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def paired_bootstrap_ci(
    base: np.ndarray, other: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile interval of ``mean(other) - mean(base)`` over problems resampled in pairs."""
    d = other.astype(np.float64) - base.astype(np.float64)
    n = len(d)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // n)
    for s in range(0, samples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, samples - s), n))
        means[s : s + len(idx)] = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: list[dict]) -> dict:
    """Accuracy, Wilson 95% interval, cut-off fraction, tokens and generation time of ``rows``."""
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    tokens = sum(int(r["num_tokens"]) for r in rows)
    gen_s = sum(float(r.get("seconds", 0.0)) for r in rows)
    lo, hi = wilson_interval(k, n)
    return {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else 0.0,
        "ci95": [lo, hi],
        "cut_off_frac": sum(bool(r["cut_off"]) for r in rows) / n if n else 0.0,
        "no_answer_frac": sum(r["extracted"] is None for r in rows) / n if n else 0.0,
        "mean_tokens": tokens / n if n else 0.0,
        "gen_s": round(gen_s, 2),
        "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
    }


def paired_comparison(baseline: dict, other: dict) -> dict:
    """Paired comparison of two runs (``{"model", "settings", "rows"}``) on the same problems.

    Refuses (ValueError) unless both runs share the prompt and generation settings
    (``COMPARABLE_SETTINGS``) and the same problems with the same question texts.
    """
    a_set, b_set = baseline["settings"], other["settings"]
    differ = [k for k in COMPARABLE_SETTINGS if a_set.get(k) != b_set.get(k)]
    where = f"paired comparison {other['model']} vs {baseline['model']} on {a_set.get('benchmark')}"
    if differ:
        detail = "; ".join(f"{k}: {a_set.get(k)!r} vs {b_set.get(k)!r}" for k in differ)
        raise ValueError(f"{where}: refused, prompts or generation settings differ ({detail[:400]})")
    a_rows = {r["id"]: r for r in baseline["rows"]}
    b_rows = {r["id"]: r for r in other["rows"]}
    if set(a_rows) != set(b_rows) or any(a_rows[i]["question"] != b_rows[i]["question"] for i in a_rows):
        raise ValueError(f"{where}: refused, the runs cover different problems or question texts")
    ids = sorted(a_rows)
    a = np.array([bool(a_rows[i]["correct"]) for i in ids])
    b = np.array([bool(b_rows[i]["correct"]) for i in ids])
    n = len(ids)
    only_base, only_other = int((a & ~b).sum()), int((~a & b).sum())
    lo, hi = paired_bootstrap_ci(a, b)
    return {
        "benchmark": a_set.get("benchmark"),
        "model": other["model"],
        "baseline": baseline["model"],
        "n": n,
        "accuracy_baseline": float(a.mean()) if n else 0.0,
        "accuracy_model": float(b.mean()) if n else 0.0,
        "diff": float(b.mean() - a.mean()) if n else 0.0,
        "ci95": [lo, hi],
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED},
        "only_baseline_correct": only_base,
        "only_model_correct": only_other,
        "mcnemar_p": mcnemar_exact_p(only_base, only_other),
    }


# --------------------------------------------------------------------------- the stage


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return dict(cfg)


def _eval_split(bench: dict, eval_cfg: dict) -> str:
    """``eval_cfg.split`` (default ``test``) when the benchmark has that split, else its own."""
    want = eval_cfg.get("split") or "test"
    files = bench.get("files") or {}
    return want if (want in files or not files) else bench["split"]


def evaluate(models: list[dict], benchmarks: list[dict], eval_cfg, out_dir, progress: bool = True) -> dict:
    """Evaluate every model on every benchmark; write per-problem JSONL and the report.

    ``models``: ``[{"name": str, "ref": ModelSpec dict | adapter/merged/model dir | hub name}]``.
    ``benchmarks``: dataset configs (``conf/dataset/*.yaml`` keys, paths resolved).
    ``eval_cfg`` keys: ``batch_size`` (default 8), ``max_problems`` (first N per benchmark,
    null = all; a benchmark's own ``max_problems`` is training-side and ignored here),
    ``max_new_tokens`` (null = each benchmark's ``max_new_tokens``), ``system_prompt`` (null =
    ``prompts.EVAL_SYSTEM``; empty = no system message), ``baseline`` (model name for paired
    comparisons, default the first model), ``split`` (default ``test``), ``verify_timeout_s``
    (default 5). Returns the report (also saved as ``report.json``/``report.md`` in ``out_dir``).
    """
    eval_cfg = _plain(eval_cfg)
    benchmarks = [_plain(b) for b in benchmarks]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not models:
        raise ValueError("eval.models: no model to evaluate")
    names = [str(m["name"]) for m in models]
    if len(set(map(_safe, names))) != len(names):
        raise ValueError(f"eval.models: model names must be distinct, got {names}")
    system = eval_cfg.get("system_prompt")
    system = EVAL_SYSTEM if system is None else str(system)
    batch_size = int(eval_cfg.get("batch_size") or 8)
    max_problems = eval_cfg.get("max_problems")
    timeout_s = float(eval_cfg.get("verify_timeout_s") or 5.0)
    baseline = eval_cfg.get("baseline") or names[0]
    if baseline not in names:
        log.warning("eval.baseline: %r is not among the evaluated models %s; no paired comparisons", baseline, names)
    if eval_cfg.get("max_new_tokens") is not None and int(eval_cfg["max_new_tokens"]) < 1:
        raise ValueError(f"eval.max_new_tokens: expected an integer >= 1 or null, got {eval_cfg['max_new_tokens']}")

    # problems and their identities, once per benchmark
    bench_info: dict[str, dict] = {}
    for bench in benchmarks:
        split = _eval_split(bench, eval_cfg)
        problems = load_problems(bench, split=split, max_problems=int(max_problems or 0), shuffle=False)
        max_new = int(eval_cfg.get("max_new_tokens") or bench.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        bench_info[bench["name"]] = {
            "problems": problems,
            "split": split,
            "max_new_tokens": max_new,
            "answer_type": bench.get("answer_type"),
            "dataset": dataset_identity(bench, split),
        }

    runs: dict[tuple[str, str], dict] = {}
    model_records: dict[str, dict] = {}
    for entry in models:
        name = str(entry["name"])
        info = resolve_model_ref(entry["ref"])
        what = f"eval.models[{name}]"
        tokenizer = load_eval_tokenizer(info, what)
        fingerprint = template_fingerprint(tokenizer, system or None)
        model_records[name] = {
            **info,
            "identity": model_identity(info),
            "template_fingerprint": fingerprint,
            "prompt_example": chat_prompt(tokenizer, "<<QUESTION>>", system or None),
        }
        model = None
        for bname, b in bench_info.items():
            t_run = time.perf_counter()
            settings = {
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
            }
            path = out_dir / _safe(name) / f"{bname}.jsonl"
            _check_settings(path.with_name(f"{bname}.settings.json"), settings)
            done = read_rows(path)
            todo = [p for p in b["problems"] if p.id not in done]
            if todo:
                if model is None:
                    model = load_eval_model(info, what)
                texts = [chat_prompt(tokenizer, p.question, system or None) for p in todo]
                with open(path, "a", encoding="utf-8") as f:

                    def write(start: int, batch: list[dict]) -> None:
                        lines = []
                        for problem, gen in zip(todo[start : start + len(batch)], batch):
                            row = score_row(problem, gen, timeout_s)
                            done[problem.id] = row
                            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                        f.write("".join(lines))
                        f.flush()
                        os.fsync(f.fileno())

                    generate_batched(
                        model, tokenizer, texts, b["max_new_tokens"], batch_size,
                        on_batch=write, desc=f"eval {name}/{bname}", progress=progress,
                    )
            rows = [done[p.id] for p in b["problems"]]
            summary = summarize(rows)
            summary.update(model=name, benchmark=bname, regenerated=len(todo), wall_s=round(time.perf_counter() - t_run, 2), path=str(path))
            runs[(name, bname)] = {"model": name, "settings": settings, "rows": rows, "summary": summary}
            log.info("eval %s/%s: accuracy %.3f (n=%d, cut off %.2f)", name, bname, summary["accuracy"], summary["n"], summary["cut_off_frac"])
        del model
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
            "eos": "tokenizer eos + generation config eos",
            "max_new_tokens": {b: i["max_new_tokens"] for b, i in bench_info.items()},
            "verify_timeout_s": timeout_s,
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
    _write_report(report, out_dir)
    print_report(report)
    return report


# --------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["model", "benchmark", "n", "accuracy %", "95% CI", "cut off %", "tokens/s", "gen s", "wall s"]
    rows = []
    for r in report["results"]:
        tps = r.get("tokens_per_s")
        rows.append([
            r["model"], r["benchmark"], str(r["n"]), _pct(r["accuracy"]),
            f"{_pct(r['ci95'][0])}–{_pct(r['ci95'][1])}", _pct(r["cut_off_frac"]),
            "-" if tps is None else f"{tps:.1f}", f"{r['gen_s']:.1f}", f"{r['wall_s']:.1f}",
        ])
    return cols, rows


def _comparison_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["benchmark", "model", "vs", "n", "diff (pp)", "95% CI (bootstrap)", "McNemar p"]
    rows = []
    for c in report["comparisons"]:
        if "refused" in c:
            rows.append([c["benchmark"], c["model"], c["baseline"], "-", "refused", c["refused"][:120], "-"])
            continue
        rows.append([
            c["benchmark"], c["model"], c["baseline"], str(c["n"]), f"{100 * c['diff']:+.1f}",
            f"{100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f}", f"{c['mcnemar_p']:.3g}",
        ])
    return cols, rows


def _markdown_table(cols: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(esc(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    """The report as Markdown: results, paired comparisons, prompt, generation settings, models."""
    parts = ["# Evaluation report", "", f"Created {report['created']}; results in `{report['out_dir']}`.", "", "## Results", ""]
    parts.append(_markdown_table(*_table_rows(report)))
    if report["comparisons"]:
        parts += ["", f"## Paired comparisons against `{report['baseline']}`", ""]
        parts.append(_markdown_table(*_comparison_rows(report)))
    parts += ["", "## Prompt", "", f"System message: `{report['prompt']['system']}`", ""]
    for name, t in report["prompt"]["templates"].items():
        parts += [f"Template of `{name}` (fingerprint `{t['fingerprint']}`):", "", "```", t["example"], "```", ""]
    parts += ["## Generation", "", "```json", json.dumps(report["generation"], indent=2), "```", "", "## Models", ""]
    parts += ["```json", json.dumps(report["models"], indent=2, default=str), "```", ""]
    return "\n".join(parts)


def _write_report(report: dict, out_dir: Path) -> None:
    for name, text in (("report.json", json.dumps(report, indent=2, default=str)), ("report.md", report_markdown(report))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)


def print_report(report: dict) -> None:
    """Print the results (and comparisons) as tables (rich; plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that no column is truncated
        console = Console(width=160)
    for title, (cols, rows) in (("evaluation", _table_rows(report)), ("paired comparisons", _comparison_rows(report))):
        if not rows:
            continue
        table = Table(title=title)
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*r)
        console.print(table)


def log_report(report: dict, logger) -> None:
    """Log the report to a Lightning logger: W&B tables for ``WandbLogger``, else metrics.

    Metrics (other loggers): ``eval/{model}/{benchmark}/accuracy`` and ``.../cut_off_frac``,
    and ``eval/{model}/{benchmark}/diff_vs_{baseline}`` for each paired comparison.
    """
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        cols, rows = _table_rows(report)
        logger.log_table(key="eval/results", columns=cols, data=rows)
        if report["comparisons"]:
            ccols, crows = _comparison_rows(report)
            logger.log_table(key="eval/paired_comparisons", columns=ccols, data=crows)
        return
    metrics: dict[str, float] = {}
    for r in report["results"]:
        metrics[f"eval/{r['model']}/{r['benchmark']}/accuracy"] = float(r["accuracy"])
        metrics[f"eval/{r['model']}/{r['benchmark']}/cut_off_frac"] = float(r["cut_off_frac"])
    for c in report["comparisons"]:
        if "refused" not in c:
            metrics[f"eval/{c['model']}/{c['benchmark']}/diff_vs_{c['baseline']}"] = float(c["diff"])
    logger.log_metrics(metrics)
    if hasattr(logger, "save"):
        logger.save()
