"""Strict and flexible scores, the answer-format rates, the integer comparison, re-scoring of
older records and the format share of a gain (issue 32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _fake_sweep import composed_config, summary, write_run

from lightreasoner.analysis import report
from lightreasoner.analysis.audit import format_audit
from lightreasoner.analysis.head_to_head import head_to_head
from lightreasoner.data.answers import is_equivalent
from lightreasoner.eval import stats
from lightreasoner.eval.scoring import (
    SCORER,
    answer_type_of,
    needs_rescoring,
    rescore_rows,
    score_output,
)
from lightreasoner.training.loggers import summary_metrics

# (model output, answer_type, gold, strict extracted, strict verdict, flexible extracted, flexible verdict,
#  answer format, hedging)
CASES = [
    # boxed
    ("She earns 9 * 2 = 18 dollars.\n\\boxed{18}", "numeric", "18", "18", True, "18", True, "boxed", False),
    ("\\boxed{17}", "numeric", "18", "17", False, "17", False, "boxed", False),
    # unboxed: the strict rule's own fallbacks already read these (the toolkit's rule)
    ("So she earns 18 dollars every day.", "numeric", "18", "18", True, "18", True, "unboxed", False),
    ("The answer is 18.", "numeric", "18", "18", True, "18", True, "unboxed", False),
    # two boxes: the last one counts; two different final answers are hedging, the same one twice is not
    ("First I got \\boxed{16}. Wait, recheck: \\boxed{18}", "numeric", "18", "18", True, "18", True, "boxed", True),
    ("\\boxed{18} and again \\boxed{18}", "numeric", "18", "18", True, "18", True, "boxed", False),
    ("The answer is 18.\n\\boxed{18}", "numeric", "18", "18", True, "18", True, "boxed", False),
    ("The answer is 16.\nSo \\boxed{18}", "numeric", "18", "18", True, "18", True, "boxed", True),
    # truncated at the token budget (the box never closes)
    ("9 * 2 = 18, so the total is \\boxed{1", "numeric", "18", "1", False, "1", False, "unboxed", False),
    ("\\boxed{\\frac{1}{3}", "latex", "\\frac13", "3", False, "\\frac{1}{3}", True, "unboxed", False),
    # trailing units are part of a well-formed answer
    ("\\boxed{18 \\text{ dollars}}", "numeric", "18", "18 \\text{ dollars}", True, "18 \\text{ dollars}", True, "boxed", False),
    ("The answer is 18 dollars per week.", "numeric", "18", "18 dollars per week", True, "18 dollars per week", True, "unboxed", False),
    # malformed box: not a number; flexible takes the last number
    ("The candle is \\boxed{L - 8}", "numeric", "8", "L - 8", False, "8", True, "malformed", False),
    ("I cannot solve this.", "numeric", "18", None, False, None, False, "none", False),
    # integers compare exactly
    ("\\boxed{1201587}", "numeric", "1201565", "1201587", False, "1201587", False, "boxed", False),
    # choice letters
    ("\\boxed{C}", "choice", "C", "C", True, "C", True, "boxed", False),
    ("The answer is (D).", "choice", "D", "D", True, "D", True, "unboxed", False),
    ("The correct option is B", "choice", "B", None, False, "B", True, "none", False),
    ("A cell wall is rigid.", "choice", "A", None, False, None, False, "none", False),  # "A" the article
    ("\\boxed{A} or maybe \\boxed{B}", "choice", "B", "B", True, "B", True, "boxed", True),
    # LaTeX
    ("Thus $x = \\frac{1}{2}$.", "latex", "\\frac12", "2", False, "\\frac{1}{2}", True, "unboxed", False),
    ("So the answer is $\\frac{1}{3}$.", "latex", "\\frac13", "\\frac{1}{3}", True, "\\frac{1}{3}", True, "unboxed", False),
    ("\\boxed{\\frac{1}{4}} although $x = \\frac{1}{3}$", "latex", "\\frac13", "\\frac{1}{4}", False, "\\frac{1}{4}", False, "boxed", False),
    ("\\boxed{}", "latex", "5", "", False, "", False, "malformed", False),
]


@pytest.mark.parametrize("text,answer_type,gold,strict,strict_ok,flex,flex_ok,fmt,hedging", CASES)
def test_strict_and_flexible_verdicts(text, answer_type, gold, strict, strict_ok, flex, flex_ok, fmt, hedging):
    got = score_output(text, gold, answer_type)
    assert (got["extracted"], got["correct"]) == (strict, strict_ok)
    assert (got["flexible"]["extracted"], got["flexible"]["correct"]) == (flex, flex_ok)
    assert got["format"] == {"answer": fmt, "hedging": hedging}
    assert got["flexible"]["scorer"] == SCORER


def test_flexible_is_never_below_strict_and_the_table_covers_both_directions():
    assert all(c[6] >= c[4] for c in CASES)
    assert sum(c[6] and not c[4] for c in CASES) >= 4  # flexible rescues
    assert sum(not c[4] and not c[6] for c in CASES) >= 4  # both wrong
    assert {c[7] for c in CASES} == {"boxed", "unboxed", "malformed", "none"}


def test_integers_compare_exactly_and_the_published_tolerance_is_a_switch():
    assert is_equivalent("10001", "10000", "numeric") is False
    assert is_equivalent("10001", "10000", "numeric", published_tolerance=True) is True
    assert is_equivalent("1201587", "1201565", "numeric") is False
    assert is_equivalent("1201587", "1201565", "numeric", published_tolerance=True) is True
    assert is_equivalent("18.0", "18", "numeric") is True
    assert is_equivalent("0.29", "29%", "numeric") is True  # 0.29 * 100 is 28.999999999999996
    assert is_equivalent("0.50004", "0.5", "numeric") is True  # non-integers: relative 1e-4
    assert is_equivalent("0.5006", "0.5", "numeric") is False
    assert is_equivalent("0.000000015", "0.00000001", "numeric") is True  # near 0: absolute 1e-8
    assert is_equivalent("10001", "10000", "latex") is False and is_equivalent("10001 (apples)", "10000 (apples)", "asdiv") is False
    assert score_output("\\boxed{10001}", "10000", "numeric", published_tolerance=True)["correct"] is True


def test_the_quirk_reaches_the_evaluation_settings():
    from hydra import compose, initialize_config_dir

    import lightreasoner.core.config
    from lightreasoner.eval.evaluate import EvalSettings

    conf = str(report.Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(conf, version_base="1.3"):
        off = compose("train", overrides=["experiment=paper_qwen25_math_1.5b"])
        on = compose("train", overrides=["experiment=paper_qwen25_math_1.5b", "quirks=published"])
    assert EvalSettings.from_cfg(off.eval).published_numeric_tolerance is False
    assert EvalSettings.from_cfg(on.eval).published_numeric_tolerance is True
    with pytest.raises(ValueError, match="eval.published_numeric_tolerance: expected true or false"):
        EvalSettings.from_cfg({"published_numeric_tolerance": "yes"})


def _old_row(i, text, gold, correct):
    """A per-problem record as written before the flexible score existed."""
    return {"id": f"svamp/test/{i}", "question": f"q{i}", "gold": gold, "generated": text, "extracted": None,
            "correct": correct, "cut_off": False, "num_tokens": 10, "seconds": 0.1}


def test_old_records_are_rescored_from_their_text():
    rows = [
        _old_row(0, "\\boxed{1201587}", "1201565", True),  # counted right under the old tolerance
        _old_row(1, "The total is \\boxed{x = 7}", "7", False),
        {"id": "hand/0", "question": "q", "correct": True},  # no text or gold: kept as stored
    ]
    assert [needs_rescoring(r) for r in rows] == [True, True, False]
    new, n = rescore_rows(rows, answer_type_of("svamp"))
    assert n == 2 and new[2] == rows[2]
    assert (new[0]["correct"], new[0]["flexible"]["correct"], new[0]["format"]["answer"]) == (False, False, "boxed")
    assert new[1]["flexible"]["extracted"] == "7" and new[1]["flexible"]["correct"] is True
    assert not any(needs_rescoring(r) for r in new)
    assert needs_rescoring(new[0], published_tolerance=True)  # scored under the other numeric rule
    again, _ = rescore_rows(new, "numeric", published_tolerance=True)
    assert again[0]["correct"] is True and again[0]["flexible"]["scorer"].endswith("+published-tolerance")
    assert answer_type_of("math500") == "latex" and answer_type_of("nope") is None


# ---------------------------------------------------------------- the format share of a gain

# base is right on problems 0 and 3 (strict), and also on 1 once flexible reads its unboxed answer;
# tuned is right on 0-3 under both: strict gain 2/5, flexible gain 1/5, format share 1/5.
BASE_STRICT, BASE_FLEX = [1, 0, 0, 1, 0], [1, 1, 0, 1, 0]
TUNED_STRICT, TUNED_FLEX = [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]


def _run(model, strict, flex):
    rows = [{"id": str(i), "question": "q", "correct": bool(s), "flexible": {"correct": bool(f)},
             "format": {"answer": "boxed", "hedging": False}} for i, (s, f) in enumerate(zip(strict, flex))]
    return {"model": model, "settings": {"benchmark": "b"}, "rows": rows}


def test_format_share_on_a_hand_built_paired_example():
    c = stats.paired_comparison(_run("base", BASE_STRICT, BASE_FLEX), _run("tuned", TUNED_STRICT, TUNED_FLEX))
    assert c["diff"] == pytest.approx(0.4) and c["diff_flexible"] == pytest.approx(0.2)
    assert c["format_share"] == pytest.approx(0.2)
    assert (c["only_baseline_correct_flexible"], c["only_model_correct_flexible"]) == (0, 1)
    # per problem, (strict - flexible) of tuned minus that of base is [0, 1, 0, 0, 0]: the interval is its bootstrap
    lo, hi = c["ci95_format_share"]
    assert (lo, hi) == stats.paired_bootstrap_ci(np.zeros(5), np.array([0, 1, 0, 0, 0]))
    assert 0.0 <= lo <= 0.2 <= hi <= 0.6
    s = stats.summarize([dict(r, num_tokens=1, cut_off=False, extracted="1") for r in _run("base", BASE_STRICT, BASE_FLEX)["rows"]])
    assert (s["accuracy"], s["accuracy_flexible"], s["off_format_frac"], s["hedging_frac"]) == (0.4, 0.6, 0.0, 0.0)
    # rows without the flexible score: the strict figures only
    plain = {"model": "a", "settings": {"benchmark": "b"}, "rows": [{"id": "0", "question": "q", "correct": True}]}
    assert "format_share" not in stats.paired_comparison(plain, dict(plain, model="b"))


def test_wandb_summary_keys_and_logger_metrics_carry_both_scores():
    c = stats.paired_comparison(_run("base", BASE_STRICT, BASE_FLEX), _run("tuned", TUNED_STRICT, TUNED_FLEX))
    rows = [dict(r, num_tokens=1, cut_off=False, extracted="1") for r in _run("tuned", TUNED_STRICT, TUNED_FLEX)["rows"]]
    result = {"model": "tuned", "benchmark": "b", **stats.summarize(rows)}
    keys = summary_metrics({"results": [result], "comparisons": [{**c, "benchmark": "b"}]})
    assert keys["eval/tuned/b/accuracy"] == 0.8 and keys["eval/tuned/b/accuracy_flexible"] == 0.8
    assert {"eval/tuned/b/hedging_frac", "eval/tuned/b/off_format_frac", "eval/tuned/b/ci95_flexible_lo"} <= set(keys)
    assert keys["eval/tuned/b/gain_vs_base"] == pytest.approx(0.4)
    assert keys["eval/tuned/b/gain_flexible_vs_base"] == pytest.approx(0.2)
    assert keys["eval/tuned/b/format_share_vs_base"] == pytest.approx(0.2)
    assert "eval/tuned/b/format_share_vs_base/ci95_hi" in keys
    from lightreasoner.eval import tables

    cols, table_rows = tables.comparisons_table({"comparisons": [{**c, "benchmark": "b"}]})
    assert table_rows[0][cols.index("format share (pp)")] == "+20.0"


def test_sweep_report_shows_the_format_share_when_the_summaries_have_it(tmp_path):
    for job, seed in enumerate((0,)):
        s = summary(0.4, 0.1, seed)
        for c in s["comparisons"]:
            if "refused" not in c:
                c.update(diff_flexible=c["diff"] - 0.005, ci95_flexible=[c["diff"] - 0.02, c["diff"] + 0.01],
                         format_share=0.005, ci95_format_share=[0.0, 0.01])
        write_run(tmp_path / "sweep" / str(job), composed_config(0.4, 0.1, seed, job), [f"seed={seed}"], s)
    out = report.write_report(tmp_path / "sweep", tmp_path / "out")
    row = out["display"].iloc[0]
    assert row["demo format share pp"] == "+0.5 [+0.0, +1.0]" and row["demo flexible gain pp"] == "+0.5 [-1.0, +2.0]"
    assert "format share = gain - flexible gain" in (tmp_path / "out" / "report.md").read_text()


def _write_eval(run_dir, model, bench, texts, golds):
    d = run_dir / "eval" / model
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{bench}.settings.json").write_text(json.dumps({"benchmark": bench, "split": "test", "engine": {"engine": "vllm"}}))
    rows = [_old_row(i, t, g, True) | {"id": f"{bench}/test/{i}"} for i, (t, g) in enumerate(zip(texts, golds))]
    (d / f"{bench}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_format_audit_rescores_records_and_reports_the_format_share(tmp_path, capsys):
    run = tmp_path / "lightreasoner"
    golds = ["18", "7", "5", "1201565"]
    _write_eval(run, "base", "gsm8k", ["\\boxed{18}", "so \\boxed{L - 7}", "\\boxed{4}", "\\boxed{1201587}"], golds)
    _write_eval(run, "tuned", "gsm8k", ["\\boxed{18}", "\\boxed{7}", "\\boxed{5}", "\\boxed{1201587}"], golds)
    _write_eval(run, "base", "svamp", ["\\boxed{3}"], ["3"])
    _write_eval(run, "tuned", "svamp", ["\\boxed{3}"], ["3"])
    scores, gains = format_audit([run])
    base = scores[(scores["model"] == "base") & (scores["benchmark"] == "gsm8k")].iloc[0]
    assert base["strict % [95% CI]"].startswith("25.0 ") and base["flexible % [95% CI]"].startswith("50.0 ")
    assert base["off-format %"] == "25.0" and base["re-scored verdicts changed"] == 3  # stored rows said all right
    g = gains.set_index("benchmark")
    assert g.loc["gsm8k", "strict gain pp"].startswith("+50.0 [") and g.loc["gsm8k", "flexible gain pp"].startswith("+25.0 [")
    assert g.loc["gsm8k", "format share pp"].startswith("+25.0 [+0.0, ")
    assert g.loc["pooled (gsm8k + svamp)", "format share pp"].startswith("+20.0 [")
    assert report.main(["--format-audit", str(run)]) == 0
    assert "format share pp" in capsys.readouterr().out
    assert report.main(["--format-audit", str(tmp_path / "nope")]) == 2
    assert "no eval/ directory" in capsys.readouterr().err


def test_the_report_reads_gzipped_records_as_the_plain_ones(tmp_path):
    """Records committed as ``{benchmark}.jsonl.gz`` (docs/results/*_records/) give the same
    audit and head-to-head tables as the plain files they were compressed from."""
    import gzip
    import shutil

    plain, packed = tmp_path / "plain" / "lightreasoner", tmp_path / "packed" / "lightreasoner"
    golds = ["18", "7", "5"]
    _write_eval(plain, "base", "gsm8k", ["\\boxed{18}", "so \\boxed{L - 7}", "\\boxed{4}"], golds)
    _write_eval(plain, "tuned", "gsm8k", ["\\boxed{18}", "\\boxed{7}", "\\boxed{5}"], golds)
    _write_eval(plain, "base", "svamp", ["\\boxed{3}", "2"], ["3", "2"])
    _write_eval(plain, "tuned", "svamp", ["\\boxed{3}", "\\boxed{1}"], ["3", "2"])
    shutil.copytree(plain, packed)
    for f in packed.rglob("*.jsonl"):
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    assert sorted(p.name for p in (packed / "eval" / "base").iterdir()) == [
        "gsm8k.jsonl.gz", "gsm8k.settings.json", "svamp.jsonl.gz", "svamp.settings.json"]
    for a, b in zip(format_audit([plain]), format_audit([packed])):
        assert len(a) and a.equals(b)
    a, b = (head_to_head(run, run, "base", "tuned") for run in (plain, packed))
    assert a["benchmark"].tolist() == ["gsm8k", "svamp", "all (pooled)"] and a.equals(b)
