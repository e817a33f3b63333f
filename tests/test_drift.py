"""The drift guard on tiny models: KL(tuned || base), implausible mass and perplexity against a
reference computed with a separate copy of the base; the schedule, early stopping and the best
weights kept; limits reported in the summary; the held-out data and the settings checked."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _samples import random_trace_samples
from omegaconf import OmegaConf

import lightreasoner.eval.drift as drift
from lightreasoner.training.datamodule import DistillDataModule
from lightreasoner.training.distill import DistillModule
from lightreasoner.eval.drift import (
    DriftGuard,
    DriftSettings,
    HeldOut,
    solution_perplexity,
    trace_drift,
)
from lightreasoner.run.heldout import gold_solutions, heldout_problems
from lightreasoner.run.summary import print_summary
from lightreasoner.data.records import Problem
from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model

LORA = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "lm_head"]}


@pytest.fixture
def tok():
    return build_char_tokenizer()


def module_and_base(tok, seed=0):
    model = build_tiny_model(tok, seed=seed, hidden_size=32, num_layers=1)
    base = copy.deepcopy(model).eval()
    module = DistillModule("tiny", lora=LORA, model=model, max_steps=8,
                           optimizer={"_target_": "torch.optim.AdamW", "lr": 5e-2, "weight_decay": 0.0})
    return module, base


def seqs(n, seed, vocab, prompt=4, cont=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, vocab, (prompt + i % 2,), generator=g).tolist(), torch.randint(3, vocab, (cont - i % 3,), generator=g).tolist())
            for i in range(n)]


def reference(tuned, base, pairs, junk_pe):
    """Unpadded, one sequence at a time: per-token KL(tuned || base), implausible mass, NLL."""
    kl, mass_t, mass_b, nll_t, nll_b, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for p, c in pairs:
            x = torch.tensor([p + c])
            lt = tuned(x).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
            lb = base(x).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
            kl += float((lt.exp() * (lt - lb)).sum())
            bad = lb.exp() < junk_pe
            mass_t += float(lt.exp()[bad].sum())
            mass_b += float(lb.exp()[bad].sum())
            y = torch.tensor(c).unsqueeze(-1)
            nll_t -= float(lt.gather(-1, y).sum())
            nll_b -= float(lb.gather(-1, y).sum())
            n += len(c)
    return kl / n, mass_t / n, mass_b / n, math.exp(nll_t / n), math.exp(nll_b / n)


def test_measurements_equal_a_reference_with_a_separate_base(tok):
    module, base = module_and_base(tok)
    peft_model = module.model.eval()
    pairs = seqs(5, 0, len(tok))
    pad = tok.pad_token_id
    # an untrained adapter (B = 0) is the base: no drift at all
    start = trace_drift(peft_model, pairs, pad, junk_pe=0.02, batch_size=2)
    assert start["kl_tuned_base"] == pytest.approx(0.0, abs=1e-6)
    assert start["implausible_mass"] == pytest.approx(start["implausible_mass_base"], abs=1e-6)
    assert solution_perplexity(peft_model, pairs, pad, batch_size=3)["ppl_ratio"] == pytest.approx(1.0, abs=1e-5)
    # a moved adapter: the batched, padded measurement equals the per-sequence reference
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    kl, mass_t, mass_b, ppl_t, ppl_b = reference(peft_model, base, pairs, 0.02)
    got = trace_drift(peft_model, pairs, pad, junk_pe=0.02, batch_size=2)
    assert kl > 1e-3
    assert got == pytest.approx({"kl_tuned_base": kl, "implausible_mass": mass_t, "implausible_mass_base": mass_b}, rel=1e-4, abs=1e-6)
    got = solution_perplexity(peft_model, pairs, pad, batch_size=3)
    assert got == pytest.approx({"ppl_tuned": ppl_t, "ppl_base": ppl_b, "ppl_ratio": ppl_t / ppl_b}, rel=1e-4)


def test_the_guard_measures_on_schedule_stops_early_and_keeps_the_best(tok, tmp_path, monkeypatch):
    module, _ = module_and_base(tok, seed=1)
    scripted = iter([0.2, 0.5, 0.3, 0.1, 0.9])  # val accuracy at updates 0, 1, 2, 3, ...
    snapshots = {}

    def fake_accuracy(model, tokenizer, heldout, batch_size=8):
        step = len(snapshots)
        snapshots[step] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        return next(scripted)

    monkeypatch.setattr(drift, "validation_accuracy", fake_accuracy)
    heldout = HeldOut(traces=seqs(3, 2, len(tok)), solutions=seqs(2, 3, len(tok)), val_problems=[Problem("p", "q", "1", "numeric")],
                      val_prompts=[[1, 2, 3]], junk_rate=0.25)
    settings = DriftSettings(enabled=True, every_n_updates=1, early_stopping_patience=2, keep_best=True, max_kl=1e-9)
    guard = DriftGuard(settings, heldout, tok)
    samples = random_trace_samples(6, 0, len(tok), 8, 16, 3, 4, 3, ids=(3, len(tok)))
    dm = DistillDataModule(samples, steps_per_batch=4, accumulate_grad_batches=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=8, accumulate_grad_batches=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=pl.loggers.CSVLogger(str(tmp_path), name="logs"),
                         callbacks=[guard], default_root_dir=str(tmp_path), log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    s = guard.summary()
    # measured before training and after each update; 0.5 at update 1, then two worse: stop at 3
    assert [m["step"] for m in s["measurements"]] == [0, 1, 2, 3]
    assert trainer.global_step == 3 and s["stopped_early"]
    assert (s["best_step"], s["best_val_accuracy"], s["kept_step"]) == (1, 0.5, 1)
    kept = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    assert all(torch.equal(kept[n], snapshots[1][n]) for n in kept)  # the weights of update 1
    assert not all(torch.equal(kept[n], snapshots[3][n]) for n in kept)
    # the kept model's figures, its limit, the target junk rate
    assert s["final"]["val_accuracy"] == 0.5 and s["final"]["junk_rate"] == 0.25
    assert s["final"]["kl_tuned_base"] == s["measurements"][1]["kl_tuned_base"] > 1e-9
    assert [e["figure"] for e in s["exceeded"]] == ["kl_tuned_base"] and not s["within_limits"]
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    keys = set().union(*(r.keys() for r in rows))
    assert {"drift/kl_tuned_base", "drift/ppl_ratio", "drift/implausible_mass", "val/accuracy", "drift/junk_rate", "drift/beyond_limit"} <= keys


def test_a_run_beyond_a_limit_says_so_in_its_printed_summary(capsys):
    guard = DriftGuard(DriftSettings(max_kl=0.1, max_ppl_ratio=2.0, max_junk_rate=0.5), HeldOut(traces=[], junk_rate=0.6), None)
    guard.history = [{"step": 0, "kl_tuned_base": 0.0, "ppl_ratio": 1.0}, {"step": 4, "kl_tuned_base": 0.3, "ppl_ratio": 1.5}]
    guard.kept_step = 4
    s = guard.summary()
    assert {e["figure"]: e["value"] for e in s["exceeded"]} == {"kl_tuned_base": 0.3, "junk_rate": 0.6}
    print_summary({"method": "lightreasoner", "model_pair": "p", "dataset": "d", "beta": 0.4, "alpha": 0.2, "wall_s": {}, "drift": s})
    out = capsys.readouterr().out
    assert "BEYOND LIMIT" in out and "kl_tuned_base 0.3 > 0.1" in out
    guard.history[-1]["kl_tuned_base"] = 0.05
    guard.heldout.junk_rate = 0.1
    assert guard.summary()["within_limits"]


def test_heldout_problems_skip_the_training_ones_and_solutions_come_from_the_file(tmp_path):
    rows = [{"question": f"q{i}", "answer": str(i), "solution": f"{i} = {i}. The answer is \\boxed{{{i}}}."} for i in range(10)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = OmegaConf.create({
        "seed": 0,
        "dataset": {"name": "toy", "format": "generic", "fields": {"question": "question", "answer": "answer"},
                    "answer_type": "numeric", "files": {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")},
                    "hub": None, "split": "train", "max_problems": 6, "shuffle": False},
    })
    same = heldout_problems(cfg, DriftSettings(split="train", problems=3, val_problems=2), training_problems=6)
    assert [p.id for p in same] == ["toy/train/6", "toy/train/7", "toy/train/8"]
    other = heldout_problems(cfg, DriftSettings(split="validation", problems=2, val_problems=4), training_problems=6)
    assert [p.id for p in other] == [f"toy/validation/{i}" for i in range(4)]
    assert gold_solutions(cfg.dataset, "train", same, "solution")[0] == "6 = 6. The answer is \\boxed{6}."
    with pytest.raises(ValueError, match="drift.solution_field"):
        gold_solutions(cfg.dataset, "train", same, "worked")
    with pytest.raises(ValueError, match="drift.split"):
        heldout_problems(cfg, DriftSettings(split="test"), training_problems=6)
    with pytest.raises(ValueError, match="drift.split"):
        heldout_problems(cfg, DriftSettings(split="train"), training_problems=10)


@pytest.mark.parametrize(
    "cfg,msg",
    [
        ({"enabled": "yes"}, "drift.enabled"),
        ({"every_n_updates": 0}, "drift.every_n_updates"),
        ({"problems": 0}, "drift.problems"),
        ({"val_problems": -1}, "drift.val_problems"),
        ({"early_stopping_patience": 2, "val_problems": 0}, "drift.early_stopping_patience"),
        ({"junk_pe": 1.0}, "drift.junk_pe"),
        ({"max_kl": -0.1}, "drift.max_kl"),
        ({"max_ppl_ratio": "high"}, "drift.max_ppl_ratio"),
        ({"limit": 1}, r"drift: unknown field\(s\) \['limit'\]"),
    ],
)
def test_bad_drift_settings_name_the_key(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        DriftSettings.from_cfg(cfg)
    assert not DriftSettings.from_cfg(None).enabled
