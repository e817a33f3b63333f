"""The pair diagnostic (lightreasoner/run/diagnose.py): counts on hand-built logits with known picks,
the advantage and its intervals, the reference texts, and one run through the command line on
the tiny pair."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from lightreasoner.core import contrast
from lightreasoner.eval.diagnostics import advantage, bootstrap_advantage, position_stats, reference_positions
from lightreasoner.run.diagnose import DiagnoseSettings, main, reference_text, split_diagnose_args
from lightreasoner.eval.stats import mcnemar_exact_p, wilson_interval
from lightreasoner.data.records import Problem
from lightreasoner.selection.select import SelectionSettings

TOKENS = {0: "x", 1: "5", 2: "7", 3: "+", 4: "-", 5: " the", 6: "<eos>"}


class StubTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(TOKENS[int(i)] for i in ids)


def _logp(probs):
    p = torch.tensor(probs, dtype=torch.float64)
    return (p / p.sum()).log().float()


def scored_reference(pid, reference, pe_rows, pa_rows, alpha_min=0.01):
    """A scored trace of ``reference`` from hand-written distributions (the sampler's step-5 math)."""
    le = torch.stack([_logp(r) for r in pe_rows])
    la = torch.stack([_logp(r) for r in pa_rows])
    ids, lpe, lpa, valid, mx = contrast.top_candidates(le, la, alpha_min, 8)
    counts = valid.sum(-1)
    off = torch.zeros(len(reference) + 1, dtype=torch.long)
    off[1:] = counts.cumsum(0)
    return {
        "problem_id": pid, "question_sha": "0", "prompt_ids": torch.tensor([0]), "trace_ids": torch.tensor(reference),
        "finished": True, "kl": contrast.kl_shared(le, la), "max_logp_e": mx, "cand_offsets": off,
        "cand_ids": ids[valid].to(torch.int32), "cand_logp_e": lpe[valid], "cand_logp_a": lpa[valid],
    }


# step 0: expert picks 1 ("5"), the contrast 2 ("7") = the reference  -> a contrast win
# step 1: expert picks 3 ("+") = the reference, the contrast 4 ("-")   -> an expert win
# step 2: both pick 5 (" the") = the reference, low KL                 -> no flip
PE = [[0.05, 0.5, 0.4, 0.02, 0.01, 0.01, 0.01],
      [0.05, 0.01, 0.01, 0.5, 0.4, 0.02, 0.01],
      [0.01, 0.01, 0.01, 0.01, 0.01, 0.94, 0.01]]
PA = [[0.05, 0.8, 0.05, 0.05, 0.02, 0.02, 0.01],
      [0.05, 0.02, 0.02, 0.8, 0.05, 0.05, 0.01],
      [0.01, 0.01, 0.01, 0.01, 0.01, 0.94, 0.01]]
REFERENCE = [2, 3, 5]


def test_hand_built_picks_and_counts():
    rec = scored_reference("demo/train/0", REFERENCE, PE, PA)
    assert float(rec["kl"][0]) > 0.4 and float(rec["kl"][1]) > 0.4 and float(rec["kl"][2]) < 0.01
    # first_step=1: step 0 is not eligible, so only step 1 (KL >= beta) is kept
    sel = SelectionSettings(beta=0.4, alpha=0.2, first_step=1).resolved()
    pos = reference_positions([rec], sel, StubTokenizer())
    assert pos.expert == [1, 3, 5] and pos.contrast == [2, 4, 5] and pos.reference == REFERENCE
    assert pos.kept == [False, True, False]
    assert pos.token_class == ["digit", "operator", "word"]
    s = position_stats(pos, 1)
    assert (s["scored_positions"], s["kept_positions"]) == (3, 1)
    assert s["kept_fraction"] == pytest.approx(1 / 3)
    a = s["all"]
    assert (a["flips"], a["contrast_right"], a["expert_right"], a["advantage"]) == (2, 1, 1, 0.0)
    assert a["expert_is_reference"] == pytest.approx(2 / 3) and a["contrast_is_reference"] == pytest.approx(2 / 3)
    k = s["kept"]
    assert (k["flips"], k["contrast_right"], k["expert_right"], k["advantage"]) == (1, 0, 1, -1.0)
    assert a["by_class"]["digit"]["advantage"] == 1.0 and a["by_class"]["operator"]["advantage"] == -1.0
    assert a["by_class"]["word"]["flips"] == 0 and a["by_class"]["word"]["advantage"] is None
    # target=expert (no_contrast): the label's argmax is the expert's pick, no flips at all
    pos_e = reference_positions([rec], SelectionSettings(beta=0.4, alpha=0.2, target="expert").resolved(), StubTokenizer())
    assert pos_e.contrast == pos_e.expert


def test_gamma_zero_is_the_expert_pick():
    """selection.gamma=0 (no contrast): the label's argmax is the expert's pick, no flips."""
    rec = scored_reference("demo/train/0", REFERENCE, PE, PA)
    pos = reference_positions([rec], SelectionSettings(beta=0.4, alpha=0.2, gamma=0.0).resolved(), StubTokenizer())
    assert pos.contrast == pos.expert == [1, 3, 5]


def test_the_plausible_set_bounds_the_contrast_pick():
    """At alpha=0.9 only the expert's argmax is plausible: the contrast cannot flip it."""
    rec = scored_reference("demo/train/0", REFERENCE, PE, PA)
    pos = reference_positions([rec], SelectionSettings(beta=0.4, alpha=0.9).resolved(), StubTokenizer())
    assert pos.contrast == pos.expert == [1, 3, 5]


def test_advantage_and_its_interval():
    r = advantage(3, 1, 5)
    assert r["advantage"] == pytest.approx(0.4)
    lo, hi = wilson_interval(3, 4)
    assert r["ci95"] == pytest.approx([0.8 * (2 * lo - 1), 0.8 * (2 * hi - 1)])
    assert r["ci95"][0] < r["advantage"] < r["ci95"][1]
    assert r["sign_test_p"] == mcnemar_exact_p(3, 1) == pytest.approx(0.625)
    assert advantage(0, 0, 0)["advantage"] is None
    assert advantage(0, 0, 4)["ci95"] == [0.0, 0.0]
    assert advantage(10, 0, 10)["ci95"][1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        advantage(3, 3, 5)
    # the same flips in every reference: the bootstrap has nothing to vary
    assert bootstrap_advantage([(1, 0, 2)] * 5) == pytest.approx([0.5, 0.5])
    assert bootstrap_advantage([(0, 0, 0)]) is None
    lo_b, hi_b = bootstrap_advantage([(3, 0, 3), (0, 3, 3), (1, 1, 2)])
    assert -1 <= lo_b < 0 < hi_b <= 1


def test_reference_texts():
    row = {"question": "q", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                                      "Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 1,072"}
    p = Problem(id="gsm8k/train/0", question="q", answer="1072", answer_type="numeric")
    assert reference_text(p, row, "gsm8k") == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\nThe answer is \\boxed{1072}")
    demo = {"question": "q", "answer": "5", "solution": "2 + 3 = 5.\nThe answer is \\boxed{5}.\n"}
    assert reference_text(p, demo, "generic") == "2 + 3 = 5.\nThe answer is \\boxed{5}."
    with pytest.raises(ValueError, match="no reference solution"):
        reference_text(p, {"question": "q", "answer": "5"}, "generic")


def test_diagnose_keys_are_read_and_checked():
    rest, s = split_diagnose_args(["model_pair=demo", "diagnose.problems=7", "diagnose.answer_level=false", "-m"])
    assert rest == ["model_pair=demo", "-m"] and s == DiagnoseSettings(problems=7, answer_level=False)
    with pytest.raises(ValueError, match=r"^diagnose\.problemz: no such key"):
        split_diagnose_args(["diagnose.problemz=3"])
    with pytest.raises(ValueError, match=r"^diagnose\.problems: expected an integer >= 1"):
        split_diagnose_args(["diagnose.problems=0"])


def test_command_line_on_the_tiny_pair(tmp_path, tiny_pair_dirs, capsys):
    rows = [{"question": f"{i}+1?", "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "diag"
    argv = [
        "experiment=coder_cpu", "logger=csv", "trainer=cpu",
        f"model_pair.expert.name_or_path={tiny_pair_dirs['expert']}", "model_pair.expert.gguf_file=null", "model_pair.expert.device=cpu",
        f"model_pair.amateur.name_or_path={tiny_pair_dirs['amateur']}", "model_pair.amateur.gguf_file=null", "model_pair.amateur.device=cpu",
        f"dataset.files.train={tmp_path / 'train.jsonl'}", "dataset.hub=null", "dataset.max_problems=4", "eval.max_new_tokens=6",
        f"paths.cache_dir={tmp_path / 'cache'}", "selection.beta=0.0",
        "diagnose.problems=3", "diagnose.batch_size=2", f"diagnose.out={out}",
    ]
    assert main(argv) == 0
    report = json.loads((out / "diagnose.json").read_text())
    assert (out / "diagnose.md").read_text().startswith("## Pair diagnostic")
    assert report["references"] == 3
    # every reference token is a position (char tokenizer: one per character, plus the end of sequence)
    assert report["scored_positions"] + report["unscored_positions"] == report["reference_tokens"]
    assert report["kept_positions"] == report["scored_positions"] - 3  # beta=0 keeps all but step 0 (first_step=1)
    for scope in ("all", "kept"):
        b = report[scope]
        assert b["contrast_right"] + b["expert_right"] <= b["flips"] <= b["positions"]
        assert sum(c["flips"] for c in b["by_class"].values()) == b["flips"]
    assert report["on_policy"]["found"] is False
    a = report["answer_level"]
    assert a["n"] == 3 and a["paired"]["n"] == 3 and a["max_new_tokens"] == 6
    assert report["timing"]["wall_s"] > 0 and report["machine"]["cpu"]
    # logger=csv: run() logs the flat diagnose/ metrics once, beside the report
    (metrics,) = out.glob("logs/version_*/metrics.csv")
    row = next(csv.DictReader(metrics.open()))
    assert int(row["diagnose/references"]) == 3 and float(row["diagnose/kept_fraction"]) == pytest.approx(report["kept_fraction"])
    assert "pair diagnostic" in capsys.readouterr().out
    assert main(["diagnose.bogus=1"]) == 2
    assert "error: diagnose.bogus: no such key" in capsys.readouterr().err
