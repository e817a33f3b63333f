"""The objectives (``distill.loss``: forward KL, reverse KL, generalized JSD) and the target
shaping (``selection.tau``, ``selection.top_k``): each against a hand-computed value, the
distillation module dispatching to them, and their settings checked."""

from __future__ import annotations

import math

import pytest
import torch
from _samples import random_trace_samples

from lightreasoner.core import contrast
from lightreasoner.training.datamodule import DistillDataModule
from lightreasoner.training.distill import DistillModule, DistillSettings
from lightreasoner.models.tiny import build_char_tokenizer, build_tiny_model

# q = softmax(logits) = (.5, .25, .25); target vC = (.75, .25, 0) on ids {0, 1} (slot 2 is padding)
LOGITS = torch.tensor([[0.5, 0.25, 0.25]]).log()
IDS = torch.tensor([[0, 1, 2]])
W = torch.tensor([[0.75, 0.25, 0.0]])


def test_forward_kl_is_the_published_loss():
    got = contrast.objective_loss("forward_kl", LOGITS, IDS, W)
    assert float(got) == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.25), abs=1e-6)
    assert torch.equal(got, contrast.distill_loss(LOGITS, IDS, W))


def test_reverse_kl_hand_value_on_the_renormalised_support():
    # q on S = {0, 1} renormalised: (2/3, 1/3); KL(q_S || vC) = 2/3 ln((2/3)/.75) + 1/3 ln((1/3)/.25)
    expected = 2 / 3 * math.log((2 / 3) / 0.75) + 1 / 3 * math.log((1 / 3) / 0.25)
    assert float(contrast.objective_loss("reverse_kl", LOGITS, IDS, W)) == pytest.approx(expected, abs=1e-6)
    # zero when q_S equals the label, whatever mass the model puts outside S
    outside = torch.tensor([[0.3 * 0.75, 0.3 * 0.25, 0.7]]).log()
    assert float(contrast.reverse_kl_loss(outside, IDS, W)) == pytest.approx(0.0, abs=1e-6)
    # a one-candidate label gives nothing to learn (the documented degenerate case)
    assert float(contrast.reverse_kl_loss(LOGITS, torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.0]]))) == pytest.approx(0.0, abs=1e-7)


def test_jsd_hand_value_with_the_closed_form_rest():
    # beta .5: M = (.625, .25, .125); KL(vC||M) = .75 ln(.75/.625); KL(q||M) = .5 ln(.5/.625) + .25 ln(.25/.125)
    kl_t = 0.75 * math.log(0.75 / 0.625)
    kl_q = 0.5 * math.log(0.5 / 0.625) + 0.25 * math.log(0.25 / 0.125)
    got = contrast.objective_loss("jsd", LOGITS, IDS, W, jsd_beta=0.5)
    assert float(got) == pytest.approx(0.5 * kl_t + 0.5 * kl_q, abs=1e-6)
    # beta .2: M = .2 vC + .8 q = (.55, .25, .2)
    m = (0.55, 0.25, 0.2)
    kl_t = 0.75 * math.log(0.75 / m[0])
    kl_q = 0.5 * math.log(0.5 / m[0]) + 0.25 * math.log(0.25 / m[2])
    got = contrast.jsd_loss(LOGITS, IDS, W, beta=0.2)
    assert float(got) == pytest.approx(0.2 * kl_t + 0.8 * kl_q, abs=1e-6)
    # zero when the model is the label (no mass outside S)
    assert float(contrast.jsd_loss(torch.tensor([[math.log(0.75), math.log(0.25), -1e4]]), IDS, W)) == pytest.approx(0.0, abs=1e-6)
    # small beta: JSD / beta tends to the forward KL
    small = float(contrast.jsd_loss(LOGITS, IDS, W, beta=1e-4)) / 1e-4
    assert small == pytest.approx(float(contrast.distill_loss(LOGITS, IDS, W)), rel=1e-2)


def test_every_loss_has_the_gradient_of_its_value():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=g, dtype=torch.float64)
    ids = torch.tensor([[0, 2, 5], [1, 3, 0], [6, 4, 2]])
    w = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.1, 0.0], [1.0, 0.0, 0.0]])
    for kind in contrast.LOSSES:
        x = logits.clone().float().requires_grad_(True)
        contrast.objective_loss(kind, x, ids, w, 0.3).sum().backward()
        eps = 1e-3
        for i, j in [(0, 0), (0, 6), (1, 3), (2, 6)]:
            up, down = logits.clone(), logits.clone()
            up[i, j] += eps
            down[i, j] -= eps
            num = (contrast.objective_loss(kind, up.float(), ids, w, 0.3).sum() - contrast.objective_loss(kind, down.float(), ids, w, 0.3).sum()) / (2 * eps)
            assert float(x.grad[i, j]) == pytest.approx(float(num), abs=2e-3), (kind, i, j)


def test_bad_loss_and_jsd_beta():
    with pytest.raises(ValueError, match="distill.loss"):
        contrast.objective_loss("kl", LOGITS, IDS, W)
    with pytest.raises(ValueError, match="jsd_beta"):
        contrast.jsd_loss(LOGITS, IDS, W, beta=1.0)


def test_tau_and_top_k_hand_values():
    lpe = torch.tensor([0.4, 0.3, 0.2]).log()
    lpa = torch.tensor([0.1, 0.4, 0.3]).log()
    mx = torch.tensor(0.4).log()
    # pE / pA = 4, .75, 2/3; tau 2: weights proportional to sqrt of those
    r = [2.0, math.sqrt(0.75), math.sqrt(2 / 3)]
    w = contrast.soft_label(lpe, lpa, mx, alpha=0.2, tau=2.0)
    assert w.tolist() == pytest.approx([x / sum(r) for x in r], abs=1e-6)
    # top-2 of them, renormalised (the same as the softmax over the two best-scored candidates)
    w = contrast.soft_label(lpe, lpa, mx, alpha=0.2, tau=2.0, top_k=2)
    assert w.tolist() == pytest.approx([r[0] / (r[0] + r[1]), r[1] / (r[0] + r[1]), 0.0], abs=1e-6)
    # the defaults are bit-identical to the published label
    plain = torch.softmax((lpe - lpa).float(), -1)
    assert torch.equal(contrast.soft_label(lpe, lpa, mx, alpha=0.2), plain)
    # no contrast: softmax(log pE / tau) over V_t
    e = contrast.expert_label(lpe, mx, alpha=0.2, tau=0.5)
    sq = [0.16, 0.09, 0.04]
    assert e.tolist() == pytest.approx([x / sum(sq) for x in sq], abs=1e-6)
    # ties go to the earlier slot; k beyond the support changes nothing
    assert contrast.truncate_top_k(torch.tensor([0.25, 0.25, 0.5]), 2).tolist() == pytest.approx([1 / 3, 0.0, 2 / 3])
    assert contrast.truncate_top_k(torch.tensor([0.6, 0.4]), 5).tolist() == pytest.approx([0.6, 0.4])
    with pytest.raises(ValueError, match="tau"):
        contrast.soft_label(lpe, lpa, mx, alpha=0.2, tau=0.0)
    with pytest.raises(ValueError, match="top_k"):
        contrast.truncate_top_k(w, 0)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_distill_module_trains_with_the_configured_loss(kind):
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=3, hidden_size=32, num_layers=1)
    module = DistillModule("tiny", lora={"r": 2, "alpha": 4, "dropout": 0.0}, model=model, loss=kind, jsd_beta=0.3, max_steps=1)
    samples = random_trace_samples(4, 0, len(tok), 8, 16, 3, 4, 3)
    batch = DistillDataModule(samples, steps_per_batch=64, accumulate_grad_batches=1, shuffle=False).epoch_batches()[0]
    out = module.compute_loss(batch)
    logits = module.step_logits(batch)
    expected = contrast.objective_loss(kind, logits, batch["target_ids"], batch["target_w"], 0.3)
    torch.testing.assert_close(out["per_step"], expected.detach())
    assert module.hparams["loss"] == kind
    with pytest.raises(ValueError, match="distill.loss"):
        DistillModule("tiny", model=build_tiny_model(tok, seed=3, hidden_size=32, num_layers=1), loss="mse")


@pytest.mark.parametrize(
    "cfg,msg",
    [({"loss": "kl"}, "distill.loss"), ({"jsd_beta": 0.0}, "distill.jsd_beta"), ({"jsd_beta": True}, "distill.jsd_beta")],
)
def test_distill_settings_check_the_objective(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        DistillSettings.from_cfg(cfg)
    assert DistillSettings.from_cfg({}).loss == "forward_kl"
