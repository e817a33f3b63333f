"""The evaluation report as tables: Markdown (``report.md``), rich (the terminal), and a
Lightning logger (W&B tables, or metrics for the others). No torch: the sweep report uses it too."""

from __future__ import annotations

import json
from pathlib import Path

from lightreasoner.files import atomic_write_json, atomic_write_text


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def results_table(report: dict) -> tuple[list[str], list[list[str]]]:
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


def comparisons_table(report: dict) -> tuple[list[str], list[list[str]]]:
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
    parts.append(_markdown_table(*results_table(report)))
    if report["comparisons"]:
        parts += ["", f"## Paired comparisons against `{report['baseline']}`", ""]
        parts.append(_markdown_table(*comparisons_table(report)))
    parts += ["", "## Prompt", "", f"System message: `{report['prompt']['system']}`", ""]
    for name, t in report["prompt"]["templates"].items():
        parts += [f"Template of `{name}` (fingerprint `{t['fingerprint']}`):", "", "```", t["example"], "```", ""]
    parts += ["## Generation", "", "```json", json.dumps(report["generation"], indent=2), "```", "", "## Models", ""]
    parts += ["```json", json.dumps(report["models"], indent=2, default=str), "```", ""]
    return "\n".join(parts)


def write_report(report: dict, out_dir: Path) -> None:
    """Save the report as ``report.json`` and ``report.md`` in ``out_dir`` (atomically)."""
    atomic_write_json(Path(out_dir) / "report.json", report, sort_keys=False)
    atomic_write_text(Path(out_dir) / "report.md", report_markdown(report))


def print_report(report: dict) -> None:
    """Print the results (and comparisons) as tables (rich; plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that no column is truncated
        console = Console(width=160)
    for title, (cols, rows) in (("evaluation", results_table(report)), ("paired comparisons", comparisons_table(report))):
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
        cols, rows = results_table(report)
        logger.log_table(key="eval/results", columns=cols, data=rows)
        if report["comparisons"]:
            ccols, crows = comparisons_table(report)
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
