"""A run's ``summary.json`` (:func:`write_summary`): what it produced, the method's name, the
paper's efficiency accounting (:func:`efficiency`); printed as a table (:func:`print_summary`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from lightreasoner.core.files import atomic_write_json
from lightreasoner.data.records import RunState

__all__ = ["write_summary", "efficiency", "print_summary"]


def write_summary(cfg: DictConfig, state: RunState, error: BaseException | None = None) -> dict:
    """``summary.json`` of the run (atomically); printed as a table when the run finished."""
    report = state.report or {}
    summary = {
        "status": "failed" if error is not None else "finished",
        "error": None if error is None else f"{type(error).__name__}: {error}".splitlines()[0][:500],
        "stage": cfg.stage,
        "about": cfg.get("about"),
        "method": _evaluated_method(cfg) or (state.method.name if state.method is not None else _method_name(cfg)),
        "seed": int(cfg.seed),
        "model_pair": cfg.model_pair.name,
        "dataset": cfg.dataset.name,
        "beta": state.selection.get("beta", cfg.selection.beta),  # the effective values the selection used
        "alpha": state.selection.get("alpha", cfg.selection.alpha),
        "sample_key": state.sample_key,
        "selection": state.selection,
        "adapter_dir": str(state.adapter_dir) if state.adapter_dir else None,
        "merged_dir": str(state.merged_dir) if state.merged_dir else None,
        "tuned_tokens": state.tuned_tokens,
        "drift": state.drift or None,
        "efficiency": efficiency(state),
        "wall_s": state.wall_s,
        "cpu_s": state.cpu_s,
        "eval": report.get("summary"),
        "results": report.get("results"),
        "comparisons": report.get("comparisons"),
        "objective": state.objective,
        **({"rounds": state.rounds} if state.rounds else {}),
    }
    state.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state.out_dir / "summary.json", summary, sort_keys=False)
    if error is None:
        print_summary(summary)
    return summary


def _evaluated_method(cfg: DictConfig) -> str | None:
    """``stage=evaluate tuned=DIR``: the method that trained DIR, as its run recorded it (an SFT
    adapter evaluated alone is labelled ``sft``, whatever ``method`` says), else None."""
    tuned = cfg.get("tuned")
    if cfg.stage != "evaluate" or tuned is None:
        return None
    meta = Path(os.path.expanduser(str(tuned))) / "lightreasoner.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if info.get("method"):
        return str(info["method"])
    selection = info.get("selection") or {}
    return "sft" if "solutions_accepted" in selection else None  # adapters saved before the method was recorded


def _method_name(cfg: DictConfig) -> str:
    """The method's name when validation failed before the method was built."""
    return str((cfg.get("method") or {}).get("name", "lightreasoner"))


def efficiency(state: RunState) -> dict:
    """The paper's efficiency accounting for this run: problems, tokens, time.

    ``sampling`` is what making the training data cost as recorded when it was made (a run
    that read it from the cache reports that cost too, marked ``cached``: a warm run is not
    free); ``stages`` are this run's own wall and CPU seconds."""
    cost = state.sampling_cost or {}
    return {
        "training_problems": state.training_problems,
        "optimisation": state.optimisation,
        "problems_sampled": cost.get("problems"),
        "tokens_generated": cost.get("generated_tokens"),
        "tuned_tokens": state.tuned_tokens,
        "sampling": {"cached": cost.get("cached"), "wall_s": cost.get("wall_s"), "cpu_s": cost.get("cpu_s")},
        "stages": {k: {"wall_s": state.wall_s[k], "cpu_s": state.cpu_s.get(k)} for k in state.wall_s},
    }


def print_summary(summary: dict) -> None:
    table = Table(title="lightreasoner run", show_header=False)
    sel = summary.get("selection") or {}
    rows = [
        ("method", summary.get("method")),
        ("pair", summary["model_pair"]),
        ("dataset", summary["dataset"]),
        ("beta / alpha", f"{summary['beta']} / {summary['alpha']}"),
    ]
    for k in ("problems", "steps", "kept_steps", "kept_step_fraction", "kept_steps_per_trace", "mean_kl_kept"):
        if k in sel:
            rows.append((k, f"{sel[k]:.4g}" if isinstance(sel[k], float) else str(sel[k])))
    eff = summary.get("efficiency") or {}
    if eff.get("problems_sampled") is not None:
        cached = " (cached)" if (eff.get("sampling") or {}).get("cached") else ""
        rows.append(("problems sampled / tokens generated", f"{eff['problems_sampled']} / {eff['tokens_generated']}{cached}"))
        secs = lambda x: "?" if x is None else f"{x:.1f} s"  # noqa: E731  (a cache made before CPU time was recorded)
        rows.append(("sampling cost (wall / cpu)", f"{secs(eff['sampling']['wall_s'])} / {secs(eff['sampling']['cpu_s'])}{cached}"))
    if summary.get("tuned_tokens") is not None:
        rows.append(("tuned tokens (kept steps trained)", str(summary["tuned_tokens"])))
    drift = summary.get("drift") or {}
    if drift:
        figures = ", ".join(f"{k} {v:.4g}" for k, v in (drift.get("final") or {}).items() if isinstance(v, (int, float)))
        rows.append((f"drift (update {drift.get('kept_step')})", figures))
        beyond = "; ".join(f"{e['figure']} {e['value']:.4g} > {e['limit']:.4g}" for e in drift.get("exceeded") or [])
        rows.append(("drift limits", f"BEYOND LIMIT: {beyond}" if beyond else ("within limits" if drift.get("limits") else "none set")))
    if summary.get("adapter_dir"):
        rows.append(("adapter", summary["adapter_dir"]))
    if summary.get("merged_dir"):
        rows.append(("merged", summary["merged_dir"]))
    for stage, secs in summary["wall_s"].items():
        rows.append((f"wall {stage}", f"{secs:.1f} s"))
    cov = sel.get("coverage")
    if cov:  # a cross-tokenizer pair (model_pair.alignment=string)
        mass = cov.get("aligned_mass_kept")
        rows.append(("coverage (steps scored / aligned mass at kept)",
                     f"{cov['steps_scored_fraction']:.1%} / {'-' if mass is None else f'{mass:.1%}'}"))
    for rnd in summary.get("rounds") or []:
        kept = (rnd.get("selection") or {}).get("kept_step_fraction")
        acc = rnd.get("objective")
        rows.append((f"round {rnd['round']} (kept fraction / tuned accuracy)",
                     f"{'-' if kept is None else f'{kept:.4g}'} / {'-' if acc is None else f'{acc:.4f}'}"))
    if summary.get("objective") is not None:
        rows.append(("objective (mean accuracy: tuned, else the first model)", f"{summary['objective']:.4f}"))
    for k, v in rows:
        table.add_row(k, str(v))
    console = Console()
    console.print(table)
    if summary.get("about"):  # what world the run is in (the demo presets label theirs)
        console.print(f"[bold]about this run:[/bold] {summary['about']}", highlight=False)
