"""The reward-replacing wrapper, clips, pair selection, the synthetic labeler, the label schedule,
rendering, and a bad env id."""

import numpy as np
import pytest
import torch

from tether.control.clips import SyntheticLabeler, cut_clips, label_schedule, select_pairs
from tether.control.env import make_vec_env, wrap
from tether.errors import TetherError


def _pendulum(reward_fn, n=3, behaviour=None, capacity=300):
    env = wrap(make_vec_env("Pendulum-v1", n, seed=0), reward_fn, behaviour, capacity)
    env.reset()
    return env


def test_wrapper_replaces_rewards_in_one_batched_call():
    calls = []

    def reward_fn(x):  # (N, obs 3 + action 1)
        calls.append(x.shape)
        return np.full(len(x), 7.0) + x[:, 3]  # 7 + the action

    env = _pendulum(reward_fn)
    twin = make_vec_env("Pendulum-v1", 3, seed=0)  # same seed: same true rewards
    twin.reset()
    for t in range(250):  # crosses the 200-step episode end
        act = np.full((3, 1), 0.5 if t % 2 else -0.5, np.float32)
        _, r, done, infos = env.step(act)
        _, r_true, _, _ = twin.step(act)
        assert np.allclose(r, 7.0 + act[:, 0])  # the agent sees the learned reward only
        assert np.allclose([i["true_reward"] for i in infos], r_true, atol=1e-5)
    assert calls == [(3, 4)] * 250
    assert env.env_steps == 750 and env.buffer.size == 250
    assert len(env.episode_returns) == 3 and all(r < 0 for r in env.episode_returns)
    assert env.buffer.states.shape[-1] == 2  # Pendulum (θ, θ̇) recorded for video
    # the buffer's obs at slot t is the obs the action at t was taken in
    assert np.allclose(np.arctan2(env.buffer.obs[10, :, 1], env.buffer.obs[10, :, 0]),
                       np.angle(np.exp(1j * env.buffer.states[10, :, 0])), atol=1e-5)


def test_behaviour_is_the_true_reward_and_clips_stay_inside_episodes():
    from tether.control.behaviours import spin_clockwise

    env = _pendulum(lambda x: np.zeros(len(x)), behaviour=spin_clockwise)
    for _ in range(260):
        _, _, _, infos = env.step(np.full((3, 1), -2.0, np.float32))  # push clockwise
    assert np.mean(env.buffer.true_reward[:env.buffer.size]) > 0
    clips = cut_clips(env.buffer, 50, 30, np.random.default_rng(0))
    assert clips.x.shape == (50, 30, 4) and clips.states.shape == (50, 30, 2)
    for k in range(50):  # true return = sum of the behaviour's reward over the clip's own steps
        slots = (np.flatnonzero(env.buffer.step == clips.start_step[k])[0] + np.arange(30)) % env.buffer.capacity
        assert len(set(env.buffer.episode[slots, clips.env_index[k]])) == 1
        assert clips.true_return[k] == pytest.approx(env.buffer.true_reward[slots, clips.env_index[k]].sum(), rel=1e-5)


def test_labeler_prefers_the_higher_return_and_noise_flips_some():
    ra, rb = np.array([1.0, -3.0, 5.0, 2.0]), np.array([0.0, 2.0, 5.0, 2.5])
    assert SyntheticLabeler().label(ra, rb) == ["a", "b", "tie", "b"]
    big_a, big_b = np.full(4000, 10.0), np.zeros(4000)
    flipped = SyntheticLabeler(error_rate=0.2, seed=1).label(big_a, big_b).count("b") / 4000
    assert flipped == pytest.approx(0.1, abs=0.02)  # a coin flip 20 % of the time: wrong 10 %
    p_a = SyntheticLabeler(temperature=1.0, seed=2).label(np.full(4000, 1.0), np.zeros(4000)).count("a") / 4000
    assert p_a == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.03)  # Boltzmann: σ(1) = 0.731


def test_label_schedule_front_loads_and_spends_the_budget():
    assert label_schedule(100, 3, 0.1, 1.0) == [10, 41, 28, 21]  # see its docstring
    s = label_schedule(700, 24, 0.1, 1.0)
    assert sum(s) == 700 and s[0] == 70 and all(x >= y for x, y in zip(s[1:], s[2:]))
    with pytest.raises(ValueError, match="initial_fraction"):
        label_schedule(10, 2, 1.5)


def test_disagreement_picks_the_pairs_the_members_disagree_on():
    from tether.control.reward import RewardEnsemble

    env = _pendulum(None)
    rng = np.random.default_rng(0)
    for _ in range(300):
        env.step(rng.uniform(-2, 2, (3, 1)).astype(np.float32))
    clips = cut_clips(env.buffer, 60, 10, rng)
    net = RewardEnsemble(4, members=4, hidden=16, seed=3)
    a, b, var = select_pairs(clips, 10, np.random.default_rng(1), "disagreement", net, oversample=8)
    assert len(a) == 10 and (a != b).all()
    x = torch.from_numpy(clips.x)
    assert np.allclose(net.preference_probs(x[a], x[b]).var(0, unbiased=False).numpy(), var, atol=1e-6)
    ra, rb, _ = select_pairs(clips, 80, np.random.default_rng(1), "random")
    rand_var = net.preference_probs(x[ra], x[rb]).var(0, unbiased=False).numpy()
    assert var.min() >= np.median(rand_var)  # the top tenth of 80 candidates beats a typical random pair
    with pytest.raises(ValueError, match="selection"):
        select_pairs(clips, 1, rng, "uncertain")


def test_render_pendulum_clip_to_gif(tmp_path):
    import imageio.v3 as iio

    from tether.control.render import render_clip

    states = np.stack([np.linspace(0, np.pi, 12), np.zeros(12)], 1)  # (T, S): swing down through half a turn
    path = render_clip("Pendulum-v1", states, tmp_path / "clip.gif", actions=np.ones((12, 1)), size=64)
    frames = iio.imread(path)
    assert frames.shape == (12, 64, 64, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum() > 0  # the pole moved
    with pytest.raises(TetherError, match=r"\.gif or \.mp4"):
        render_clip("Pendulum-v1", states, tmp_path / "clip.avi")


def test_bad_env_id_is_a_clear_error():
    with pytest.raises(TetherError, match="env_id 'NoSuchEnv-v0'"):
        make_vec_env("NoSuchEnv-v0", 1, seed=0)
