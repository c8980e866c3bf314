"""The preference losses as `tether dpo` uses them, worked by hand: cDPO (DPO eq. 7 with label smoothing,
Mitchell 2023) and IPO (Azar et al. 2023, eq. 17) stop pushing at a finite margin, DPO never does; and
`logprobs_from_hidden`, the chunked LM head + log-softmax that scores response tokens."""

import math

import pytest
import torch

from tether.algos.losses import dpo_loss, ipo_loss, logprobs_from_hidden, logprobs_from_logits


def t(values, **kw):
    return torch.tensor(values, dtype=torch.float32, **kw)


def test_cdpo_gradient_by_hand():
    """beta 0.1, h = (-1 + 3) - (-2 + 2) = 2, eps 0.1: d loss / d h
      = -beta * [(1 - eps) * sigmoid(-beta h) - eps * sigmoid(beta h)]
      = -0.1 * [0.9 * 0.450166 - 0.1 * 0.549834] = -0.1 * (0.405150 - 0.054983) = -0.0350166,
    against plain DPO's -0.1 * 0.450166 = -0.0450166: the smoothed label pushes less."""
    pc = t([-1.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, t([-3.0]), t([-2.0]), t([-2.0]), beta=0.1, label_smoothing=0.1)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.0350166, abs=1e-7)


def test_cdpo_stops_at_a_finite_margin():
    """The cDPO loss (1 - eps) * -log sigmoid(x) + eps * -log sigmoid(-x), x = beta h, has zero slope where
    (1 - eps) sigmoid(-x) = eps sigmoid(x), i.e. e^x = (1 - eps) / eps: eps 0.1 -> x = ln 9 = 2.197225,
    so h = 21.97225 at beta 0.1. There the loss is 0.9 ln(1 + 1/9) + 0.1 ln(1 + 9) = 0.9 * 0.105361 +
    0.1 * 2.302585 = 0.325083. Plain DPO still pushes there: -0.1 * sigmoid(-ln 9) = -0.01."""
    h = math.log(9) / 0.1
    pc = t([h], requires_grad=True)
    losses, _, _ = dpo_loss(pc, t([0.0]), t([0.0]), t([0.0]), beta=0.1, label_smoothing=0.1)
    losses.sum().backward()
    assert losses.item() == pytest.approx(0.325083, abs=1e-6)
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-7)
    pc.grad = None
    dpo_loss(pc, t([0.0]), t([0.0]), t([0.0]), beta=0.1)[0].sum().backward()
    assert pc.grad.item() == pytest.approx(-0.01, abs=1e-7)


def test_cdpo_without_smoothing_is_dpo():
    args = (t([-1.0, -5.0]), t([-3.0, -4.0]), t([-2.0, -5.5]), t([-2.0, -4.0]))
    torch.testing.assert_close(dpo_loss(*args, beta=0.3, label_smoothing=0.0)[0], dpo_loss(*args, beta=0.3)[0])


def test_ipo_on_token_averaged_logprobs_by_hand():
    """tether dpo feeds IPO token-averaged log-probs (as TRL): chosen -6 over 3 tokens -> -2, rejected -8
    over 2 -> -4, reference -3/3 = -1 and -6/2 = -3: h = (-2 + 4) - (-1 + 3) = 0, beta 0.5:
    loss = (0 - 1 / (2 * 0.5))^2 = 1; d loss / d h = 2 (h - 1) = -2, so d / d(sum chosen) = -2 / 3."""
    pc = t([-6.0], requires_grad=True)
    losses, _, _ = ipo_loss(pc / 3, t([-8.0]) / 2, t([-3.0]) / 3, t([-6.0]) / 2, beta=0.5)
    losses.sum().backward()
    assert losses.item() == pytest.approx(1.0)
    assert pc.grad.item() == pytest.approx(-2 / 3)


def test_logprobs_from_hidden_by_hand():
    """D = 1, V = 2, h = 1, W = [[1], [0]], target 0: logits (1, 0), p = (0.731059, 0.268941);
      log p(0) = 1 - ln(e + 1) = 1 - 1.313262 = -0.313262
      d/dh = W[0] - p W = 1 - 0.731059 = 0.268941;  d/dW = (onehot - p) h = (0.268941, -0.268941)."""
    h = t([[1.0]], requires_grad=True)
    w = t([[1.0], [0.0]], requires_grad=True)
    out = logprobs_from_hidden(h, w, torch.tensor([0]))
    out.sum().backward()
    assert out.item() == pytest.approx(-0.313262, abs=1e-6)
    assert h.grad.item() == pytest.approx(0.268941, abs=1e-6)
    torch.testing.assert_close(w.grad, t([[0.268941], [-0.268941]]), atol=1e-6, rtol=0)


def test_logprobs_from_hidden_equals_full_logits_chunk_by_chunk():
    """7 tokens in chunks of 3 (the last one short), upstream gradients not all 1: the same values and
    gradients as the full (N, V) logits through `logprobs_from_logits`."""
    h = torch.randn(7, 5, requires_grad=True)
    w = torch.randn(11, 5, requires_grad=True)
    y, g = torch.randint(11, (7,)), torch.randn(7)
    (logprobs_from_hidden(h, w, y, chunk=3) * g).sum().backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    expected = logprobs_from_logits((h @ w.T)[None], y[None])[0]  # (7,)
    (expected * g).sum().backward()
    torch.testing.assert_close(logprobs_from_hidden(h, w, y, chunk=3), expected.detach())
    torch.testing.assert_close(grads[0], h.grad)
    torch.testing.assert_close(grads[1], w.grad)


def test_entropy_from_hidden_by_hand():
    """h = 1, W = [[1], [0]]: logits (1, 0), p = (0.731059, 0.268941);
      H = -(0.731059 ln 0.731059 + 0.268941 ln 0.268941) = 0.731059 * 0.313262 + 0.268941 * 1.313262
        = 0.229013 + 0.353190 = 0.582203."""
    from tether.algos.losses import entropy_from_hidden

    out = entropy_from_hidden(t([[1.0], [0.0]]), t([[1.0], [0.0]]), chunk=1)  # second row: uniform, ln 2
    torch.testing.assert_close(out, t([0.582203, 0.693147]), atol=1e-6, rtol=0)


def test_logprobs_from_hidden_under_bf16_autocast_follows_autocast():
    """Under bf16 autocast the chunked head's matmuls run in bf16, in backward too: values and gradients
    match those of the full logits computed under the same autocast (bf16 matmuls), closer than to
    float32's."""
    from tether.algos.losses import entropy_from_hidden, entropy_from_logits

    torch.manual_seed(0)
    h = torch.randn(37, 64, requires_grad=True)
    w = (torch.randn(300, 64) / 8).requires_grad_()
    y, g = torch.randint(300, (37,)), torch.randn(37)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logprobs_from_hidden(h, w, y, chunk=16)
        ent = entropy_from_hidden(h, w, chunk=16)
    (out * g).sum().backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = h @ w.T  # (37, 300) bf16
    expected = logprobs_from_logits(logits.float()[None], y[None])[0]
    (expected * g).sum().backward()
    assert out.dtype == torch.float32 and grads[1].dtype == torch.float32
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, entropy_from_logits(logits.float()[None].detach())[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], h.grad, atol=2e-2, rtol=2e-2)  # bf16 products, summed in other orders
    torch.testing.assert_close(grads[1], w.grad, atol=2e-2, rtol=2e-2)
