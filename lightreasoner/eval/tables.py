"""The evaluation report as tables: Markdown (``report.md``), rich (the terminal), and a
Lightning logger (W&B tables, or metrics for the others). No torch: the sweep report uses it too."""

from __future__ import annotations

import json
from pathlib import Path

from lightreasoner.core.files import atomic_write_json, atomic_write_text


FLEXIBLE_RESULT_KEYS = ("accuracy_flexible", "no_answer_frac", "hedging_frac", "off_format_frac")
"""Per-result figures of the flexible score and the format rates (metrics and W&B summary keys)."""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pp_ci(ci) -> str:
    return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}"


def results_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """One row per model and benchmark: the strict accuracy (``accuracy %``, the evaluation's
    score) and, when the rows carry it, the flexible one and the format rates (no strict answer,
    more than one final answer, an answer outside a well-formed box; ``-`` for older reports)."""
    cols = ["model", "benchmark", "n", "accuracy %", "95% CI", "flexible %", "no answer %", "cut off %",
            "hedging %", "off-format %", "tokens/s", "gen s", "wall s"]
    rows = []
    for r in report["results"]:
        tps = r.get("tokens_per_s")
        rows.append([
            r["model"], r["benchmark"], str(r["n"]), _pct(r["accuracy"]),
            f"{_pct(r['ci95'][0])}–{_pct(r['ci95'][1])}", _pct(r.get("accuracy_flexible")), _pct(r.get("no_answer_frac")),
            _pct(r["cut_off_frac"]), _pct(r.get("hedging_frac")), _pct(r.get("off_format_frac")),
            "-" if tps is None else f"{tps:.1f}", f"{r['gen_s']:.1f}", f"{r['wall_s']:.1f}",
        ])
    return cols, rows


def comparisons_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """One row per paired comparison: the strict difference with its interval and McNemar p,
    the flexible difference, and the format share of the difference (strict − flexible, with its
    paired-bootstrap interval; ``-`` when the rows carry no flexible score)."""
    cols = ["benchmark", "model", "vs", "n", "diff (pp)", "95% CI (bootstrap)", "McNemar p",
            "flexible diff (pp)", "flexible 95% CI", "format share (pp)", "format share 95% CI"]
    rows = []
    for c in report["comparisons"]:
        if "refused" in c:
            rows.append([c["benchmark"], c["model"], c["baseline"], "-", "refused", c["refused"][:120], "-", "-", "-", "-", "-"])
            continue
        flex = "diff_flexible" in c
        rows.append([
            c["benchmark"], c["model"], c["baseline"], str(c["n"]), f"{100 * c['diff']:+.1f}",
            _pp_ci(c["ci95"]), f"{c['mcnemar_p']:.3g}",
            f"{100 * c['diff_flexible']:+.1f}" if flex else "-", _pp_ci(c["ci95_flexible"]) if flex else "-",
            f"{100 * c['format_share']:+.1f}" if flex else "-", _pp_ci(c["ci95_format_share"]) if flex else "-",
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

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that no column is truncated
        console = Console(width=160)
    for title, (cols, rows) in (("evaluation", results_table(report)), ("paired comparisons", comparisons_table(report))):
        if rows:
            console.print(rich_table(title, cols, rows))


def rich_table(title: str, header, rows):
    """A rich ``Table`` with ``header`` columns and ``rows`` of cell strings."""
    from rich.table import Table

    table = Table(title=title)
    for c in header:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    return table


def log_report(report: dict, logger) -> None:
    """Log the report to a Lightning logger: W&B tables for ``WandbLogger``, else metrics.

    Metrics (other loggers): ``eval/{model}/{benchmark}/accuracy`` (strict) and
    ``.../cut_off_frac``, with the flexible score ``.../accuracy_flexible`` and the rates
    ``.../no_answer_frac``, ``.../hedging_frac``, ``.../off_format_frac`` when present; and
    ``eval/{model}/{benchmark}/diff_vs_{baseline}`` for each paired comparison, with
    ``.../diff_flexible_vs_{baseline}`` and ``.../format_share_vs_{baseline}``.
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
        for key in FLEXIBLE_RESULT_KEYS:
            if r.get(key) is not None:
                metrics[f"eval/{r['model']}/{r['benchmark']}/{key}"] = float(r[key])
    for c in report["comparisons"]:
        if "refused" not in c:
            metrics[f"eval/{c['model']}/{c['benchmark']}/diff_vs_{c['baseline']}"] = float(c["diff"])
            for key in ("diff_flexible", "format_share"):
                if c.get(key) is not None:
                    metrics[f"eval/{c['model']}/{c['benchmark']}/{key}_vs_{c['baseline']}"] = float(c[key])
    logger.log_metrics(metrics)
    if hasattr(logger, "save"):
        logger.save()
