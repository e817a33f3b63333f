"""The sweep report: one table and a few plots for a Hydra multirun.

    python -m lightreasoner.analysis.report multirun/2025-01-01/12-00-00            # -> .../report/
    python -m lightreasoner.analysis.report run_a run_b --out /tmp/report
    python -m lightreasoner.analysis.report --efficiency lr_run sft_run       # the paper's efficiency table
    python -m lightreasoner.analysis.report --head-to-head lr_run sft_run     # run_b's tuned vs run_a's, paired
    python -m lightreasoner.analysis.report --format-audit run [run ...]      # strict vs flexible, format rates, format share of each gain

Reads only what a run leaves on disk, so it works on a directory copied back from a cluster:
``.hydra/config.yaml`` (the composed config, interpolations left unresolved),
``.hydra/overrides.yaml`` and, once the run ended, ``summary.json``. Any directory holding
``.hydra/config.yaml`` below the given paths is a run; job directory names are never parsed.
Pair diagnostics (``diagnose.json`` of ``python -m lightreasoner.run.diagnose``, one directory per
pair) below the paths add a "Pair diagnostic" table (``diagnose.csv``); a directory of
diagnostics alone gives a report of that table.

The config keys whose values differ between runs (bookkeeping such as ``hydra.*``, ``paths.*``
and output directories aside) define the settings; the seeds of one setting are aggregated
into one row. Written to the output directory: ``report.md``, ``report.csv`` (one row per
setting), ``runs.csv`` (one row per run, failed and unfinished ones included) and PNG plots.

This module is the command line and :func:`write_report`; the notebook API lives beside it in
``lightreasoner.analysis``: ``discovery`` (:func:`load_runs`, :func:`find_runs`,
:func:`find_diagnostics`), ``aggregate`` (:func:`varying_keys`, :func:`aggregate`), ``tables``
(:func:`format_table`, :func:`efficiency_table`), ``plots`` (the ``plot_*`` functions and
:func:`make_plots`: matplotlib Figures), ``head_to_head``, ``audit`` (:func:`format_audit`) and
``diagnose_table`` (:func:`load_diagnostics`, :func:`diagnose_table`, :func:`format_diagnose_table`).
No torch: the report runs on any laptop with pandas and matplotlib.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib import pyplot as plt

from lightreasoner.analysis.aggregate import aggregate, varying_keys
from lightreasoner.analysis.audit import AUDIT_NOTE, format_audit
from lightreasoner.analysis.diagnose_table import DIAGNOSE_NOTE, diagnose_table, format_diagnose_table, load_diagnostics
from lightreasoner.analysis.discovery import (BASE, DIAGNOSE_FILE, TUNED, ReportInputError, _relative, _run_dirs,
                                              find_diagnostics, load_runs)
from lightreasoner.analysis.head_to_head import head_to_head
from lightreasoner.analysis.plots import make_plots
from lightreasoner.analysis.tables import (FORMAT_NOTE, INTERVALS_NOTE, _counts, _markdown, efficiency_table,
                                           format_table, not_finished)
from lightreasoner.core.files import atomic_write_bytes, atomic_write_text


def write_report(paths: str | Path | Iterable[str | Path], out_dir: str | Path | None = None) -> dict:
    """Load the runs under ``paths``, write report.md, report.csv, runs.csv and the plots; with
    pair diagnostics (``diagnose.json``) under ``paths`` too, their table as a "Pair diagnostic"
    section of report.md and ``diagnose.csv`` (:func:`diagnose_table`). Paths that hold only
    diagnostics give a report of that table alone; a path holding neither is an error.

    ``out_dir`` defaults to ``<common parent of paths>/report`` (``<multirun dir>/report``).
    Returns ``{"out_dir", "files": {name: Path}, "runs", "keys", "table", "display", "diagnostics"}``:
    the :func:`load_runs` frame, the varying keys, the :func:`aggregate` table and its
    :func:`format_table` strings (``None``, ``[]``, ``None``, ``None`` without a training run),
    and the :func:`diagnose_table` (``None`` without a diagnostic)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ReportInputError("no path given")
    run_paths, diagnostics = [], []
    for path in paths:
        has_runs, found = bool(_run_dirs(path)), find_diagnostics(path)
        if not has_runs and not found:
            raise ReportInputError(f"no Hydra run (.hydra/config.yaml) or pair diagnostic ({DIAGNOSE_FILE}) under {path}")
        run_paths += [path] if has_runs else []
        diagnostics += [f for f in found if f.resolve() not in {d.resolve() for d in diagnostics}]
    root = Path(os.path.commonpath([p.absolute() for p in paths]))
    if root.is_file():
        root = root.parent
    out_dir = Path(out_dir) if out_dir is not None else root / "report"
    diag = diagnose_table(load_diagnostics(diagnostics, root)) if diagnostics else None
    if not run_paths:
        return _write_diagnostics_only(diag, root, out_dir)
    runs = load_runs(run_paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = varying_keys(runs)
    table = aggregate(runs, keys)
    display = format_table(table)
    files = {"report.csv": out_dir / "report.csv", "runs.csv": out_dir / "runs.csv"}
    atomic_write_text(files["report.csv"], table.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(files["runs.csv"], runs.to_csv(index=False))
    for stem, fig in make_plots(runs, table, keys).items():
        files[f"{stem}.png"] = out_dir / f"{stem}.png"
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(files[f"{stem}.png"], png.getvalue())
    failed = not_finished(runs).assign(run_dir=lambda f: f["run_dir"].map(lambda p: _relative(p, root)))
    md = [
        "# Sweep report",
        "",
        f"{_counts(runs)} under `{root}`. "
        + (f"Varying: {', '.join(f'`{k}`' for k in keys)}; " if keys else "No setting varies; ")
        + "seeds aggregated per row.",
        "",
        INTERVALS_NOTE,
        "",
        *([FORMAT_NOTE, ""] if any(c.endswith("format share pp") for c in display.columns) else []),
        _markdown(display),
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in files if name.endswith(".png")],
        *([] if any(n.endswith(".png") for n in files) else ["No finished run with a tuned-vs-base comparison."]),
        "",
        "## Failed or unfinished runs",
        "",
        _markdown(failed.fillna("")) if len(failed) else "None.",
        "",
    ]
    if diag is not None:
        md += _diagnostics_section(diag, files, out_dir)
    files["report.md"] = out_dir / "report.md"
    atomic_write_text(files["report.md"], "\n".join(md))
    return {"out_dir": out_dir, "files": files, "runs": runs, "keys": keys, "table": table, "display": display,
            "diagnostics": diag}


def _diagnostics_section(diag: pd.DataFrame, files: dict, out_dir: Path) -> list[str]:
    """Write ``diagnose.csv`` (the :func:`diagnose_table`) and return the markdown section."""
    files["diagnose.csv"] = out_dir / "diagnose.csv"
    atomic_write_text(files["diagnose.csv"], diag.to_csv(index=False, float_format="%.10g"))
    return ["## Pair diagnostic", "", DIAGNOSE_NOTE, "", _markdown(format_diagnose_table(diag)), ""]


def _write_diagnostics_only(diag: pd.DataFrame, root: Path, out_dir: Path) -> dict:
    """The report of paths that hold pair diagnostics and no training run: their table only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    md = ["# Sweep report", "", f"{len(diag)} pair diagnostic{'s' if len(diag) != 1 else ''} and no training run under `{root}`.", ""]
    md += _diagnostics_section(diag, files, out_dir)
    files["report.md"] = out_dir / "report.md"
    atomic_write_text(files["report.md"], "\n".join(md))
    return {"out_dir": out_dir, "files": files, "runs": None, "keys": [], "table": None, "display": None,
            "diagnostics": diag}


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table, write the report files; bad input -> ``error: ...``, exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m lightreasoner.analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="a Hydra multirun directory, run directories, or a parent of them "
                                                  "(pair diagnostics' diagnose.json below them are read too)")
    parser.add_argument("--out", help="output directory (default: <multirun dir>/report)")
    parser.add_argument("--efficiency", action="store_true",
                        help="print the paper's efficiency table of the given runs (e.g. a LightReasoner run and an SFT run)")
    parser.add_argument("--head-to-head", action="store_true",
                        help="two run directories: the second's tuned model against the first's, paired on the same problems")
    parser.add_argument("--models", nargs=2, metavar=("A", "B"), default=[TUNED, TUNED],
                        help="with --head-to-head: the models compared, A of the first run and B of the second "
                             "(default: tuned tuned; e.g. base tuned with one run given twice)")
    parser.add_argument("--format-audit", action="store_true",
                        help="run directories: every model's strict vs flexible score, the format rates, and the format "
                             "share of each model's gain over --baseline (re-scored from the per-problem records)")
    parser.add_argument("--baseline", default=BASE, help="with --format-audit: the model gains are measured against (default: base)")
    parser.add_argument("--published-tolerance", action="store_true",
                        help="with --format-audit: compare numbers within a relative 1e-4, integers too (the published quirk)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    if args.format_audit:
        try:
            scores, gains = format_audit(args.paths, args.baseline, args.published_tolerance)
        except ReportInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(AUDIT_NOTE + "\n")
        print(_markdown(scores.astype(object)))
        print()
        print(_markdown(gains.astype(object)) if len(gains) else f"No model to compare with '{args.baseline}'.")
        return 0
    if args.head_to_head:
        try:
            if len(args.paths) != 2:
                raise ReportInputError(f"--head-to-head: expected 2 run directories, got {len(args.paths)}")
            print(_markdown(head_to_head(*args.paths, *args.models)))
        except ReportInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.efficiency:
        try:
            table = efficiency_table(args.paths)
            print(_markdown(table.astype(object).where(table.notna(), "-")))
        except ReportInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        report = write_report(args.paths, args.out)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs, keys = report["runs"], report["keys"]
    if runs is not None:
        print(f"{_counts(runs)}; varying: {', '.join(keys) if keys else 'nothing'} (seeds aggregated)")
        print(_markdown(report["display"]))
        failed = not_finished(runs)
        if len(failed):
            print("\nFailed or unfinished runs:")
            print(_markdown(failed.fillna("")))
    if report["diagnostics"] is not None:
        print(("" if runs is None else "\n") + f"Pair diagnostic ({len(report['diagnostics'])} diagnose.json):")
        print(_markdown(format_diagnose_table(report["diagnostics"])))
    print(f"\nwrote {', '.join(report['files'])} to {report['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
