"""The preference loss by hand, and the reward ensemble learning to rank clips of a known reward."""

import math

import numpy as np
import pytest
import torch

from tether.algos.losses import bradley_terry_loss
from tether.control.reward import RewardEnsemble, preference_loss, train_ensemble


def test_loss_hand_worked():
    """R_a = 1, R_b = 0, noise 0.1 (Christiano et al. 2017, eq. 1 + sec. 2.2.3):
    σ(1) = 0.7310586, P[a ≻ b] = 0.9 · 0.7310586 + 0.05 = 0.7079527.
    a preferred (μ = 1): loss = -ln 0.7079527 = 0.3453780.
    equal (μ = 0.5):     loss = -(0.5 ln 0.7079527 + 0.5 ln 0.2920473) = 0.7881088.
    Mean over the two pairs = (0.3453780 + 0.7881088) / 2 = 0.5667434."""
    ra, rb = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    loss, acc = preference_loss(ra[:1], rb[:1], torch.tensor([1.0]), noise=0.1)
    assert loss.item() == pytest.approx(0.3453780, abs=1e-6)
    assert acc.item() == 1.0
    loss, _ = preference_loss(ra[:1], rb[:1], torch.tensor([0.5]), noise=0.1)
    assert loss.item() == pytest.approx(0.7881088, abs=1e-6)
    loss, acc = preference_loss(ra, rb, torch.tensor([1.0, 0.5]), noise=0.1)
    assert loss.item() == pytest.approx(0.5667434, abs=1e-6)
    assert acc.item() == 1.0  # the tie is not counted


def test_noise_zero_is_bradley_terry_and_noise_bounds_the_loss():
    ra, rb = torch.randn(7), torch.randn(7)
    bt, _ = bradley_terry_loss(ra, rb)
    ours, _ = preference_loss(ra, rb, torch.ones(7), noise=0.0, weight=torch.ones(7))  # the general path
    assert ours.item() == pytest.approx(bt.item(), rel=1e-6)
    # a confidently wrong prediction costs at most -ln(noise / 2) = -ln 0.05 = 2.9957, not +inf
    loss, acc = preference_loss(torch.tensor([1000.0]), torch.tensor([0.0]), torch.tensor([0.0]), noise=0.1)
    assert loss.item() == pytest.approx(-math.log(0.05), abs=1e-5) and acc.item() == 0.0
    ra = torch.tensor([3.0], requires_grad=True)
    preference_loss(ra, torch.tensor([0.0]), torch.tensor([0.0]), noise=0.1)[0].backward()
    assert torch.isfinite(ra.grad).all() and ra.grad.item() > 0  # pushes R_a down


def test_ensemble_shapes_and_numpy_copy_agree():
    net = RewardEnsemble(5, members=3, hidden=8, seed=1)
    x = torch.randn(40, 5)
    assert net(x).shape == (3, 40)
    assert net.clip_returns(torch.randn(6, 4, 5)).shape == (3, 6)
    net.set_output_stats(x)
    r = net.normalised(x)
    assert r.shape == (40,) and r.mean().abs() < 1e-4  # each member mean 0 on x, so the average is too
    assert np.allclose(net.numpy_reward()(x.numpy()), r.numpy(), atol=1e-5)


def test_ensemble_learns_to_rank_pendulum_clips():
    """Clips of Pendulum under random actions, labelled by their true return: after training, the
    ensemble orders held-out pairs correctly far more often than chance (0.5)."""
    from tether.control.clips import CHOICE_TARGET, SyntheticLabeler, cut_clips
    from tether.control.env import make_vec_env, wrap

    torch.manual_seed(0)
    env = wrap(make_vec_env("Pendulum-v1", 4, seed=0), reward_fn=None, capacity=1000)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(1000):
        env.step(rng.uniform(-2, 2, (4, 1)).astype(np.float32))
    clips = cut_clips(env.buffer, 400, 20, rng)
    assert len(clips) == 400 and clips.x.shape == (400, 20, 4)
    a, b = np.arange(0, 400, 2), np.arange(1, 400, 2)  # 200 disjoint pairs
    mu = np.array([CHOICE_TARGET[c] for c in SyntheticLabeler().label(clips.true_return[a], clips.true_return[b])],
                  np.float32)
    train, held = slice(0, 150), slice(150, 200)
    x = torch.from_numpy(clips.x)
    net = RewardEnsemble(4, members=3, hidden=32, seed=0)
    net.set_input_stats(x.reshape(-1, 4))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    stats = train_ensemble(net, opt, x[a[train]], x[b[train]], torch.from_numpy(mu[train]), torch.ones(3, 150),
                           epochs=40, batch_size=32, noise=0.1, gen=torch.Generator().manual_seed(0))
    assert math.isfinite(stats["reward_loss"])
    with torch.no_grad():
        pred = (net.clip_returns(x[a[held]]) - net.clip_returns(x[b[held]])).mean(0).numpy() > 0
    acc = float(np.mean(pred == (mu[held] > 0.5)))
    assert acc >= 0.8, acc
