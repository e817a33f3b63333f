"""The pair diagnostic's report as text and metrics (``diagnose.json`` of ``python -m
lightreasoner.run.diagnose``): the flat ``diagnose/...`` keys a logger records
(:func:`diagnose_metrics`), the scope and per-class rows (:func:`table_rows`), the summary lines
(:func:`summary_lines`), ``diagnose.md`` (:func:`markdown`) and the printed tables
(:func:`print_report`). Imports no torch."""

from __future__ import annotations

import sys
from collections.abc import Mapping


# ----------------------------------------------------------------------------- metrics (a W&B run summary)
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interval(out: dict, key: str, ci) -> None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(v) for v in ci):
        out[f"{key}_lo"], out[f"{key}_hi"] = float(ci[0]), float(ci[1])


SCOPE_METRICS = ("positions", "flips", "flip_rate", "contrast_right", "expert_right", "expert_is_reference",
                 "contrast_is_reference", "advantage", "sign_test_p", "kl_mean")
"""The fields of a scope block (:func:`_block`) logged as ``diagnose/<scope>/<field>``."""


def diagnose_metrics(report: Mapping) -> dict:
    """The report's figures as flat ``diagnose/...`` keys (a W&B run summary): numbers only, and
    a figure the report does not hold (no flips, no trace cache, no answer level) is left out.

    - ``diagnose/references``, ``reference_tokens``, ``scored_positions``, ``unscored_positions``,
      ``kept_positions``, ``kept_fraction``;
    - per scope (``all``: every scored position, ``kept``: the selected ones)
      ``diagnose/<scope>/`` + :data:`SCOPE_METRICS` (``flip_rate`` = flips / positions, the flip
      share), ``ci95_lo``/``ci95_hi`` (the advantage's Wilson interval),
      ``ci95_bootstrap_by_reference_lo``/``_hi`` (its bootstrap over references) and
      ``kl_p10``, ``kl_p25``, ``kl_p50``, ``kl_p75``, ``kl_p90``;
    - ``diagnose/on_policy/label_argmax_differs`` (the on-policy flip rate), ``.../traces``,
      ``.../kept_steps``, when the trace cache exists;
    - ``diagnose/answer_level/n``, ``expert_accuracy``, ``contrastive_decoding_accuracy``,
      ``diff`` (contrastive decoding - expert), ``diff_ci95_lo``/``_hi`` (paired bootstrap),
      ``mcnemar_p``, when the answer level ran;
    - ``diagnose/wall_s/total`` and ``diagnose/wall_s/<stage>`` (prepare, load,
      teacher_forcing, statistics, answer_level)."""
    if not isinstance(report, Mapping) or not isinstance(report.get("kept"), Mapping):
        raise TypeError("diagnose_metrics: expected a pair diagnostic report (diagnose.json: a mapping with 'kept' and 'all')")
    out: dict = {}
    for key in ("references", "reference_tokens", "scored_positions", "unscored_positions", "kept_positions", "kept_fraction"):
        if _number(report.get(key)):
            out[f"diagnose/{key}"] = report[key]
    for scope in ("all", "kept"):
        b = report.get(scope) or {}
        for key in SCOPE_METRICS:
            if _number(b.get(key)):
                out[f"diagnose/{scope}/{key}"] = b[key]
        _interval(out, f"diagnose/{scope}/ci95", b.get("ci95"))
        _interval(out, f"diagnose/{scope}/ci95_bootstrap_by_reference", b.get("ci95_bootstrap_by_reference"))
        for q, v in (b.get("kl_quantiles") or {}).items():
            if _number(v):
                out[f"diagnose/{scope}/kl_p{round(100 * float(q)):02d}"] = v
    op = report.get("on_policy") or {}
    if op.get("found"):
        for key in ("label_argmax_differs", "traces", "kept_steps"):
            if _number(op.get(key)):
                out[f"diagnose/on_policy/{key}"] = op[key]
    a = report.get("answer_level") or {}
    if "paired" in a:
        p = a["paired"]
        out["diagnose/answer_level/n"] = a["n"]
        for name in ("expert", "contrastive_decoding"):
            out[f"diagnose/answer_level/{name}_accuracy"] = a[name]["accuracy"]
        out["diagnose/answer_level/diff"] = p["diff"]
        _interval(out, "diagnose/answer_level/diff_ci95", p.get("ci95"))
        out["diagnose/answer_level/mcnemar_p"] = p["mcnemar_p"]
    for key, v in (report.get("timing") or {}).items():
        if _number(v):
            out["diagnose/wall_s/total" if key == "wall_s" else f"diagnose/wall_s/{key.removesuffix('_s')}"] = v
    return out


# ----------------------------------------------------------------------------- tables
# ----------------------------------------------------------------------------- tables
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _adv(b: Mapping) -> str:
    if b.get("advantage") is None:
        return "-"
    lo, hi = b["ci95"]
    return f"{100 * b['advantage']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _boot(b: Mapping) -> str:
    ci = b.get("ci95_bootstrap_by_reference")
    return "-" if not ci else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


SCOPE_HEADER = ("scope", "positions", "KL p50 / p90", "expert = ref", "contrast = ref", "flips", "contrast right",
                "expert right", "advantage [Wilson 95%]", "bootstrap by ref")


def table_rows(report: Mapping) -> tuple[list[tuple], list[tuple]]:
    """The scope rows (all, kept) and the per-class rows (kept and all)."""
    scope = []
    for name in ("all", "kept"):
        b = report[name]
        q = b.get("kl_quantiles") or {}
        kl = f"{q['0.5']:.3f} / {q['0.9']:.3f}" if q else "-"
        scope.append((name, str(b["positions"]), kl, _pct(b["expert_is_reference"]), _pct(b["contrast_is_reference"]),
                      str(b["flips"]), str(b["contrast_right"]), str(b["expert_right"]), _adv(b), _boot(b)))
    classes = []
    for name in ("kept", "all"):
        for cls, c in report[name]["by_class"].items():
            classes.append((name, cls, str(c["positions"]), str(c["flips"]), str(c["contrast_right"]), str(c["expert_right"]), _adv(c)))
    return scope, classes


CLASS_HEADER = ("scope", "class", "positions", "flips", "contrast right", "expert right", "advantage [Wilson 95%]")


def summary_lines(report: Mapping) -> list[str]:
    sel = report["selection"]
    m, t = report["machine"], report["timing"]
    lines = [
        f"pair {report['pair']} ({report['expert']} / {report['amateur']}), {report['references']} {report['dataset']} "
        f"{report['split']} references, {report['reference_tokens']} tokens; selection rule={sel['rule']} beta={sel['beta']} "
        f"alpha={sel['alpha']} target={sel['target']} tau={sel['tau']} gamma={sel.get('gamma', 1.0)}",
        f"kept fraction {_pct(report['kept_fraction'])} ({report['kept_positions']} of {report['scored_positions']} scored positions"
        + (f"; {report['unscored_positions']} unscored" if report["unscored_positions"] else "") + ")",
    ]
    op = report.get("on_policy") or {}
    if op.get("found"):
        lines.append(f"on-policy flip rate (trace cache, {op['traces']} traces, {op['kept_steps']} kept steps): "
                     f"label_argmax_differs = {_pct(op['label_argmax_differs'])}")
    else:
        lines.append("on-policy flip rate: no trace cache for this config")
    a = report.get("answer_level")
    if a and "skipped" in a:
        lines.append(f"answer level: skipped ({a['skipped']})")
    elif a:
        p = a["paired"]
        lines.append(f"answer level ({a['n']} problems, greedy, {a['max_new_tokens']} tokens): expert {_pct(a['expert']['accuracy'])}, "
                     f"contrastive decoding (alpha={a['alpha']}) {_pct(a['contrastive_decoding']['accuracy'])}; "
                     f"difference {100 * p['diff']:+.1f} pp [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}] "
                     f"(paired bootstrap; only expert {p['only_baseline_correct']}, only contrastive {p['only_model_correct']}, "
                     f"McNemar p {p['mcnemar_p']:.3g})")
    lines.append(f"wall {t['wall_s']} s (teacher forcing {t['teacher_forcing_s']} s"
                 + (f", answer level {t['answer_level_s']} s" if "answer_level_s" in t else "") + f"); {m['cpu']}, "
                 f"{m['cores']} cores, {m['torch_threads']} torch threads; dtype {report['dtype']['expert']}/{report['dtype']['amateur']}")
    return lines


def markdown(report: Mapping) -> str:
    scope, classes = table_rows(report)

    def md(header, rows):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])

    return (f"## Pair diagnostic: {report['pair']}\n\n" + "\n".join(f"- {ln}" for ln in summary_lines(report)) + "\n\n"
            + md(SCOPE_HEADER, scope) + "\n\nBy the reference token's class:\n\n" + md(CLASS_HEADER, classes) + "\n")


def print_report(report: Mapping) -> None:
    from rich.console import Console

    from lightreasoner.eval.tables import rich_table

    console = Console(width=None if sys.stdout.isatty() else 200)
    scope, classes = table_rows(report)
    for title, header, rows in ((f"pair diagnostic: {report['pair']}", SCOPE_HEADER, scope), ("by the reference token's class", CLASS_HEADER, classes)):
        console.print(rich_table(title, header, rows))
    for line in summary_lines(report):
        console.print(line, highlight=False)
    console.print(f"written: {report['out_dir']}/diagnose.json, diagnose.md", highlight=False)
