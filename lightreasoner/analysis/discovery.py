"""Finding and reading what a run leaves on disk: run directories (those holding
``.hydra/config.yaml``), pair diagnostics (``diagnose.json``), a run's composed config, overrides
and ``summary.json`` as one flat row (:func:`load_run`, :func:`load_runs`), and a model's
per-problem evaluation records. Job directory names are never parsed."""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from lightreasoner.eval.results import read_rows, record_path
from lightreasoner.eval.scoring import answer_type_of, rescore_rows


META_COLUMNS = ("run_dir", "status", "error", "overrides")
"""The columns of :func:`load_runs` that are neither config keys nor metrics."""


BASE, TUNED = "base", "tuned"


DIAGNOSE_FILE = "diagnose.json"
"""The report of one pair diagnostic (``python -m lightreasoner.run.diagnose``), one per directory."""


class ReportInputError(ValueError):
    """A path given to the report does not exist, holds no Hydra run (or pair diagnostic), or a file is unreadable."""


def find_runs(path: str | Path) -> list[Path]:
    """Run directories (those holding ``.hydra/config.yaml``) at or below ``path``, in job order."""
    found = _run_dirs(path)
    if not found:
        raise ReportInputError(f"no Hydra run (.hydra/config.yaml) under {path}")
    return found


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"no such path: {path}")
    return path


def _run_dirs(path: str | Path) -> list[Path]:
    """:func:`find_runs` without the error when there is none (``[]``)."""
    path = _existing(path)
    found = []
    for root, dirs, _ in os.walk(path):
        if os.path.isfile(os.path.join(root, ".hydra", "config.yaml")):
            found.append(Path(root))
            dirs[:] = []  # a run's own sub-directories (checkpoints, logs) hold no runs
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=_natural_key)


def find_diagnostics(path: str | Path) -> list[Path]:
    """The pair diagnostics' ``diagnose.json`` files (``python -m lightreasoner.run.diagnose``) at or
    below ``path`` (hidden directories skipped), in natural order; ``[]`` when there is none."""
    path = _existing(path)
    if path.is_file():
        return [path] if path.name == DIAGNOSE_FILE else []
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if DIAGNOSE_FILE in files:
            found.append(Path(root) / DIAGNOSE_FILE)
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _flatten(node: dict, prefix: str = "") -> dict:
    """Nested dict -> dotted keys; lists and empty dicts become their canonical string."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (dict, list)):
            out[name] = _canonical(value)
        else:
            out[name] = value
    return out


def _canonical(value) -> str:
    """The string two config values are compared by (1 and 1.0 are equal; missing = null)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Number):
        return repr(float(value))
    return str(value)


def _read_config(run_dir: Path) -> dict:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return _flatten(OmegaConf.to_container(cfg, resolve=False) or {})


def _read_overrides(run_dir: Path) -> str:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    overrides = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or []
    return " ".join(str(o) for o in overrides)


def _summary_metrics(summary: dict) -> dict:
    """The numbers of a summary.json as flat columns (``accuracy/<model>/<benchmark>`` etc.)."""
    metrics = {}
    for key, value in (summary.get("selection") or {}).items():
        metrics[f"selection/{key}"] = value
    for key in ("tuned_tokens", "objective"):
        if summary.get(key) is not None:
            metrics[f"summary/{key}"] = summary[key]
    drift = summary.get("drift") or {}
    for key, value in (drift.get("final") or {}).items():
        if isinstance(value, numbers.Number):
            metrics[f"drift/{key}"] = value
    if drift:
        metrics["drift/beyond_limit"] = len(drift.get("exceeded") or [])
    wall = summary.get("wall_s") or {}
    for stage, secs in wall.items():
        metrics[f"wall_s/{stage}"] = secs
    if wall:
        metrics["wall_s/total"] = float(sum(v for v in wall.values() if v is not None))
    results = summary.get("results") or []
    for row in results:
        metrics.update(_fields(row, f"{row['model']}/{row['benchmark']}"))
    if not results and isinstance(summary.get("eval"), dict):  # older summaries: accuracies only
        for model, accs in summary["eval"].items():
            for bench, acc in (accs or {}).items() if isinstance(accs, dict) else []:
                if isinstance(acc, numbers.Number):
                    metrics[f"accuracy/{model}/{bench}"] = acc
    comparisons = summary.get("comparisons") or []
    has_tuned = any(row.get("model") == TUNED for row in comparisons)
    for row in comparisons:
        metrics.update(_fields(row, f"{row['model']}-vs-{row['baseline']}/{row['benchmark']}"))
        if not has_tuned and row.get("model") == summary.get("method"):
            # an inference-time method (contrastive decoding) is evaluated in place of `tuned`
            metrics.update(_fields(row, f"{TUNED}-vs-{row['baseline']}/{row['benchmark']}"))
            for r in results:
                if r["model"] == row["model"] and r["benchmark"] == row["benchmark"]:
                    metrics.update(_fields(r, f"{TUNED}/{r['benchmark']}"))
    return metrics


def _fields(row: dict, tag: str) -> dict:
    out = {}
    for key, value in row.items():
        if key in ("model", "baseline", "benchmark"):
            continue
        if key == "ci95" and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"ci95_lo/{tag}"], out[f"ci95_hi/{tag}"] = value
        elif key.startswith("ci95_") and isinstance(value, (list, tuple)) and len(value) == 2:  # ci95_flexible, ci95_format_share
            out[f"{key}_lo/{tag}"], out[f"{key}_hi/{tag}"] = value
        elif not isinstance(value, (list, dict)):
            out[f"{key}/{tag}"] = value
    return out


def load_run(run_dir: str | Path) -> dict:
    """One run as a flat dict: run_dir, status, error, overrides, config keys, summary metrics.

    status is the summary's ("finished" / "failed"), "unfinished" without summary.json, or
    "unreadable" when a file of the run cannot be parsed (the error says which)."""
    run_dir = Path(run_dir)
    meta = {"run_dir": str(run_dir), "status": "unfinished", "error": None, "overrides": ""}
    config, metrics = {}, {}
    try:
        meta["overrides"] = _read_overrides(run_dir)
        config = _read_config(run_dir)
    except Exception as exc:  # noqa: BLE001 -- a truncated or hand-edited copy must still be listed
        meta.update(status="unreadable", error=_one_line(".hydra", exc))
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and meta["status"] != "unreadable":
        try:
            summary = json.loads(summary_path.read_text())
            meta["status"] = summary.get("status", "finished")
            meta["error"] = summary.get("error")
            metrics = _summary_metrics(summary)
        except Exception as exc:  # noqa: BLE001 -- bad JSON or a summary of another schema
            meta.update(status="unreadable", error=_one_line("summary.json", exc))
    config = effective_selection(config, summary if metrics else None)
    clash = set(META_COLUMNS) | set(metrics)
    config = {(f"config.{k}" if k in clash else k): v for k, v in config.items()}
    return {**meta, **config, **metrics}


SELECTION_KEYS_BEFORE = {"sampling.beta": "selection.beta", "sampling.alpha": "selection.alpha",
                         "sampling.first_step": "selection.first_step"}
"""Where a run made before step selection had one home kept these keys."""


def effective_selection(config: dict, summary: dict | None) -> dict:
    """The run's config with the selection it really used: an older run's ``sampling.beta`` /
    ``alpha`` / ``first_step`` under their ``selection.*`` names, and ``selection.beta`` /
    ``selection.alpha`` set to the summary's effective values (an old ``method=no_selection`` run
    configured at 0.4 ran at 0; ``alpha: 0`` ran at the cache's ``alpha_min``)."""
    config = {SELECTION_KEYS_BEFORE.get(k, k): v for k, v in config.items()}
    selection = (summary or {}).get("selection") or {}
    for key in ("beta", "alpha"):
        value = selection.get(key, (summary or {}).get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            config[f"selection.{key}"] = value
    return config


def _one_line(where: str, exc: Exception) -> str:
    return f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"


def load_runs(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per run found at or below ``paths`` (a multirun dir, run dirs, or a parent of both).

    Columns: ``run_dir``, ``status``, ``error``, ``overrides``, then the flattened config keys
    (dotted, e.g. ``selection.beta``, the effective value the run used; lists as their JSON string; interpolations such as
    ``${hydra:runtime.output_dir}`` kept as text), then the summary metrics, whose names all
    contain ``/``: ``accuracy/<model>/<benchmark>``, ``ci95_lo/...``, ``ci95_hi/...``,
    ``diff/tuned-vs-base/<benchmark>`` (and the other comparison fields),
    ``selection/<field>``, ``summary/tuned_tokens``, ``wall_s/<stage>``, ``wall_s/total``,
    ``drift/<figure>`` and ``drift/beyond_limit`` (runs with the drift guard on).
    Raises :class:`ReportInputError` for a path that does not exist or holds no run."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen, rows = set(), []
    for path in paths:
        for run_dir in find_runs(path):
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                rows.append(load_run(run_dir))
    if not rows:
        raise ReportInputError("no path given")
    return pd.DataFrame(rows)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).absolute().relative_to(root)) or "."
    except ValueError:
        return path


def _eval_run(run_dir: Path, model: str, bench: str, force: bool = False, published_tolerance: bool = False) -> dict | None:
    """One model's per-problem rows and settings on ``bench`` from ``run_dir/eval``, or None.

    Rows written before the flexible score existed are re-scored from their stored text
    (:func:`lightreasoner.eval.scoring.rescore_rows`; ``force``: every row, under
    ``published_tolerance`` or not), so their strict verdicts use the current numeric rule too."""
    rows_path = record_path(run_dir / "eval" / model, bench)  # {bench}.jsonl, or .jsonl.gz (committed records)
    settings_path = run_dir / "eval" / model / f"{bench}.settings.json"
    if not rows_path.is_file() or not settings_path.is_file():
        return None
    settings = json.loads(settings_path.read_text())
    stored = list(read_rows(rows_path).values())
    rows, _ = rescore_rows(stored, answer_type_of(settings.get("benchmark") or bench),
                           published_tolerance=published_tolerance, force=force)
    changed = sum(bool(a.get("correct")) != bool(b.get("correct")) for a, b in zip(stored, rows))
    return {"model": f"{run_dir.name}/{model}", "settings": settings, "rows": rows, "verdicts_changed": changed}
