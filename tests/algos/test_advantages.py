"""Hand-worked checks for tether.algos.advantages."""

import math

import pytest
import torch
from torch.testing import assert_close

from tether.algos.advantages import (
    gae,
    grpo_advantages,
    kl_penalty_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_advantages,
)

NAN = float("nan")


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# ---------------------------------------------------------------- masked stats


def test_masked_mean_all_and_per_row():
    """Valid entries 1, 2 (row 0) and 4 (row 1).
    all: (1 + 2 + 4) / 3 = 7/3;  dim=1: row 0 (1 + 2)/2 = 1.5, row 1 4/1 = 4.
    Padding holds NaN / 1e9 and must not leak in."""
    x = t([[1.0, 2.0, NAN], [4.0, 1e9, NAN]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert_close(masked_mean(x, mask), t(7 / 3))
    assert_close(masked_mean(x, mask, dim=1), t([1.5, 4.0]))
    # 0/1 float masks behave the same
    assert_close(masked_mean(x, mask.double()), t(7 / 3))


def test_masked_mean_empty_mask_is_zero():
    x = t([[1.0, 2.0]])
    assert_close(masked_mean(x, torch.zeros(1, 2, dtype=torch.bool)), t(0.0))


def test_masked_var_by_hand():
    """Valid entries 1, 2, 4: mean 7/3, deviations -4/3, -1/3, 5/3,
    squares 16/9 + 1/9 + 25/9 = 42/9.
    biased: 42/9 / 3 = 14/9;  unbiased: 42/9 / 2 = 7/3."""
    x = t([[1.0, 2.0, 100.0], [4.0, -50.0, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert_close(masked_var(x, mask, unbiased=False), t(14 / 9))
    assert_close(masked_var(x, mask, unbiased=True), t(7 / 3))


def test_masked_var_single_element_is_zero():
    x = t([[3.0, NAN]])
    mask = torch.tensor([[True, False]])
    assert_close(masked_var(x, mask), t(0.0))


def test_masked_whiten_by_hand():
    """Valid entries 1 and 3: mean 2, unbiased var ((-1)^2 + 1^2)/1 = 2, std sqrt(2).
    whitened = (-1/sqrt2, +1/sqrt2) = (-0.70710678, 0.70710678); padding -> 0.
    shift_mean=False adds the mean back: 2 -/+ 0.70710678."""
    x = t([[1.0, 3.0, 1000.0]])
    mask = torch.tensor([[True, True, False]])
    s = 1 / math.sqrt(2)
    assert_close(masked_whiten(x, mask, eps=0.0), t([[-s, s, 0.0]]))
    assert_close(masked_whiten(x, mask, shift_mean=False, eps=0.0), t([[2 - s, 2 + s, 0.0]]))


def test_masked_whiten_properties_and_padding_invariance():
    """Whitened valid entries have mean 0 and (unbiased) std 1; padding values are irrelevant."""
    x = torch.randn(4, 7, dtype=torch.float64) * 3 + 5
    lengths = torch.tensor([7, 3, 5, 1])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    w = masked_whiten(x, mask)
    valid = w[mask]
    assert abs(valid.mean().item()) < 1e-10
    assert abs(valid.std().item() - 1.0) < 1e-6
    assert (w[~mask] == 0).all()
    x2 = torch.where(mask, x, torch.full_like(x, 1e6))
    assert_close(masked_whiten(x2, mask), w)


# ---------------------------------------------------------------------- GAE


def test_gae_gamma1_lam_half_by_hand():
    """T=3, gamma=1, lam=0.5, r = (0, 0, 1), V = (0.5, 0.25, 0.5), V after the end = 0.
    t=2: delta = 1 + 1*0    - 0.5  =  0.5;  A2 = 0.5
    t=1: delta = 0 + 1*0.5  - 0.25 =  0.25; A1 = 0.25 + 0.5*0.5 = 0.5
    t=0: delta = 0 + 1*0.25 - 0.5  = -0.25; A0 = -0.25 + 0.5*0.5 = 0
    returns = A + V = (0.5, 0.75, 1.0).
    Cross-check with lambda-returns: G2 = 1; G1 = 0 + 0.5*V2 + 0.5*G2 = 0.75;
    G0 = 0 + 0.5*V1 + 0.5*G1 = 0.125 + 0.375 = 0.5."""
    r = t([[0.0, 0.0, 1.0]])
    v = t([[0.5, 0.25, 0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(r, v, mask, gamma=1.0, lam=0.5)
    assert_close(adv, t([[0.0, 0.5, 0.5]]))
    assert_close(ret, t([[0.5, 0.75, 1.0]]))


def test_gae_lam1_is_monte_carlo_with_discount():
    """gamma=0.5, lam=1: A_t = discounted return - V.
    r = (1, 0, 2), V = (1, 1, 1): G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5
    -> A = (0.5, 0, 1), returns = G = (1.5, 1, 2)."""
    r = t([[1.0, 0.0, 2.0]])
    v = t([[1.0, 1.0, 1.0]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert_close(adv, t([[0.5, 0.0, 1.0]]))
    assert_close(ret, t([[1.5, 1.0, 2.0]]))


def test_gae_lam0_is_one_step_td():
    """lam=0: A_t = delta_t. r = (0, 1), V = (2, 3), gamma=0.9:
    delta1 = 1 + 0 - 3 = -2; delta0 = 0 + 0.9*3 - 2 = 0.7."""
    adv, ret = gae(t([[0.0, 1.0]]), t([[2.0, 3.0]]), torch.ones(1, 2), gamma=0.9, lam=0.0)
    assert_close(adv, t([[0.7, -2.0]]))
    assert_close(ret, t([[2.7, 1.0]]))


def test_gae_right_padding_by_hand():
    """Row 1 has 2 valid tokens; its t=2 slot is padding with garbage reward/value.
    gamma=1, lam=0.5, r = (0, 1), V = (0.5, 0.5), value after t=1 is 0 (NOT the pad value):
    t=1: delta = 1 + 0 - 0.5 = 0.5;   A1 = 0.5
    t=0: delta = 0 + 0.5 - 0.5 = 0;   A0 = 0 + 0.5*0.5 = 0.25
    returns = (0.75, 1.0, 0). Row 0 is the first hand-worked case."""
    r = t([[0.0, 0.0, 1.0], [0.0, 1.0, 77.0]])
    v = t([[0.5, 0.25, 0.5], [0.5, 0.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(r, v, mask, gamma=1.0, lam=0.5)
    assert_close(adv, t([[0.0, 0.5, 0.5], [0.25, 0.5, 0.0]]))
    assert_close(ret, t([[0.5, 0.75, 1.0], [0.75, 1.0, 0.0]]))
    # any padding content gives the same result
    r2, v2 = r.clone(), v.clone()
    r2[1, 2], v2[1, 2] = NAN, 1e9
    adv2, ret2 = gae(r2, v2, mask, gamma=1.0, lam=0.5)
    assert_close(adv2, adv)
    assert_close(ret2, ret)


def test_gae_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


# --------------------------------------------------------- KL-shaped rewards


def test_kl_penalty_rewards_by_hand():
    """kl = logp - ref:  row 0: (-1+1.5, -2+1, -1+1) = (0.5, -1, 0)
                         row 1: (-0.5+1, -1+1, pad) = (0.5, 0, 0)
    -0.1 * kl = (-0.05, 0.1, 0) and (-0.05, 0, 0);
    scores (2, -1) go to the last valid token: t=2 in row 0, t=1 in row 1."""
    logp = t([[-1.0, -2.0, -1.0], [-0.5, -1.0, 5.0]])
    ref = t([[-1.5, -1.0, -1.0], [-1.0, -1.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalty_rewards(t([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    assert_close(kl, t([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert_close(rewards, t([[-0.05, 0.1, 2.0], [-0.05, -1.0, 0.0]]))


def test_kl_penalty_rewards_empty_row_and_tensor_coef():
    """A row with no valid token gets neither KL nor score; kl_coef may be a 0-d tensor.
    Row 0: kl = (0.2, 0), reward t0 = -0.5*0.2 + 3 = 2.9 (only valid token is also the last)."""
    logp = t([[0.0, 0.0], [0.0, 0.0]])
    ref = t([[-0.2, 0.0], [-1.0, -1.0]])
    mask = torch.tensor([[True, False], [False, False]])
    rewards, kl = kl_penalty_rewards(t([3.0, 4.0]), logp, ref, mask, kl_coef=t(0.5))
    assert_close(rewards, t([[2.9, 0.0], [0.0, 0.0]]))
    assert_close(kl, t([[0.2, 0.0], [0.0, 0.0]]))


# ------------------------------------------------------------ RLOO / GRPO


def test_rloo_by_hand():
    """k=3. Group (1, 2, 6): A = 1-(2+6)/2 = -3, 2-(1+6)/2 = -1.5, 6-(1+2)/2 = 4.5.
    Group (0, 0, 3): A = 0-(0+3)/2 = -1.5, -1.5, 3-0 = 3."""
    adv = rloo_advantages(t([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), k=3)
    assert_close(adv, t([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]))


def test_rloo_equals_scaled_mean_centering():
    """A_i = k/(k-1) (r_i - mean) -- checked on random data, plus group sums are 0."""
    r = torch.randn(12, dtype=torch.float64)
    adv = rloo_advantages(r, k=4)
    g = r.view(3, 4)
    assert_close(adv, (4 / 3 * (g - g.mean(1, keepdim=True))).reshape(-1))
    assert_close(adv.view(3, 4).sum(1), torch.zeros(3, dtype=torch.float64))


def test_grpo_by_hand():
    """k=2. Group (1, 3): mean 2, unbiased std sqrt(((-1)^2 + 1^2)/1) = sqrt 2
    -> A = -1/(sqrt2 + 1e-4), +1/(sqrt2 + 1e-4) = -0.70705678..., 0.70705678...
    Group (2, 2): std 0 -> A = 0/(0 + 1e-4) = 0.
    scale=False (Dr. GRPO): just r - mean = (-1, 1, 0, 0)."""
    r = t([1.0, 3.0, 2.0, 2.0])
    a = 1 / (math.sqrt(2) + 1e-4)
    assert_close(grpo_advantages(r, k=2), t([-a, a, 0.0, 0.0]))
    assert_close(grpo_advantages(r, k=2, scale=False), t([-1.0, 1.0, 0.0, 0.0]))


def test_grpo_group_of_three_by_hand():
    """Group (0, 0, 3): mean 1, deviations (-1, -1, 2), squares sum 6,
    unbiased var 6/2 = 3, std sqrt3 = 1.7320508 -> A = (-1, -1, 2) / sqrt3 (eps=0)."""
    s = math.sqrt(3)
    assert_close(grpo_advantages(t([0.0, 0.0, 3.0]), k=3, eps=0.0), t([-1 / s, -1 / s, 2 / s]))


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_size_errors(fn):
    with pytest.raises(ValueError, match="multiple of the group size"):
        fn(torch.zeros(5), k=2)
    with pytest.raises(ValueError, match="k must be >= 2"):
        fn(torch.zeros(4), k=1)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 2), k=2)
