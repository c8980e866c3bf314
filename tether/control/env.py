"""Environments for control RLHF: vectorised gymnasium envs, the buffer of recent experience that
clips are cut from, and the VecEnv wrapper that hides the true reward from the agent.

Shapes: ``N`` = parallel envs, ``C`` = buffer capacity (steps per env), ``D`` = observation size,
``A`` = action features (Box: its size; Discrete: one-hot), ``S`` = simulator state size.

gymnasium and stable-baselines3 are imported inside functions: `import tether` never loads them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tether.errors import TetherError

# A "behaviour": a synthetic true reward the labeler judges clips by, instead of the env's reward.
# Called on a batch of transitions: f(obs (N, D), action (N, A_raw), next_obs (N, D)) -> (N,) floats.
Behaviour = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def check_env(env_id: str, env_kwargs: dict | None = None) -> None:
    """Raise a TetherError naming ``env_id`` if it is unknown, needs a missing package, or has a
    space the reward net cannot read (observations: Box; actions: Box or Discrete)."""
    try:
        import gymnasium as gym
        import stable_baselines3  # noqa: F401
    except ImportError as e:
        raise TetherError(f"tether control needs the 'control' extra (pip install 'tether[control]'): {e}") from None

    try:
        probe = gym.make(env_id, **(env_kwargs or {}))
    except gym.error.Error as e:  # NameNotFound, VersionNotFound, DependencyNotInstalled, ...
        raise TetherError(f"env_id '{env_id}': {e}") from None
    except ImportError as e:
        raise TetherError(f"env_id '{env_id}' needs a package that is not installed: {e}") from None
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    if not isinstance(obs_space, gym.spaces.Box):
        raise TetherError(f"env_id '{env_id}': observation space {obs_space} is not supported (Box only)")
    if not isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise TetherError(f"env_id '{env_id}': action space {act_space} is not supported (Box or Discrete)")


def make_vec_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict | None = None):
    """A DummyVecEnv of ``n_envs`` copies of ``env_id`` (checked first by :func:`check_env`)."""
    from stable_baselines3.common.env_util import make_vec_env as sb3_make

    check_env(env_id, env_kwargs)
    return sb3_make(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)


def action_features(space, actions: np.ndarray) -> np.ndarray:
    """What the reward net reads of an action: Box -> flattened ``(N, A)``; Discrete -> one-hot."""
    import gymnasium as gym

    actions = np.asarray(actions)
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(space.n, dtype=np.float32)[actions.reshape(-1).astype(int) - space.start]
    return actions.reshape(len(actions), -1).astype(np.float32)


def get_state(env) -> np.ndarray | None:
    """The simulator state needed to redraw a frame: MuJoCo (qpos ‖ qvel) or classic control
    (``env.state``); None for envs that expose neither."""
    u = env.unwrapped
    if hasattr(u, "data") and hasattr(u.data, "qpos") and hasattr(u, "set_state"):
        return np.concatenate([u.data.qpos, u.data.qvel]).astype(np.float64)
    state = getattr(u, "state", None)
    if state is None:
        return None
    try:
        return np.asarray(state, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None


def set_state(env, state: np.ndarray) -> None:
    """Inverse of :func:`get_state`."""
    u = env.unwrapped
    if hasattr(u, "data") and hasattr(u.data, "qpos") and hasattr(u, "set_state"):
        nq = u.data.qpos.shape[0]
        u.set_state(state[:nq], state[nq:])
    else:
        u.state = np.array(state, dtype=np.float64).reshape(np.shape(u.state))


class TransitionBuffer:
    """The last ``capacity`` transitions of every env, in a ring: what clips are cut from.

    ``episode[t, i]`` numbers env i's episodes, so a window whose first and last steps share an
    episode number lies inside one episode (episodes are contiguous in time)."""

    def __init__(self, capacity: int, n_envs: int, obs_dim: int, act_dim: int, state_dim: int | None):
        self.capacity, self.n_envs = capacity, n_envs
        self.obs = np.zeros((capacity, n_envs, obs_dim), np.float32)  # (C, N, D) o_t
        self.act = np.zeros((capacity, n_envs, act_dim), np.float32)  # (C, N, A) a_t features
        self.raw_act = np.zeros((capacity, n_envs, act_dim), np.float32)  # (C, N, A) as sent (rendering)
        self.true_reward = np.zeros((capacity, n_envs), np.float32)  # (C, N)
        self.states = np.zeros((capacity, n_envs, state_dim), np.float64) if state_dim else None  # (C, N, S)
        self.episode = np.full((capacity, n_envs), -1, np.int64)  # (C, N)
        self.step = np.full(capacity, -1, np.int64)  # (C,) global vec-step index of each slot
        self.ptr, self.size = 0, 0

    def add(self, step: int, obs, act, raw_act, true_reward, states, episode) -> None:
        p = self.ptr
        self.obs[p], self.act[p], self.true_reward[p], self.episode[p] = obs, act, true_reward, episode
        self.raw_act[p, :, :raw_act.shape[1]] = raw_act
        self.step[p] = step
        if states is not None and self.states is None and self.size == 0:  # first state seen: now its size is known
            self.states = np.zeros((self.capacity, self.n_envs, states.shape[1]), np.float64)
        if self.states is not None and states is not None:
            self.states[p] = states
        self.ptr = (p + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample_windows(self, n: int, length: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
        """``n`` random windows of ``length`` consecutive steps inside one episode of one env:
        a list of (slot indices (length,), env index). Fewer if the buffer holds too few."""
        if self.size < length:
            return []
        oldest = (self.ptr - self.size) % self.capacity
        out = []
        for _ in range(50 * n):
            if len(out) == n:
                break
            t0, env = int(rng.integers(0, self.size - length + 1)), int(rng.integers(0, self.n_envs))
            slots = (oldest + t0 + np.arange(length)) % self.capacity
            if self.episode[slots[0], env] == self.episode[slots[-1], env]:
                out.append((slots, env))
        return out


def wrap(venv, reward_fn: Callable[[np.ndarray], np.ndarray] | None, behaviour: Behaviour | None = None,
         capacity: int = 4096):
    """Wrap ``venv`` so the agent sees ``reward_fn(obs ‖ action features)`` instead of the env reward.

    ``reward_fn`` maps ``(N, D + A)`` -> ``(N,)`` and is evaluated once per vectorised step on all N
    envs together; None passes the true reward through (true-reward baselines). Every transition
    goes into ``.buffer`` with its *true* reward (the env's, or ``behaviour``'s), ``.env_steps``
    counts environment steps (N per vectorised step), and ``.episode_returns`` collects the true
    return of every finished episode. ``info["true_reward"]`` carries the true reward per step.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

    class _Wrapper(VecEnvWrapper):
        def __init__(self):
            super().__init__(venv)
            self.reward_fn, self.behaviour = reward_fn, behaviour
            self._dummy = venv if isinstance(venv, DummyVecEnv) else None
            act_dim = action_features(venv.action_space, np.zeros((1,) + venv.action_space.shape,
                                                                  venv.action_space.dtype)).shape[1]
            # simulator states (for video) get their own array at the first step: envs have none before reset
            self.buffer = TransitionBuffer(capacity, venv.num_envs, int(np.prod(venv.observation_space.shape)),
                                           act_dim, None)
            self.env_steps, self.vec_steps = 0, 0
            self.episode_returns: list[float] = []
            self._ep_ret = np.zeros(venv.num_envs)
            self._episode = np.arange(venv.num_envs, dtype=np.int64)
            self._next_episode = venv.num_envs
            self._obs = self._cur_states = self._actions = None

        def _states(self) -> np.ndarray | None:  # (N, S) or None
            if self._dummy is None:
                return None
            got = [get_state(e) for e in self._dummy.envs]
            return None if any(s is None for s in got) else np.stack(got)

        def _new_episodes(self, which: np.ndarray) -> None:
            k = int(which.sum())
            self._episode[which] = np.arange(self._next_episode, self._next_episode + k)
            self._next_episode += k
            self._ep_ret[which] = 0.0

        def reset(self):
            obs = self.venv.reset()
            self._obs, self._cur_states = obs.reshape(self.num_envs, -1), self._states()
            self._new_episodes(np.ones(self.num_envs, bool))
            return obs

        def step_async(self, actions):
            self._actions = np.asarray(actions)
            self.venv.step_async(actions)

        def step_wait(self):
            obs, env_reward, dones, infos = self.venv.step_wait()
            obs_flat = obs.reshape(self.num_envs, -1)
            act = action_features(self.action_space, self._actions)  # (N, A)
            if self.behaviour is not None:
                next_obs = obs_flat.copy()
                for i in np.flatnonzero(dones):
                    next_obs[i] = np.asarray(infos[i]["terminal_observation"]).reshape(-1)
                true = np.asarray(self.behaviour(self._obs, self._actions, next_obs), dtype=np.float64).reshape(-1)
                if true.shape != (self.num_envs,):
                    raise TetherError(f"behaviour must return one reward per env, shape ({self.num_envs},), "
                                      f"got {true.shape}")
            else:
                true = np.asarray(env_reward, dtype=np.float64)
            raw = self._actions.reshape(self.num_envs, -1).astype(np.float32)
            self.buffer.add(self.vec_steps, self._obs, act, raw, true, self._cur_states, self._episode)
            if self.reward_fn is not None:
                reward = np.asarray(self.reward_fn(np.concatenate([self._obs, act], 1)), np.float32)  # (N,)
            else:
                reward = np.asarray(true, np.float32)
            self._ep_ret += true
            for i in range(self.num_envs):
                infos[i]["true_reward"] = float(true[i])
                if dones[i]:
                    self.episode_returns.append(float(self._ep_ret[i]))
            self._new_episodes(np.asarray(dones, bool))
            self.vec_steps += 1
            self.env_steps += self.num_envs
            self._obs, self._cur_states = obs_flat, self._states()
            return obs, reward, dones, infos

    return _Wrapper()


def evaluate(model, env_id: str, episodes: int, seed: int, behaviour: Behaviour | None = None,
             env_kwargs: dict | None = None, deterministic: bool = True, obs_fn=None) -> float:
    """Mean true return (env reward, or ``behaviour``'s) of ``model`` over ``episodes`` episodes on a
    separate env; these steps are not training experience and are not counted. ``obs_fn``: how the
    agent's observations are preprocessed (e.g. a VecNormalize's ``normalize_obs``)."""
    import gymnasium as gym

    env = gym.make(env_id, **(env_kwargs or {}))
    total = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs if obs_fn is None else obs_fn(obs), deterministic=deterministic)
            nxt, r, term, trunc, _ = env.step(action)
            if behaviour is not None:
                r = float(np.asarray(behaviour(obs.reshape(1, -1), np.asarray(action).reshape(1, -1),
                                               nxt.reshape(1, -1))).reshape(-1)[0])
            ret += r
            obs, done = nxt, term or trunc
        total.append(ret)
    env.close()
    return float(np.mean(total))
