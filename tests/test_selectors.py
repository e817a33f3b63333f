"""The rival selectors (``selection.rule`` kl / top_fraction / expert_entropy, ``match_count``,
``verified_only``) on hand-built scored traces: each rule's kept steps and count by hand, beta's
count matched, the random-steps ablation drawing each rule's count, the junk rate, and a
selector x objective multirun of the shrunken demo end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _demo_overrides import SHRUNKEN_DEMO
from test_selection import L
from test_selection import record as selection_record

from lightreasoner.core import contrast
from lightreasoner.data.records import Problem
from lightreasoner.selection.select import (
    SelectorSettings,
    junk_rate,
    select,
    selection_stats,
    step_entropy,
    verify_traces,
)
from lightreasoner.models.tiny import build_char_tokenizer

REPO = Path(__file__).resolve().parents[1]


def record(problem_id, kl, steps, prompt=(10, 11), finished=True, trace=None):
    """A scored trace from per-step (candidate ids, pE, pA); most probable candidate first
    (test_selection's builder; the trace defaults to each step's first candidate)."""
    rec = selection_record(problem_id, list(prompt), trace if trace is not None else [s[0][0] for s in steps], kl, steps)
    rec["finished"] = finished
    return rec


def H(*p):
    """Entropy of the candidates with the rest of the mass as one token (hand version)."""
    rest = 1 - sum(p)
    return -sum(x * math.log(x) for x in p) - (rest * math.log(rest) if rest > 1e-9 else 0.0)


@pytest.fixture
def recs():
    r0 = record("toy/train/0", [0.9, 0.1, 0.5, 0.4, 0.3, 0.05], [
        ([20, 30], (0.6, 0.3), (0.3, 0.3)),
        ([21], (0.9,), (0.5,)),                                  # H = H(.9)
        ([22, 31], (0.5, 0.5), (0.25, 0.6)),                     # H = ln 2
        ([23, 33, 34], (0.4, 0.3, 0.2), (0.1, 0.4, 0.3)),        # H = H(.4, .3, .2)
        ([24], (0.99,), (0.9,)),
        ([25, 35], (0.45, 0.45), (0.5, 0.2)),
    ])
    r1 = record("toy/train/1", [0.2, 0.35, 0.1], [
        ([26], (0.7,), (0.7,)),
        ([27, 36], (0.6, 0.35), (0.2, 0.5)),
        ([28], (0.8,), (0.2,)),
    ])
    return [r0, r1]


def kept(samples):
    return {s.problem_id: s.steps.tolist() for s in samples}


def run(recs, beta, **rule):
    report = {}
    verified = rule.pop("verified", None)
    samples = select(recs, beta=beta, alpha=0.2, first_step=1, alpha_min=0.1, selector=SelectorSettings(**rule),
                     verified=verified, report=report)
    return kept(samples), report


def test_the_entropy_estimate_is_the_hand_value_and_a_lower_bound(recs):
    h = step_entropy(recs[0])
    assert h.tolist() == pytest.approx([H(0.6, 0.3), H(0.9), math.log(2), H(0.4, 0.3, 0.2), H(0.99), H(0.45, 0.45)], abs=1e-5)
    full = torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05])  # the true distribution behind step 3
    assert float(h[3]) <= float(-(full * full.log()).sum()) + 1e-6


def test_kl_rule_is_the_method_and_reports_its_count(recs):
    got, report = run(recs, 0.4)
    assert got == {"toy/train/0": [2, 3]}
    assert report == {"rule": "kl", "kl_kept_steps": 2, "traces_read": 2}
    plain = select(recs, beta=0.4, alpha=0.2, first_step=1, alpha_min=0.1)
    assert kept(plain) == got and all(torch.equal(a, b) for s, t in zip(plain, select(recs, beta=0.4, alpha=0.2, first_step=1,
                                      alpha_min=0.1, selector=SelectorSettings())) for a, b in zip(s.target_w, t.target_w))


def test_top_fraction_keeps_the_highest_kl_share_of_every_trace(recs):
    # r0: 5 eligible steps (1-5), floor(.5 * 5 + .5) = 3 -> KL .5, .4, .3 at steps 2, 3, 4
    # r1: 2 eligible steps (1-2), 1 -> KL .35 at step 1
    got, report = run(recs, 0.4, rule="top_fraction", fraction=0.5)
    assert got == {"toy/train/0": [2, 3, 4], "toy/train/1": [1]}
    assert report["kl_kept_steps"] == 2  # beta's count, for comparison
    # matched to beta's 2 steps, shared 5:2 by largest remainder (1.43, .57): one per trace
    got, _ = run(recs, 0.4, rule="top_fraction", match_count=True)
    assert got == {"toy/train/0": [2], "toy/train/1": [1]}


def test_expert_entropy_needs_no_amateur_and_matches_betas_count(recs):
    # eligible entropies: r0 steps 1-5 = .325, .693, 1.280, .056, .949; r1 steps 1-2 = .824, .500
    got, _ = run(recs, 0.4, rule="expert_entropy", entropy_min=0.9)
    assert got == {"toy/train/0": [3, 5]}
    got, _ = run(recs, 0.4, rule="expert_entropy", entropy_min=0.8)
    assert got == {"toy/train/0": [3, 5], "toy/train/1": [1]}
    # beta .3 keeps 4 (r0: 2, 3, 4; r1: 1); the 4 most uncertain steps instead
    got, report = run(recs, 0.3, rule="expert_entropy", match_count=True)
    assert report["kl_kept_steps"] == 4
    assert got == {"toy/train/0": [2, 3, 5], "toy/train/1": [1]}
    # the amateur plays no part in where: another amateur, the same steps
    other = [dict(r, cand_logp_a=r["cand_logp_a"].flip(0), kl=r["kl"].flip(0)) for r in recs]
    assert run(other, 0.3, rule="expert_entropy", entropy_min=0.8)[0] == {"toy/train/0": [3, 5], "toy/train/1": [1]}


def test_verified_only_reads_only_the_verified_traces_under_any_rule(recs):
    verified = {"toy/train/0": False, "toy/train/1": True}
    got, report = run(recs, 0.3, verified=verified, verified_only=True)
    assert got == {"toy/train/1": [1]} and report["traces_verified"] == 1 and report["kl_kept_steps"] == 1
    got, _ = run(recs, 0.3, rule="top_fraction", fraction=1.0, verified=verified, verified_only=True)
    assert got == {"toy/train/1": [1, 2]}
    with pytest.raises(ValueError, match="selection.verified_only"):
        run(recs, 0.3, verified_only=True)


def test_the_random_rule_draws_the_kl_rules_count_per_trace(recs):
    """``selection.rule=random`` (the random-steps ablation is now a rule of the registry): per
    trace as many steps as ``kl`` keeps at beta, at seeded random eligible positions."""
    for beta in (0.3, 0.4):
        ref = select(recs, beta, 0.2, alpha_min=0.1)
        rnd = select(recs, beta, 0.2, alpha_min=0.1, selector=SelectorSettings(rule="random"), seed=3)
        assert [s.num_steps for s in rnd] == [s.num_steps for s in ref]


def test_tau_and_top_k_shape_the_selected_labels(recs):
    s = select(recs, 0.4, 0.2, alpha_min=0.1, selector=SelectorSettings(tau=2.0, top_k=2))[0]
    assert s.steps.tolist() == [2, 3]
    r = [2.0, math.sqrt(0.75)]  # step 3: sqrt(pE / pA) of the two best candidates (23, 33)
    assert s.target_ids[1].tolist() == [23, 33]
    assert s.target_w[1].tolist() == pytest.approx([r[0] / sum(r), r[1] / sum(r)], abs=1e-6)


def test_junk_rate_is_the_label_mass_on_base_implausible_candidates(recs):
    samples = select(recs, 0.4, 0.2, alpha_min=0.1)
    # step 2: no candidate below .25; step 3: candidate 34 (pE .2) carries (2/3) / (4 + .75 + 2/3)
    expected = (0.0 + (2 / 3) / (4 + 0.75 + 2 / 3)) / 2
    assert junk_rate(recs, samples, 0.25) == pytest.approx(expected, abs=1e-6)
    assert selection_stats(recs, samples, junk_pe=0.25)["junk_rate"] == pytest.approx(expected, abs=1e-6)
    assert "junk_rate" not in selection_stats(recs, samples)
    assert float(contrast.junk_mass(torch.tensor([0.5, 0.5]), L(0.3, 0.01), 0.05)) == pytest.approx(0.5)


def test_verify_traces_decodes_and_checks_the_final_answer():
    tok = build_char_tokenizer()
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    step = ([1], (0.9,), (0.5,))
    right = enc("2 + 2 = 4. The answer is \\boxed{4}.")
    wrong = enc("2 + 2 = 5. The answer is \\boxed{5}.")
    recs = [
        record("toy/train/0", [0.5] * len(right), [step] * len(right), trace=right),
        record("toy/train/1", [0.5] * len(wrong), [step] * len(wrong), trace=wrong),
        record("toy/train/2", [0.5] * len(right), [step] * len(right), trace=right, finished=False),  # cut off
    ]
    problems = [Problem(f"toy/train/{i}", "What is 2+2?", "4", "numeric") for i in range(3)]
    assert verify_traces(recs, problems, tok) == {"toy/train/0": True, "toy/train/1": False, "toy/train/2": False}


@pytest.mark.parametrize(
    "cfg,msg",
    [
        ({"rule": "entropy"}, "selection.rule"),
        ({"fraction": 0.0}, "selection.fraction"),
        ({"entropy_min": -1}, "selection.entropy_min"),
        ({"match_count": "yes"}, "selection.match_count"),
        ({"verified_only": 1}, "selection.verified_only"),
        ({"tau": 0}, "selection.tau"),
        ({"top_k": 0}, "selection.top_k"),
        ({"rules": "kl"}, r"selection: unknown field\(s\) \['rules'\]"),
    ],
)
def test_bad_selector_settings_name_the_key(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        SelectorSettings.from_cfg(cfg)


def test_selector_by_objective_multirun_on_the_shrunken_demo(tmp_path):
    """A 2 x 2 grid (rule x loss) through train.py -m with the drift guard on: every job finishes
    with its rule, loss, counts and drift figures, and says it went beyond its KL limit."""
    sweep = tmp_path / "multirun"
    args = [sys.executable, str(REPO / "train.py"), "-m", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
            *SHRUNKEN_DEMO, "dataset.max_problems=12", "eval.max_problems=4", "eval.max_new_tokens=8", "eval.models=[tuned]",
            "trainer.max_steps=1",
            "selection.beta=0.005", "selection.match_count=true", "optimizer.lr=0.05",
            "drift.enabled=true", "drift.problems=3", "drift.val_problems=2", "drift.val_max_new_tokens=8", "drift.keep_best=false",
            "drift.max_kl=0.0",
            "selection.rule=top_fraction,expert_entropy", "distill.loss=reverse_kl,jsd", "distill.jsd_beta=0.3"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 4
    settings = set()
    for s in summaries:
        sel = s["selection"]
        assert s["status"] == "finished" and s["tuned_tokens"] > 0
        assert sel["kept_steps"] == sel["kl_kept_steps"] > 0  # matched to beta's count
        assert -1e-6 <= sel["junk_rate"] <= 1 + 1e-6
        d = s["drift"]
        assert [m["step"] for m in d["measurements"]] == [0, 1] and d["kept_step"] == 1
        assert (d["heldout_traces"], d["heldout_solutions"], d["val_problems"]) == (3, 3, 2)
        assert 0.0 <= d["final"]["val_accuracy"] <= 1.0 and d["final"]["ppl_ratio"] > 0
        assert [e["figure"] for e in d["exceeded"]] == ["kl_tuned_base"] and d["final"]["kl_tuned_base"] > 0
        job = Path(s["adapter_dir"]).parent
        assert json.loads((job / "adapter" / "lightreasoner.json").read_text())["selection"]["rule"] == sel["rule"]
        loss = next(line.split(":")[1].strip() for line in (job / ".hydra" / "config.yaml").read_text().splitlines()
                    if line.startswith("  loss:"))
        settings.add((sel["rule"], loss))
    assert settings == {(r, loss) for r in ("top_fraction", "expert_entropy") for loss in ("reverse_kl", "jsd")}
    assert proc.stdout.count("BEYOND LIMIT") == 4


def test_gamma_zero_is_no_contrast_and_gamma_one_is_the_method(recs):
    """Issue 31's contrast-strength knob: selection.gamma scales the amateur's term; 0 gives the
    no_contrast labels exactly, 1 the published ones, 2 extrapolates away from the amateur."""
    no_contrast = select(recs, 0.0, 0.2, alpha_min=0.1, selector=SelectorSettings(target="expert"))
    gamma0 = select(recs, 0.0, 0.2, alpha_min=0.1, selector=SelectorSettings(gamma=0.0))
    method = select(recs, 0.0, 0.2, alpha_min=0.1)
    gamma1 = select(recs, 0.0, 0.2, alpha_min=0.1, selector=SelectorSettings(gamma=1.0))
    gamma2 = select(recs, 0.0, 0.2, alpha_min=0.1, selector=SelectorSettings(gamma=2.0))
    for a, b in ((gamma0, no_contrast), (gamma1, method)):
        for x, y in zip(a, b):
            for wx, wy, ix, iy in zip(x.target_w, y.target_w, x.target_ids, y.target_ids):
                assert torch.equal(ix, iy) and torch.allclose(wx, wy, atol=0, rtol=0)
    # by hand: weights proportional to pE / pA**gamma over the plausible set (pE >= alpha * max pE)
    from lightreasoner.core import contrast

    pe, pa = torch.tensor([0.5, 0.3, 0.05]), torch.tensor([0.4, 0.1, 0.3])
    w = contrast.soft_label(pe.log(), pa.log(), pe.log().max(), 0.2, gamma=2.0)
    want = torch.tensor([0.5 / 0.16, 0.3 / 0.01, 0.0])
    assert torch.allclose(w, want / want.sum(), atol=1e-6)
    assert not torch.equal(gamma2[0].target_w[0], gamma1[0].target_w[0]) or gamma2[0].target_w[0].numel() == 1
    with pytest.raises(ValueError, match=r"^selection\.gamma: expected a number >= 0"):
        SelectorSettings(gamma=-1.0).validate()
