"""The `method` group on tiny models: each ablation changes exactly its ingredient, SFT trains
only on verified solutions, contrastive decoding equals a step-by-step reference, and a
shrunken demo grid over methods runs end to end with the efficiency fields."""

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
from _tiny_pair import build_pair, problems

from lightreasoner.core import contrast
from lightreasoner.generation import GenerationSettings, HFEngine
from lightreasoner.generation.contrastive import ContrastiveDecodingEngine
from lightreasoner.methods import build_method
from lightreasoner.methods.sft import RejectionSFT, sample_solutions, solution_samples
from lightreasoner.models.spec import ModelSpec
from lightreasoner.data.prompts import encode_prompts
from lightreasoner.data.records import Problem
from lightreasoner.sampling.sampler import run_sampling
from lightreasoner.selection.select import select

REPO = Path(__file__).resolve().parents[1]
SPEC = ModelSpec("tiny-expert")  # identities for the cache key; models are passed built
AMATEUR = ModelSpec("tiny-amateur")


@pytest.fixture(scope="module")
def pair():
    return build_pair()


@pytest.fixture(scope="module")
def records(pair, tmp_path_factory):
    tok, expert, amateur = pair
    cache = run_sampling(SPEC, AMATEUR, problems(), {"name": "toy"}, {"max_new_tokens": 16, "batch_size": 4, "alpha_min": 0.05},
                         tmp_path_factory.mktemp("cache"), trainer_kwargs={"accelerator": "cpu", "devices": 1}, models=(expert, amateur, tok))
    return cache.read_all()


def test_random_steps_keep_betas_count_per_trace_elsewhere_and_reproducibly(records):
    beta = float(torch.cat([r["kl"] for r in records]).quantile(0.6))
    kl_sel = select(records, beta, 0.2, alpha_min=0.05)
    rnd = select(records, beta, 0.2, alpha_min=0.05, steps="random", seed=0)
    again = select(records, beta, 0.2, alpha_min=0.05, steps="random", seed=0)
    other = select(records, beta, 0.2, alpha_min=0.05, steps="random", seed=1)
    assert [s.problem_id for s in rnd] == [s.problem_id for s in kl_sel]
    assert [s.num_steps for s in rnd] == [s.num_steps for s in kl_sel]  # the same count per trace
    assert any(not torch.equal(a.steps, b.steps) for a, b in zip(rnd, kl_sel))  # at other positions
    assert all(torch.equal(a.steps, b.steps) for a, b in zip(rnd, again))  # reproducible per seed
    assert any(not torch.equal(a.steps, b.steps) for a, b in zip(rnd, other))
    for s in rnd:
        assert bool((s.steps >= 1).all()) and torch.equal(s.steps, s.steps.sort().values)
        for ids, w in zip(s.target_ids, s.target_w):  # contrastive soft labels at the drawn steps
            assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-5)


def test_no_contrast_trains_towards_the_experts_renormalised_distribution(records):
    beta = 0.0
    ours = select(records, beta, 0.2, alpha_min=0.05, target="expert")
    lr = select(records, beta, 0.2, alpha_min=0.05)
    assert [s.steps.tolist() for s in ours] == [s.steps.tolist() for s in lr]  # same selection
    rec = records[0]
    s = ours[0]
    t = int(s.steps[0])
    off = rec["cand_offsets"]
    a, b = int(off[t]), int(off[t + 1])
    pe = rec["cand_logp_e"][a:b].exp()
    keep = pe >= 0.2 * math.exp(float(rec["max_logp_e"][t])) * (1 - 1e-5)
    expected = pe[keep] / pe[keep].sum()  # hand-computed: pE over V_t, renormalised
    got = dict(zip(s.target_ids[0].tolist(), s.target_w[0].tolist()))
    for i, p in zip(rec["cand_ids"][a:b][keep].tolist(), expected.tolist()):
        assert got[i] == pytest.approx(p, rel=1e-5)
    assert any(not torch.allclose(x, y) for o, l in zip(ours, lr) for x, y in zip(o.target_w, l.target_w) if x.shape == y.shape)


def test_the_ablations_are_presets_over_the_selection_group():
    """method=no_selection / no_tail / random_steps / no_contrast / format_only: LightReasoner with
    a conf/selection/ preset applied (issue 30), named after the ablation; the same keys alone
    (selection=<preset>) keep the method's name."""
    from lightreasoner.run.cli import Composer
    from lightreasoner.selection.select import SelectionSettings

    expected = {"no_selection": {"beta": 0.0}, "no_tail": {"alpha": 0}, "random_steps": {"rule": "random"},
                "no_contrast": {"target": "expert"}, "format_only": {"rule": "answer_span"}}
    composer = Composer()
    try:
        for name, keys in expected.items():
            for argv, method_name in (([f"method={name}"], name), ([f"selection={name}"], "lightreasoner")):
                cfg = composer.compose(argv)
                assert cfg.method.name == method_name and type(build_method(cfg)).__name__ == "LightReasoner"
                for k, v in keys.items():
                    assert cfg.selection[k] == v, (argv, k)
        no_tail = composer.compose(["method=no_tail"])
        assert SelectionSettings.from_cfg(no_tail.selection, alpha_min=0.01).alpha == 0.01  # 0: the widest set the cache holds
    finally:
        composer.close()


def test_sft_trains_only_on_verified_solutions_with_loss_on_every_token(pair, tmp_path, monkeypatch):
    tok, expert, _ = pair
    probs = [Problem(id=f"toy/train/{i}", question=f"What is {i}+{i}?", answer=str(2 * i), answer_type="numeric") for i in range(4)]
    import lightreasoner.methods.sft as sft_mod

    # the verifier says: the first of every problem's three solutions is correct, nothing else
    calls = []

    def fake_equivalent(pred, gold, answer_type, **kw):
        calls.append(gold)
        return len(calls) % 3 == 1

    monkeypatch.setattr(sft_mod, "is_equivalent", fake_equivalent)
    method = RejectionSFT(samples_per_problem=3, temperature=1.0, max_new_tokens=8)
    cache = sample_solutions(method, SPEC, probs, {"name": "toy"}, tmp_path, 8, batch_size=2, model=expert, tokenizer=tok)
    recs = cache.read([p.id for p in probs])
    assert [r["correct"].tolist() for r in recs] == [[True, False, False]] * 4
    samples = solution_samples(recs)
    assert len(samples) == 4
    for s, r in zip(samples, recs):
        sol = r["solutions"][0]
        assert torch.equal(s.input_ids, torch.cat([r["prompt_ids"], sol]))
        assert s.num_steps == sol.numel()  # every solution token carries loss
        assert [int(t) for t in s.target_ids] == sol.tolist() and all(float(w) == 1.0 for w in s.target_w)
        assert int(s.positions[0]) == r["prompt_ids"].numel() - 1
    # cached: a second call samples nothing (the verifier is not asked again)
    n = len(calls)
    sample_solutions(method, SPEC, probs, {"name": "toy"}, tmp_path, 8, batch_size=2, model=expert, tokenizer=tok)
    assert len(calls) == n
    with pytest.raises(ValueError, match="method.temperature"):
        RejectionSFT(temperature=0)


def _reference_contrastive(expert, amateur, prompt, alpha, max_new, eos):
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            x = torch.tensor([ids])
            le = expert(x).logits[0, -1].float().log_softmax(-1)
            la = amateur(x).logits[0, -1].float().log_softmax(-1)
            v = min(le.numel(), la.numel())
            keep = le[:v] >= le.max() + math.log(alpha) - 1e-6
            score = torch.where(keep, le[:v] - la[:v], torch.tensor(float("-inf")))
            nxt = int(score.argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt in eos:
                break
    return out


def test_contrastive_decoding_equals_a_step_by_step_reference_and_greedy_with_a_uniform_amateur(pair):
    tok, expert, amateur = pair
    prompts = encode_prompts(tok, ["What is 2+2?", "Tom has 3 apples. How many?", "x?"], None)
    engine = ContrastiveDecodingEngine(expert, tok, amateur=amateur, alpha=0.1)
    got = engine.generate(prompts, GenerationSettings(12), batch_size=3, progress=False)
    for p, g in zip(prompts, got):
        assert g.token_ids == _reference_contrastive(expert, amateur, p, 0.1, 12, set(engine.eos_token_ids))
    uniform = build_pair()[2]
    with torch.no_grad():
        uniform.lm_head.weight.zero_()  # logits 0 everywhere: pA uniform, the contrast adds nothing
    cd = ContrastiveDecodingEngine(expert, tok, amateur=uniform, alpha=0.1).generate(prompts, GenerationSettings(12), 3, progress=False)
    greedy = HFEngine(expert, tok).generate(prompts, GenerationSettings(12), 3, progress=False)
    assert [g.token_ids for g in cd] == [g.token_ids for g in greedy]
    assert contrast.contrastive_choice(torch.tensor([[0.0, -1.0]]).log_softmax(-1), torch.zeros(1, 2), 0.5).tolist() == [0]




def test_shrunken_demo_grid_over_methods_writes_every_summary_with_efficiency(tmp_path):
    sweep = tmp_path / "multirun"
    args = [sys.executable, str(REPO / "train.py"), "-m", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
            "method=lightreasoner,sft,random_steps,no_contrast,contrastive_decoding", *SHRUNKEN_DEMO, "selection.beta=0.0"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert set(summaries) == {"lightreasoner", "sft", "random_steps", "no_contrast", "contrastive_decoding"}
    for name, s in summaries.items():
        assert s["status"] == "finished", name
        eff = s["efficiency"]
        assert set(eff) == {"training_problems", "optimisation", "problems_sampled", "tokens_generated", "tuned_tokens", "sampling", "stages"}
        assert all("wall_s" in v and "cpu_s" in v for v in eff["stages"].values())
        if name == "contrastive_decoding":
            assert eff["tuned_tokens"] is None and "contrastive_decoding" in s["eval"] and "tuned" not in s["eval"]
            continue
        assert eff["training_problems"] == 24 and eff["problems_sampled"] == 24 and eff["tokens_generated"] > 0
        assert eff["tuned_tokens"] > 0 and eff["sampling"]["wall_s"] > 0
    lr, sft = summaries["lightreasoner"], summaries["sft"]
    assert lr["efficiency"]["sampling"]["cached"] is False  # the first job sampled
    assert summaries["random_steps"]["efficiency"]["sampling"]["cached"] is True  # the others read the cache
    assert sft["selection"]["solutions_sampled"] == 24 * 4 and sft["efficiency"]["tokens_generated"] > 0
