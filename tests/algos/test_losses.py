"""Hand-worked checks for tether.algos.losses."""

import math

import pytest
import torch
from torch.testing import assert_close

from tether.algos.losses import (
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    ipo_loss,
    logprobs_from_logits,
    ppo_policy_loss,
    sequence_logprobs,
    value_loss,
)

L15, L05, L11 = math.log(1.5), math.log(0.5), math.log(1.1)


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


# ------------------------------------------------------------------- PPO


def test_ppo_policy_loss_by_hand():
    """old logprobs 0, so ratio = exp(logp). eps = 0.2, clip range [0.8, 1.2].
    (0,0) ratio 1.5, A= 1: -A*r = -1.5, -A*clip = -1.2 -> max -1.2 (clipped active)
    (0,1) ratio 0.5, A=-1: -A*r =  0.5, -A*clip =  0.8 -> max  0.8 (clipped active)
    (0,2) ratio 1.1, A= 2: -A*r = -2.2, -A*clip = -2.2 -> max -2.2 (tie: not active)
    (1,0) ratio 1.5, A=-1: -A*r =  1.5, -A*clip =  1.2 -> max  1.5 (pessimistic, unclipped)
    (1,1),(1,2) padding.
    loss = (-1.2 + 0.8 - 2.2 + 1.5) / 4 = -1.1 / 4 = -0.275; clipfrac = 2/4 = 0.5
    approx_kl (k2) = mean(0.5 * log r^2) = 0.5 (ln1.5^2 + ln0.5^2 + ln1.1^2 + ln1.5^2) / 4
                   = 0.5 (0.164402 + 0.480453 + 0.009084 + 0.164402) / 4 = 0.102293
    gradient wrt logp (d ratio / d logp = ratio), only where unclipped term is the max:
    (0,2): -A*r/4 = -2*1.1/4 = -0.55; (1,0): 1*1.5/4 = 0.375; clipped / padding: 0."""
    logp = t([[L15, L05, L11], [L15, 3.0, -7.0]], requires_grad=True)
    old = t([[0.0, 0.0, 0.0], [0.0, 0.0, float("nan")]])
    adv = t([[1.0, -1.0, 2.0], [-1.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.275)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx(0.102293, abs=1e-6)
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 1.5) / 4)
    assert not stats["clipfrac"].requires_grad
    loss.backward()
    assert_close(logp.grad, t([[0.0, 0.0, -0.55], [0.375, 0.0, 0.0]]))


def test_ppo_and_value_loss_ignore_padding_in_value_and_grad():
    """Overwriting padding with garbage (NaN, 1e4 -> exp overflow) leaves losses and grads unchanged."""
    lp, old, adv, v, ov, ret = (torch.randn(2, 4, dtype=torch.float64) for _ in range(6))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])

    def run(lp, old, adv, v, ov, ret):
        lp, v = lp.clone().requires_grad_(), v.clone().requires_grad_()
        total = ppo_policy_loss(lp, old, adv, mask)[0] + value_loss(v, ov, ret, mask)[0]
        total.backward()
        return total.detach(), lp.grad, v.grad

    junk = [x.masked_fill(mask == 0, val) for x, val in
            zip((lp, old, adv, v, ov, ret), (1e4, float("nan"), -1e4, float("inf"), 0.0, 1e4))]
    for a, b in zip(run(lp, old, adv, v, ov, ret), run(*junk)):
        assert_close(a, b)


def test_ppo_on_policy_is_minus_mean_advantage():
    """logp == old: ratio 1 everywhere, nothing clipped, loss = -mean(A) = -(1 + 2 + 3)/3 = -2."""
    lp = t([[-0.7, -1.2, -0.1]])
    loss, stats = ppo_policy_loss(lp, lp.clone(), t([[1.0, 2.0, 3.0]]), torch.ones(1, 3))
    assert loss.item() == pytest.approx(-2.0)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0


def test_value_loss_by_hand():
    """eps = 0.2.
    t0: old 0,   v 0.5, R 1: v_clip = 0.2; (v-R)^2 = 0.25, (v_clip-R)^2 = 0.64 -> 0.64 (clipped)
    t1: old 0,   v 0.5, R 0: v_clip = 0.2; 0.25 vs 0.04 -> 0.25
    t2: old 1,   v 1.1, R 2: v_clip = 1.1 (inside range); 0.81 vs 0.81 -> 0.81
    t3: padding.
    loss = 0.5 * (0.64 + 0.25 + 0.81) / 3 = 0.5 * 1.7 / 3 = 0.2833333; vf_clipfrac = 1/3.
    grad wrt v: t0: 0 (clipped branch is flat in v); t1: (v - R)/3 = 0.5/3;
    t2: (v - R)/3 = -0.9/3 = -0.3 (both branches agree); t3: 0."""
    v = t([[0.5, 0.5, 1.1, 9.0]], requires_grad=True)
    old = t([[0.0, 0.0, 1.0, float("nan")]])  # NaN padding must not reach loss or grad
    ret = t([[1.0, 0.0, 2.0, -9.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = value_loss(v, old, ret, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(1.7 / 6)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert_close(v.grad, t([[0.0, 0.5 / 3, -0.3, 0.0]]))


# -------------------------------------------------------- logits helpers


def test_entropy_by_hand():
    """(0, 0) -> uniform over 2: ln 2 = 0.693147.
    (0, ln 3) -> p = (1/4, 3/4): H = 1/4 ln 4 + 3/4 ln(4/3) = 0.346574 + 0.215762 = 0.562335.
    (0, -inf) -> one certain outcome: 0.  (1000, 1000) -> ln 2 (no overflow)."""
    logits = t([[[0.0, 0.0], [0.0, math.log(3)]], [[0.0, -math.inf], [1000.0, 1000.0]]])
    expected = t([[math.log(2), 0.562335], [0.0, math.log(2)]])
    assert_close(entropy_from_logits(logits), expected, atol=1e-6, rtol=0)


def test_entropy_matches_definition_and_bf16():
    logits = torch.randn(2, 3, 11)
    p = logits.softmax(-1)
    ref = -(p * p.log()).sum(-1)
    assert_close(entropy_from_logits(logits), ref)
    out16 = entropy_from_logits(logits.bfloat16())
    assert out16.dtype == torch.float32 and out16.shape == (2, 3)
    assert_close(out16, ref, atol=2e-2, rtol=0)


def test_logprobs_from_logits_by_hand():
    """logits (0, ln 3): softmax = (1/4, 3/4). label 1 -> ln 0.75 = -0.287682, label 0 -> ln 0.25.
    Shift by +500 changes nothing. label -100 (ignore_index) -> 0."""
    logits = t([[[0.0, math.log(3)], [500.0, 500.0 + math.log(3)], [1.0, 2.0]]])
    labels = torch.tensor([[1, 0, -100]])
    out = logprobs_from_logits(logits, labels)
    assert_close(out, t([[math.log(0.75), math.log(0.25), 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logprobs_from_logits_matches_log_softmax_gather(dtype):
    logits = (torch.randn(2, 3, 7) * 4).to(dtype)
    labels = torch.randint(0, 7, (2, 3))
    ref = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    out = logprobs_from_logits(logits, labels)
    assert out.dtype == dtype
    assert_close(out, ref)


def test_logprobs_from_logits_grad_and_bf16():
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 3))
    logprobs_from_logits(logits, labels).sum().backward()
    g1 = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).sum().backward()
    assert_close(g1, logits.grad)
    lf = logits.detach().float()
    out16 = logprobs_from_logits(lf.bfloat16(), labels)
    assert out16.dtype == torch.float32
    ref = torch.log_softmax(lf.bfloat16().float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert_close(out16, ref)
    with pytest.raises(ValueError):
        logprobs_from_logits(lf, labels[:, :2])


# ------------------------------------------------------- reward model / BT


def test_bradley_terry_by_hand():
    """diffs (1, -1): -log sigmoid(1) = ln(1 + e^-1) = 0.313262, -log sigmoid(-1) = ln(1 + e) = 1.313262
    mean = 0.813262; accuracy = 1/2.
    margin (1, 0): diffs (0, -1): ln 2 = 0.693147 and 1.313262 -> mean 1.003205."""
    c, r = t([1.0, 0.0]), t([0.0, 1.0])
    loss, acc = bradley_terry_loss(c, r)
    assert loss.item() == pytest.approx(0.813262, abs=1e-6)
    assert acc.item() == 0.5
    loss_m, acc_m = bradley_terry_loss(c, r, margin=t([1.0, 0.0]))
    assert loss_m.item() == pytest.approx(1.003205, abs=1e-6)
    assert acc_m.item() == 0.5


def test_bradley_terry_stable_and_grad():
    """float32, diffs (200, -200): losses ln(1 + e^-200) ~ 0 and ln(1 + e^200) ~ 200 (no inf/NaN)
    -> mean 100. d/dr_c of mean(-log sigmoid(d)) = -sigmoid(-d) / B = (~0, -1/2)."""
    c = torch.tensor([100.0, -100.0], requires_grad=True)
    r = torch.tensor([-100.0, 100.0])
    loss, acc = bradley_terry_loss(c, r)
    assert loss.item() == pytest.approx(100.0)  # (0 + 200) / 2
    assert acc.item() == 0.5
    loss.backward()
    assert_close(c.grad, torch.tensor([0.0, -0.5]))


# ---------------------------------------------------------------- DPO / IPO


def test_dpo_by_hand():
    """Row 0: policy (c, r) = (-1, -3), ref (-2, -2): h = (-1 + 3) - (-2 + 2) = 2.
      beta 0.1: -log sigmoid(0.2) = ln(1 + e^-0.2) = ln(1.818731) = 0.598139
      chosen reward 0.1 * (-1 + 2) = 0.1, rejected 0.1 * (-3 + 2) = -0.1
    Row 1: policy = ref -> h = 0 -> ln 2 = 0.693147, rewards 0.
    d loss0 / d policy_chosen0 = -beta * sigmoid(-beta h) = -0.1 * 0.450166 = -0.0450166."""
    pc = t([-1.0, -5.0], requires_grad=True)
    pr = t([-3.0, -4.0])
    losses, cr, rr = dpo_loss(pc, pr, t([-2.0, -5.0]), t([-2.0, -4.0]), beta=0.1)
    assert_close(losses, t([0.598139, math.log(2)]), atol=1e-6, rtol=0)
    assert_close(cr, t([0.1, 0.0]))
    assert_close(rr, t([-0.1, 0.0]))
    assert not cr.requires_grad and not rr.requires_grad
    losses.sum().backward()
    assert pc.grad[0].item() == pytest.approx(-0.0450166, abs=1e-7)
    assert pc.grad[1].item() == pytest.approx(-0.05)  # -0.1 * sigmoid(0)


def test_cdpo_label_smoothing_by_hand():
    """eps = 0.1, beta h = 0.2: -log sigmoid(-0.2) = ln(1 + e^0.2) = ln(2.221403) = 0.798139
    loss = 0.1 * 0.798139 + 0.9 * 0.598139 = 0.0798139 + 0.5383249 = 0.618139."""
    losses, _, _ = dpo_loss(t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.618139, abs=1e-6)


def test_dpo_validation():
    z = t([0.0])
    with pytest.raises(ValueError):
        dpo_loss(z, z, z, z, beta=0.0)
    with pytest.raises(ValueError):
        dpo_loss(z, z, z, z, label_smoothing=0.6)


def test_ipo_by_hand():
    """h = 2. beta 0.1: 1/(2*0.1) = 5 -> (2 - 5)^2 = 9. beta 0.5: 1/(2*0.5) = 1 -> (2 - 1)^2 = 1.
    Rewards with beta 0.5: 0.5 * (-1 + 2) = 0.5 and 0.5 * (-3 + 2) = -0.5."""
    args = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]))
    assert ipo_loss(*args, beta=0.1)[0].item() == pytest.approx(9.0)
    losses, cr, rr = ipo_loss(*args, beta=0.5)
    assert losses.item() == pytest.approx(1.0)
    assert cr.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)


def test_sequence_logprobs_by_hand():
    """Row 0: -1 - 2 - 3 = -6 (mean -2); row 1: -0.5 - 0.5 = -1 (mean -0.5), padding NaN ignored."""
    lp = t([[-1.0, -2.0, -3.0], [-0.5, -0.5, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert_close(sequence_logprobs(lp, mask), t([-6.0, -1.0]))
    assert_close(sequence_logprobs(lp, mask, average=True), t([-2.0, -0.5]))
