"""Clips (trajectory fragments) and their comparisons: cutting clips from the agent's experience,
choosing which pairs to ask about, the synthetic labeler, and the label budget over iterations.

Shapes: ``K`` = clips, ``T`` = steps per clip, ``F`` = reward-net input (observation ‖ action
features), ``S`` = simulator state size (for redrawing a clip as a video), ``E`` = ensemble members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# A labeler's answer, as stored in `comparisons.choice`, and the target μ = P[a ≻ b] it trains on.
# "cant_tell" is stored but not trained on (Christiano et al. 2017, sec. 2.2: "incomparable").
CHOICE_TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class Clips:
    """K clips of T steps. ``x`` is what the reward net reads; the rest is for labeling and video."""

    x: np.ndarray  # (K, T, F) float32
    true_return: np.ndarray  # (K,) the labeler's return: env reward or the behaviour's
    raw_act: np.ndarray  # (K, T, A) actions as sent to the env (for the Pendulum arrow, etc.)
    states: np.ndarray | None  # (K, T, S) simulator states, None if the env exposes none
    env_index: np.ndarray  # (K,) which parallel env
    start_step: np.ndarray  # (K,) vectorised step at which the clip starts

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx) -> Clips:
        idx = np.asarray(idx, dtype=np.int64)
        return Clips(self.x[idx], self.true_return[idx], self.raw_act[idx],
                     None if self.states is None else self.states[idx], self.env_index[idx], self.start_step[idx])

    @staticmethod
    def concat(parts: list[Clips]) -> Clips:
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            raise ValueError("no clips to concatenate")
        states = None if any(p.states is None for p in parts) else np.concatenate([p.states for p in parts])
        return Clips(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                       ("x", "true_return", "raw_act")), states,
                     np.concatenate([p.env_index for p in parts]), np.concatenate([p.start_step for p in parts]))

    def save(self, path) -> None:
        arrays = {"x": self.x, "true_return": self.true_return, "raw_act": self.raw_act,
                  "env_index": self.env_index, "start_step": self.start_step}
        if self.states is not None:
            arrays["states"] = self.states
        np.savez_compressed(path, **arrays)

    @staticmethod
    def load(path) -> Clips:
        with np.load(path) as z:
            return Clips(z["x"], z["true_return"], z["raw_act"], z["states"] if "states" in z else None,
                         z["env_index"], z["start_step"])


def cut_clips(buffer, n: int, length: int, rng: np.random.Generator) -> Clips | None:
    """``n`` clips of ``length`` steps from the agent's recent experience (a TransitionBuffer),
    each inside one episode of one env, at uniformly random places; None if the buffer is too short."""
    windows = buffer.sample_windows(n, length, rng)
    if not windows:
        return None
    slots = np.stack([w[0] for w in windows])  # (K, T)
    env = np.array([w[1] for w in windows])  # (K,)
    x = np.concatenate([buffer.obs[slots, env[:, None]], buffer.act[slots, env[:, None]]], -1)  # (K, T, F)
    true = buffer.true_reward[slots, env[:, None]].sum(1)  # (K,)
    states = None if buffer.states is None else buffer.states[slots, env[:, None]]
    return Clips(x.astype(np.float32), true.astype(np.float64), buffer.raw_act[slots, env[:, None]], states,
                 env, buffer.step[slots[:, 0]])


def select_pairs(clips: Clips, n_pairs: int, rng: np.random.Generator, method: str = "disagreement",
                 net=None, oversample: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which pairs of clips to ask about: ``(a (n,), b (n,), disagreement (n,))`` indices into ``clips``.

    "random": uniformly random pairs of distinct clips. "disagreement" (Christiano et al. 2017,
    sec. 2.2.4): draw ``oversample`` × n random candidate pairs and keep the n whose predicted
    preference P̂[a ≻ b] varies most across the ensemble members (variance over E).
    """
    if method not in ("random", "disagreement"):
        raise ValueError(f"selection must be 'random' or 'disagreement', got {method!r}")
    K = len(clips)
    if K < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    m = n_pairs if method == "random" or net is None else n_pairs * max(1, oversample)
    a = rng.integers(0, K, m)
    b = (a + rng.integers(1, K, m)) % K  # never a == b
    if method == "random" or net is None:
        return a, b, np.zeros(m)
    x = torch.from_numpy(clips.x)
    with torch.no_grad():
        p = net.preference_probs(x[a], x[b])  # (E, m)
    var = p.var(0, unbiased=False).numpy() if p.shape[0] > 1 else np.zeros(m)  # (m,)
    keep = np.argsort(-var, kind="stable")[:n_pairs]
    return a[keep], b[keep], var[keep]


@dataclass
class SyntheticLabeler:
    """Prefers the clip with the higher true return (imitation's SyntheticGatherer, Christiano's
    synthetic oracle), with two optional kinds of noise:

    - ``error_rate`` ε: with probability ε the answer is a coin flip between a and b;
    - ``temperature`` τ > 0: Boltzmann-rational, P[a] = sigmoid((R_a - R_b) / τ) (returns in env units).
    Returns within ``tie_margin`` of each other are answered "tie".
    """

    error_rate: float = 0.0
    temperature: float = 0.0
    tie_margin: float = 0.0
    name: str = "simulated:true-return"
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"noise (error_rate) must be in [0, 1], got {self.error_rate}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.rng = np.random.default_rng(self.seed)

    def label(self, return_a: np.ndarray, return_b: np.ndarray) -> list[str]:
        """One answer ("a", "b" or "tie") per pair of true returns ``(n,)``."""
        d = np.asarray(return_a, np.float64) - np.asarray(return_b, np.float64)  # (n,)
        if self.temperature > 0:
            p_a = 1.0 / (1.0 + np.exp(-np.clip(d / self.temperature, -60, 60)))
            pick_a = self.rng.random(len(d)) < p_a
        else:
            pick_a = d > 0
        flip = self.rng.random(len(d)) < self.error_rate
        pick_a = np.where(flip, self.rng.random(len(d)) < 0.5, pick_a)
        tie = (np.abs(d) <= self.tie_margin) & ~flip
        return ["tie" if t else ("a" if pa else "b") for t, pa in zip(tie, pick_a)]


def label_schedule(budget: int, iterations: int, initial_fraction: float = 0.1, decay: float = 1.0) -> list[int]:
    """Labels to ask for before training (index 0) and in each of ``iterations`` iterations; sums to
    ``budget``. Front-loaded: ``initial_fraction`` of the budget goes to clips of the untrained agent
    (imitation's ``initial_comparison_frac``), the rest in shares ∝ 1 / (1 + decay · t), t from 0 to 1
    over the iterations (imitation's "hyperbolic" query schedule; Christiano et al. decay the rate
    ∝ 5e6 / (T + 5e6)). Rounding keeps the total exact (largest remainders).

    Example: budget 100, 3 iterations, 0.1, decay 1 -> [10, 41, 28, 21]: 90 split by weights 1, 1/1.5, 1/2.
    """
    if budget < 0 or iterations < 1:
        raise ValueError(f"label budget must be >= 0 and iterations >= 1, got {budget}, {iterations}")
    if not 0.0 <= initial_fraction <= 1.0:
        raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
    first = int(round(budget * initial_fraction))
    t = np.linspace(0.0, 1.0, iterations) if iterations > 1 else np.zeros(1)
    w = 1.0 / (1.0 + decay * t)
    share = (budget - first) * w / w.sum()
    out = np.floor(share).astype(int)
    rest = (budget - first) - out.sum()
    out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return [first] + out.tolist()
