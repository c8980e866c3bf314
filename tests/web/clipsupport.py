"""Clip tasks for the web tests: a control run's clips.npz in the workspace (Pendulum states drawn
by hand, no agent trained) and pairwise tasks over them, as `tether control --labeler web` makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_clip_tasks(root: Path, store, n_pairs: int = 3, labels_needed: int = 1, length: int = 6) -> list[int]:
    """2 * n_pairs clips of `length` steps in root/runs/control-1/clips.npz (clip k swings the pendulum
    from angle k/2 at speed 1 + k/4) and one pairwise task per pair (2i, 2i+1); returns the task ids."""
    from tether.control.clips import Clips
    from tether.control.db import store_clip_tasks

    K, T = 2 * n_pairs, length
    theta = np.array([[k / 2 + t * 0.05 * (1 + k / 4) for t in range(T)] for k in range(K)])  # (K, T)
    states = np.stack([theta, np.full_like(theta, 1.0)], -1)  # (K, T, 2): theta, theta-dot
    act = np.linspace(-2, 2, K * T, dtype=np.float32).reshape(K, T, 1)  # (K, T, 1)
    obs = np.stack([np.cos(theta), np.sin(theta), states[..., 1]], -1).astype(np.float32)  # (K, T, 3)
    clips = Clips(np.concatenate([obs, act], -1), theta.sum(1), act, states, np.zeros(K, np.int64),
                  np.arange(K, dtype=np.int64) * T)
    out = Path(root) / "runs" / "control-1"
    out.mkdir(parents=True, exist_ok=True)
    clips.save(out / "clips.npz")
    info = {k: {"env_index": 0, "start_step": k * T, "iteration": 0} for k in range(K)}
    ids, _ = store_clip_tasks(store, env_id="Pendulum-v1", behaviour="spin_clockwise", run_name="control-1",
                              run_id=None, clips_file="runs/control-1/clips.npz", fragment_length=T, clip_info=info,
                              pairs=[(2 * i, 2 * i + 1) for i in range(n_pairs)], iteration=0,
                              labels_needed=labels_needed)
    return ids
