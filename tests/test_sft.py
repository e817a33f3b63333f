"""TraceSFTModule: solution-only cross-entropy on (prompt, solution) traces."""

from __future__ import annotations

import math

import pytest
import torch

from lightreasoner.data import prompts
from lightreasoner.training.next_token import (
    IGNORE_INDEX,
    TraceSFTModule,
    collate_traces,
    encode_trace,
    encode_traces,
    trace_loss,
)
from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model

ROWS = [
    ("Tom has 3 apples and buys 4 more. How many?", "3 + 4 = 7. The answer is \\boxed{7}."),
    ("Mia has 10 pens and loses 2. How many are left?", "10 - 2 = 8. The answer is \\boxed{8}."),
    ("A jar holds 6 coins; 5 more are added. How many coins?", "6 + 5 = 11. The answer is \\boxed{11}."),
]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_encode_trace_labels_only_the_solution(tok):
    q, s = ROWS[0]
    e = encode_trace(tok, q, s, prompts.EVAL_SYSTEM)
    prompt_ids = prompts.encode_prompts(tok, [q], prompts.EVAL_SYSTEM)[0]
    sol_ids = tok(s, add_special_tokens=False)["input_ids"]
    assert e["input_ids"] == prompt_ids + sol_ids + [tok.eos_token_id]
    assert e["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert e["labels"][len(prompt_ids) :] == sol_ids + [tok.eos_token_id]
    # the prompt is the one sampling/evaluation build: chat template, generation prompt last
    assert tok.decode(e["input_ids"][: len(prompt_ids)]) == prompts.chat_prompt(tok, q, prompts.EVAL_SYSTEM)
    assert tok.decode(e["input_ids"][: len(prompt_ids)]).endswith("<|im_start|>assistant\n")


def test_encode_traces_matches_one_by_one(tok):
    systems = [prompts.SAMPLING_SYSTEM, prompts.EVAL_SYSTEM]
    batch = encode_traces(tok, ROWS, systems)
    single = [encode_trace(tok, q, s, sysm) for q, s in ROWS for sysm in systems]
    assert batch == single


def test_collate_pads_and_masks(tok):
    ex = encode_traces(tok, ROWS, [prompts.EVAL_SYSTEM])
    for side in ("left", "right"):
        b = collate_traces(ex, tok.pad_token_id, padding_side=side)
        lengths = b["attention_mask"].sum(1).tolist()
        assert lengths == [len(e["input_ids"]) for e in ex]
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    with pytest.raises(ValueError, match="padding_side"):
        collate_traces(ex, 0, padding_side="middle")


def _manual_loss(model, examples):
    """Per-example teacher-forced CE on solution tokens only, no padding at all."""
    total, n = 0.0, 0
    for e in examples:
        ids = torch.tensor([e["input_ids"]])
        logits = model(input_ids=ids).logits[0, :-1]
        labels = torch.tensor(e["labels"][1:])
        keep = labels != IGNORE_INDEX
        total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
        n += int(keep.sum())
    return total / n, n


def test_trace_loss_equals_solution_only_ce_for_either_padding(tok):
    model = build_tiny_model(tok, seed=3, hidden_size=32, num_layers=2)
    ex = encode_traces(tok, ROWS, [prompts.SAMPLING_SYSTEM])
    want, n_want = _manual_loss(model, ex)
    with torch.no_grad():
        for side in ("right", "left"):
            loss, n = trace_loss(model, collate_traces(ex, tok.pad_token_id, padding_side=side))
            assert int(n) == n_want
            assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6), side


def test_prompt_positions_are_masked(tok):
    """The loss counts solution tokens only: labelling the prompt too changes loss and count;
    a wrong solution label changes the loss; no labelled position gives a zero loss."""
    model = build_tiny_model(tok, seed=4, hidden_size=32, num_layers=1)
    ex = encode_traces(tok, ROWS[:1], [prompts.EVAL_SYSTEM])
    b = collate_traces(ex, tok.pad_token_id)
    n_sol = len(tok(ROWS[0][1], add_special_tokens=False)["input_ids"]) + 1
    with torch.no_grad():
        base, n = trace_loss(model, b)
        assert int(n) == n_sol
        unmasked = dict(b, labels=b["input_ids"].clone())
        loss_all, n_all = trace_loss(model, unmasked)
        assert int(n_all) == b["input_ids"].shape[1] - 1 > n_sol
        assert loss_all.item() != pytest.approx(base.item())
        first_sol = int((b["labels"][0] != IGNORE_INDEX).nonzero()[0])
        changed = dict(b, labels=b["labels"].clone())
        changed["labels"][0, first_sol] = (changed["labels"][0, first_sol] + 1) % len(tok)
        assert trace_loss(model, changed)[0].item() != pytest.approx(base.item())
        empty = dict(b, labels=torch.full_like(b["labels"], IGNORE_INDEX))
        loss, n = trace_loss(model, empty)
        assert int(n) == 0 and loss.item() == 0.0


def test_module_lowers_the_loss(tok, tmp_path):
    import lightning as L

    model = build_tiny_model(tok, seed=5, hidden_size=32, num_layers=2)
    ex = encode_traces(tok, ROWS, [prompts.SAMPLING_SYSTEM, prompts.EVAL_SYSTEM])
    batch = collate_traces(ex, tok.pad_token_id)
    with torch.no_grad():
        before = trace_loss(model, batch)[0].item()
    module = TraceSFTModule(model, lr=1e-2, warmup_steps=2, max_steps=30, schedule="cosine")
    loader = torch.utils.data.DataLoader(ex, batch_size=6, collate_fn=lambda b: collate_traces(b, tok.pad_token_id))
    trainer = L.Trainer(accelerator="cpu", max_steps=30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, loader)
    model.eval()
    with torch.no_grad():
        after = trace_loss(model, batch)[0].item()
    assert after < 0.5 * before, (before, after)


def test_only_trainable_parameters_are_optimised(tok):
    model = build_tiny_model(tok, seed=6, hidden_size=32, num_layers=1)
    for name, p in model.named_parameters():
        p.requires_grad = "lm_head" in name
    opt = TraceSFTModule(model).configure_optimizers()["optimizer"]
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == 1 and params[0] is model.lm_head.weight
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="no trainable"):
        TraceSFTModule(model).configure_optimizers()


def test_schedule(tok):
    model = build_tiny_model(tok, seed=7, hidden_size=16, num_layers=1)
    m = TraceSFTModule(model, lr=1.0, warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert m.lr_factor(0) == pytest.approx(0.1)
    assert m.lr_factor(9) == pytest.approx(1.0)
    assert m.lr_factor(10) == pytest.approx(1.0)
    assert m.lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert m.lr_factor(110) == pytest.approx(0.1)
    lin = TraceSFTModule(model, lr=1.0, max_steps=100, schedule="linear")
    assert lin.lr_factor(50) == pytest.approx(0.5) and lin.lr_factor(100) == 0.0
    assert TraceSFTModule(model, schedule="constant").lr_factor(10**6) == 1.0
    with pytest.raises(ValueError, match="max_steps"):
        TraceSFTModule(model, schedule="cosine")
    with pytest.raises(ValueError, match="schedule"):
        TraceSFTModule(model, schedule="step")
