"""Draw a clip as an animated GIF or an MP4, for people who compare clips side by side (the web app).

A clip is redrawn from the simulator states recorded with it (``Clips.states``): a fresh env in
``render_mode="rgb_array"`` is put into each state in turn and rendered. Classic-control envs
(Pendulum, CartPole, ...) draw with pygame and need no display; MuJoCo envs need an OpenGL backend
(``MUJOCO_GL=egl`` or ``osmesa`` on a headless machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tether.errors import TetherError


def clip_frames(env_id: str, states: np.ndarray, actions: np.ndarray | None = None,
                env_kwargs: dict | None = None) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 of a clip given its states ``(T, S)`` (and actions ``(T, A)``,
    which some envs draw, e.g. Pendulum's torque arrow)."""
    import gymnasium as gym

    from tether.control.env import set_state

    if states is None or len(states) == 0:
        raise TetherError(f"clip of '{env_id}' has no recorded states: this env cannot be redrawn")
    try:
        env = gym.make(env_id, render_mode="rgb_array", **(env_kwargs or {}))
    except gym.error.Error as e:
        raise TetherError(f"env_id '{env_id}': {e}") from None
    try:
        env.reset(seed=0)
        frames = []
        for t, s in enumerate(np.asarray(states)):
            set_state(env, s)
            if actions is not None and hasattr(env.unwrapped, "last_u"):
                env.unwrapped.last_u = float(np.asarray(actions[t]).reshape(-1)[0])
            frame = env.render()
            if frame is None:
                raise TetherError(f"env_id '{env_id}' rendered no frame in rgb_array mode")
            frames.append(np.asarray(frame, dtype=np.uint8))
    finally:
        env.close()
    return np.stack(frames)


def render_clip(env_id: str, states: np.ndarray, path: str | Path, actions: np.ndarray | None = None,
                fps: int = 30, size: int | None = 256, env_kwargs: dict | None = None) -> Path:
    """Write a clip to ``path``: ``.gif`` (animated, loops) or ``.mp4`` (needs imageio-ffmpeg).
    ``size`` scales the longer side of the frames (None: the env's own size). Returns the path."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise TetherError(f"{path}: clips are written as .gif or .mp4, not '{suffix or '(no suffix)'}'")
    frames = clip_frames(env_id, states, actions, env_kwargs)  # (T, H, W, 3)
    if size is not None and max(frames.shape[1:3]) != size:
        from PIL import Image

        h, w = frames.shape[1:3]
        scale = size / max(h, w)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        frames = np.stack([np.asarray(Image.fromarray(f).resize(new, Image.BILINEAR)) for f in frames])
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000 / fps, loop=0)
    else:
        try:
            iio.imwrite(path, frames, extension=".mp4", fps=fps, codec="libx264")
        except (ImportError, OSError, RuntimeError, ValueError) as e:
            raise TetherError(f"{path}: cannot write MP4 ({e}); install imageio-ffmpeg or write a .gif") from None
    return path
