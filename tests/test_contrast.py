"""contrast.py against hand-computed values (METHOD.md steps 3-6 and the stage-2 loss)."""

import math

import pytest
import torch

from lightreasoner.core import contrast


def logp(*p):
    return torch.tensor(p, dtype=torch.float64).log()


def test_kl_shared_same_width():
    # KL([.5,.25,.25] || uniform(3)) = .5 ln(.5/(1/3)) + 2 * .25 ln(.25/(1/3))
    kl = contrast.kl_shared(logp(0.5, 0.25, 0.25), logp(1 / 3, 1 / 3, 1 / 3))
    want = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert float(kl) == pytest.approx(want, abs=1e-6)


def test_kl_shared_amateur_wider_no_renormalisation():
    # shared = 3 ids; the amateur's 4th id is ignored, nothing renormalised:
    # .5 ln(.5/.25) + .25 ln(1) + .25 ln(1) = .5 ln 2
    kl = contrast.kl_shared(logp(0.5, 0.25, 0.25), logp(0.25, 0.25, 0.25, 0.25))
    assert float(kl) == pytest.approx(0.5 * math.log(2), abs=1e-6)


def test_kl_shared_expert_wider_can_be_negative():
    # expert mass on id 3 is dropped (no renormalisation): .125 ln(.125/.25) = -.125 ln 2
    kl = contrast.kl_shared(logp(0.5, 0.25, 0.125, 0.125), logp(0.5, 0.25, 0.25))
    assert float(kl) == pytest.approx(-0.125 * math.log(2), abs=1e-6)


def test_kl_zero_expert_probability_contributes_nothing():
    le = torch.tensor([0.0, float("-inf")])
    la = logp(0.25, 0.75)
    assert float(contrast.kl_shared(le, la)) == pytest.approx(-math.log(0.25), abs=1e-6)


def test_kl_batched_shapes():
    le = torch.randn(2, 3, 7).log_softmax(-1)
    la = torch.randn(2, 3, 5).log_softmax(-1)
    kl = contrast.kl_shared(le, la)
    assert kl.shape == (2, 3)
    want = (le[..., :5].exp() * (le[..., :5] - la)).sum(-1)
    torch.testing.assert_close(kl, want.float(), atol=1e-6, rtol=0)


def test_tail_mask():
    lp = logp(0.5, 0.3, 0.1, 0.1)
    assert contrast.tail_mask(lp, 0.2).tolist() == [True, True, True, True]  # .1 >= .2*.5 (boundary kept)
    assert contrast.tail_mask(lp, 0.25).tolist() == [True, True, False, False]  # threshold .125
    assert contrast.tail_mask(lp, 1.0).tolist() == [True, False, False, False]
    # given max (subset of the vocabulary): threshold .2 * .8 = .16
    assert contrast.tail_mask(lp, 0.2, max_logp_e=torch.tensor(0.8).log().double()).tolist() == [True, True, False, False]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            contrast.tail_mask(lp, bad)


def test_top_candidates_shared_ids_and_alpha_min():
    # expert width 5, amateur 4: id 4 (p=.2) is not shared
    le = logp(0.05, 0.4, 0.3, 0.05, 0.2)
    la = logp(0.1, 0.2, 0.3, 0.4)
    ids, lpe, lpa, valid, mx = contrast.top_candidates(le, la, alpha_min=0.5, max_candidates=3)
    assert ids[:2].tolist() == [1, 2]
    assert valid.tolist() == [True, True, False]  # threshold .5 * .4 = .2
    assert float(mx) == pytest.approx(math.log(0.4))
    assert lpe[:2].tolist() == pytest.approx([math.log(0.4), math.log(0.3)], abs=1e-6)
    assert lpa[:2].tolist() == pytest.approx([math.log(0.2), math.log(0.3)], abs=1e-6)
    ids, *_ = contrast.top_candidates(le, la, alpha_min=0.01, max_candidates=100)
    assert ids.shape == (4,)  # K = min(max_candidates, shared width)


def test_soft_label_hand_values():
    lpe = logp(0.5, 0.3, 0.1)
    lpa = logp(0.25, 0.5, 0.1)
    w = contrast.soft_label(lpe, lpa, torch.tensor(0.5).log().double(), alpha=0.25)
    # kept {0, 1}; scores ln 2, ln .6 -> weights 2/2.6, .6/2.6
    assert w.tolist() == pytest.approx([2 / 2.6, 0.6 / 2.6, 0.0], abs=1e-6)
    # invalid slot masked
    w = contrast.soft_label(lpe, lpa, torch.tensor(0.5).log().double(), alpha=0.1, valid=torch.tensor([True, False, True]))
    # kept {0, 2}; scores ln 2, ln 1 -> 2/3, 1/3
    assert w.tolist() == pytest.approx([2 / 3, 0.0, 1 / 3], abs=1e-6)


def test_soft_label_empty_set_is_zero_not_nan():
    w = contrast.soft_label(logp(0.1, 0.1), logp(0.5, 0.5), torch.tensor(0.8).log().double(), alpha=0.5)
    assert w.tolist() == [0.0, 0.0]


def test_keep_steps():
    kl = torch.tensor([0.5, 0.1, 0.4, 0.39, 0.0])
    assert contrast.keep_steps(kl, 0.4).tolist() == [False, False, True, False, False]  # step 0 never (first_step=1)
    assert contrast.keep_steps(kl, 0.4, first_step=0).tolist() == [True, False, True, False, False]
    assert contrast.keep_steps(kl, 0.0, first_step=0).all()
    assert contrast.keep_steps(kl, 0.0, first_step=0, length=3).tolist() == [True, True, True, False, False]
    two = contrast.keep_steps(kl.expand(2, 5), 0.0, first_step=0, length=torch.tensor([2, 4]))
    assert two.tolist() == [[True, True, False, False, False], [True, True, True, True, False]]
    with pytest.raises(ValueError, match="beta"):
        contrast.keep_steps(kl, -0.1)


def test_soft_label_entropy():
    assert float(contrast.soft_label_entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))
    assert float(contrast.soft_label_entropy(torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)


def test_distill_loss_value_and_gradient():
    logits = logp(0.5, 0.25, 0.25).float().unsqueeze(0).requires_grad_(True)
    ids = torch.tensor([[0, 1, 2]])
    w = torch.tensor([[0.75, 0.25, 0.0]])  # last slot is padding (weight 0)
    loss = contrast.distill_loss(logits, ids, w)
    # .75 ln(.75/.5) + .25 ln(.25/.25)
    assert loss.shape == (1,)
    assert float(loss.detach()) == pytest.approx(0.75 * math.log(1.5), abs=1e-6)
    loss.sum().backward()
    # d/dlogits KL(w || softmax) = softmax - w
    assert logits.grad[0].tolist() == pytest.approx([0.5 - 0.75, 0.0, 0.25], abs=1e-6)


def test_distill_loss_zero_when_model_matches_target():
    w = torch.tensor([[0.6, 0.4]])
    logits = torch.tensor([[math.log(0.6), math.log(0.4), -1e4]])
    assert float(contrast.distill_loss(logits, torch.tensor([[0, 1]]), w)) == pytest.approx(0.0, abs=1e-6)
