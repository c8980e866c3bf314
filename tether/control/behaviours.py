"""Behaviours with no reward of their own, for synthetic labelers: f(obs, action, next_obs) -> (N,).

Each takes a batch of N transitions (numpy arrays with a leading N axis) and returns one number per
transition; the labeler prefers the clip whose numbers sum higher. Your own go in any file:
`tether control --behaviour my_behaviours.py:lean_left`.
"""

from __future__ import annotations

import numpy as np


def spin_clockwise(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Pendulum-v1: spin clockwise, as fast as possible. Pendulum's observation is
    (cos θ, sin θ, θ̇) with θ counter-clockwise on screen, so clockwise speed is -θ̇ (at most 8)."""
    return -np.asarray(next_obs)[:, 2]


def spin_counterclockwise(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Pendulum-v1: the opposite of :func:`spin_clockwise`."""
    return np.asarray(next_obs)[:, 2]
