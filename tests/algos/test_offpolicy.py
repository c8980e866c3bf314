"""Truncated importance sampling weights, by hand."""

import math

import pytest
import torch

from tether.algos.offpolicy import truncated_importance_weights


def test_weights_are_the_truncated_ratio_per_token():
    """Row 0: gaps log(1.5), log(0.5), log(3) -> ratios 1.5, 0.5, 3 -> min(., 2) = 1.5, 0.5, 2.
    Row 1: gap 0 -> 1; its second token is padding (weight 1, left out of the stats; its gap of
    +100 would overflow exp without the mask). Stats over the 4 real tokens: mean weight
    (1.5 + 0.5 + 2 + 1) / 4 = 1.25, truncated 1/4, mean |gap| (log 1.5 + log 2 + log 3 + 0) / 4."""
    engine = torch.tensor([[-1.0, -1.0, -2.0], [-0.5, -100.0, 0.0]])
    trainer = engine + torch.tensor([[math.log(1.5), math.log(0.5), math.log(3.0)], [0.0, 200.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    w, stats = truncated_importance_weights(trainer, engine, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 2.0], [1.0, 1.0, 1.0]]), atol=1e-6)
    assert stats["tis_weight"].item() == pytest.approx(1.25, abs=1e-6)
    assert stats["tis_truncated"].item() == pytest.approx(0.25)
    assert stats["logprob_gap"].item() == pytest.approx((math.log(1.5) + math.log(2) + math.log(3)) / 4, abs=1e-6)


def test_no_gradient_flows_through_the_weights_and_agreement_gives_one():
    lp = torch.tensor([[-0.3, -1.2]], requires_grad=True)
    w, stats = truncated_importance_weights(lp, lp.detach().clone(), torch.ones(1, 2, dtype=torch.bool))
    assert not w.requires_grad and torch.equal(w, torch.ones(1, 2))
    assert stats["logprob_gap"].item() == 0.0 and stats["tis_truncated"].item() == 0.0


def test_weighting_the_advantage_equals_weighting_the_clipped_loss():
    """The recipes multiply advantages by w; for w >= 0 that is w times the per-token PPO loss."""
    adv, ratio, w = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.5, 0.7, 1.0]), torch.tensor([0.5, 2.0, 1.3])
    per_token = lambda a: torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))  # noqa: E731
    assert torch.allclose(per_token(adv * w), w * per_token(adv))


def test_cap_must_be_positive():
    with pytest.raises(ValueError):
        truncated_importance_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=0.0)
