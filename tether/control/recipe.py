"""`tether control`: RLHF for a gymnasium agent from comparisons of trajectory clips
(Christiano et al. 2017, "Deep reinforcement learning from human preferences").

Reads top to bottom. Setup: the vectorised env wrapped so the agent (SB3 PPO) sees the reward
ensemble's normalised prediction instead of the env's reward, the ensemble, the label schedule.
Loop, one iteration at a time: experience (iteration 0: the untrained agent acts without learning;
later: PPO learns for a few rollouts on the current learned reward), clips cut from that experience,
pairs chosen (random or by ensemble disagreement), answered by the synthetic labeler, the ensemble
retrained incrementally on all labels so far, its output re-normalised on recent experience, a
checkpoint. Save: the agent, the ensemble, clips.npz, labels.jsonl, metrics.jsonl + TensorBoard.

Every environment step the agent takes is counted against ``total_steps``, the clip-collection
steps of iteration 0 included; evaluation episodes (true return, on a separate env) are not.
How it departs from the paper: experience is on-policy PPO rollouts, not A2C/TRPO running
asynchronously with the labelers; labels come in per-iteration batches (imitation's schedule).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tether.control.clips import CHOICE_TARGET, Clips, SyntheticLabeler, cut_clips, label_schedule, select_pairs
from tether.control.env import Behaviour, evaluate, make_vec_env, wrap
from tether.control.reward import RewardEnsemble, train_ensemble
from tether.errors import TetherError

# PPO settings per env (rl-baselines3-zoo's tuned ones); anything else gets SB3's defaults and 4 envs.
PPO_PRESETS: dict[str, dict] = {
    "Pendulum-v1": {"n_envs": 4, "n_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9, "n_epochs": 10,
                    "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2, "use_sde": True, "sde_sample_freq": 4},
    "HalfCheetah-v5": {"n_envs": 1, "normalize": True, "n_steps": 512, "batch_size": 64, "gamma": 0.98,
                       "learning_rate": 2.0633e-05, "ent_coef": 0.000401762, "clip_range": 0.1, "n_epochs": 20,
                       "gae_lambda": 0.92, "max_grad_norm": 0.8, "vf_coef": 0.58096,
                       "policy_kwargs": {"log_std_init": -2, "ortho_init": False, "net_arch": {"pi": [256, 256],
                                                                                              "vf": [256, 256]}}},
}


@dataclass
class ControlConfig:
    env_id: str = "Pendulum-v1"
    total_steps: int = 100_000  # environment steps, all envs and clip collection included
    label_budget: int = 300  # comparisons in all
    fragment_length: int = 25  # steps per clip
    ensemble_size: int = 3
    selection: str = "disagreement"  # or "random"
    oversample: int = 5  # disagreement: candidate pairs per pair asked
    noise: float = 0.0  # synthetic labeler: probability of a coin-flip answer
    temperature: float = 0.0  # synthetic labeler: Boltzmann temperature in return units (0: exact)
    label_noise: float = 0.1  # the loss's assumed chance of a random answer (Christiano: 10 %)
    initial_label_fraction: float = 0.1  # labels on the untrained agent's clips, before any PPO
    label_decay: float = 1.0  # later labels in shares ∝ 1 / (1 + decay t), t in [0, 1]
    iterations: int | None = None  # None: one per PPO rollout (capped at 50)
    reward_hidden: int = 64
    reward_lr: float = 1e-3
    reward_weight_decay: float = 1e-4
    reward_batch_size: int = 32  # pairs per optimizer step
    reward_epochs: int = 3  # passes over all labels after each iteration
    initial_reward_epochs: int = 50  # passes after iteration 0 (few labels, fresh nets)
    ppo: dict = field(default_factory=dict)  # overrides of PPO_PRESETS (n_envs, normalize, SB3 PPO kwargs)
    behaviour: Behaviour | None = None  # synthetic true reward instead of the env's (e.g. spin clockwise)
    behaviour_name: str = "env-reward"
    env_kwargs: dict = field(default_factory=dict)
    eval_episodes: int = 10
    eval_every: int = 5  # iterations between evaluations of true return (and at the end)
    seed: int = 0
    threads: int = 1  # torch CPU threads
    out_dir: str = "runs/control"


@dataclass
class Result:
    out_dir: Path
    env_steps: int
    labels: int
    eval_return: float  # mean true return of the final agent (deterministic), eval_episodes episodes
    train_return: float  # mean true return of the last 10 training episodes
    seconds: float
    history: list[dict]


def ppo_settings(cfg: ControlConfig) -> tuple[int, bool, dict]:
    """(n_envs, normalize observations, SB3 PPO kwargs) from the preset and ``cfg.ppo``."""
    s = {"n_envs": 4} | PPO_PRESETS.get(cfg.env_id, {}) | cfg.ppo
    return int(s.pop("n_envs")), bool(s.pop("normalize", False)), s


def make_agent_env(cfg: ControlConfig, reward_fn, capacity: int):
    """The wrapped env (``.buffer``, ``.env_steps``) and the env PPO steps (VecNormalize on top if set)."""
    n_envs, normalize, _ = ppo_settings(cfg)
    wrapped = wrap(make_vec_env(cfg.env_id, n_envs, cfg.seed, cfg.env_kwargs), reward_fn, cfg.behaviour, capacity)
    if not normalize:
        return wrapped, wrapped
    from stable_baselines3.common.vec_env import VecNormalize

    return wrapped, VecNormalize(wrapped, norm_obs=True, norm_reward=False)


def _obs_fn(agent_env):
    """Observation preprocessing for evaluation: VecNormalize's, frozen, or none."""
    return agent_env.normalize_obs if hasattr(agent_env, "normalize_obs") else None


def _collect(model, env, steps: int) -> None:
    """Let the (untrained) agent act for ``steps`` env steps without learning: iteration 0's clips."""
    obs = env.reset()
    for _ in range(-(-steps // env.num_envs)):
        action, _ = model.predict(obs, deterministic=False)
        obs, _, _, _ = env.step(action)


def run(cfg: ControlConfig, store=None, run_id: int | None = None, resume: bool = False) -> Result:
    """Train an agent on a reward learned from clip comparisons. ``store``: a workspace Store to
    record every comparison in (see :mod:`tether.control.db`); ``resume``: continue from ``out_dir``'s
    checkpoint."""
    from stable_baselines3 import PPO

    from tether.control.db import forget_after, store_comparisons
    from tether.recipes.common import MetricsLog

    # ---- setup --------------------------------------------------------------------------------------
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out, ckpt = Path(cfg.out_dir), Path(cfg.out_dir) / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.fragment_length < 1 or cfg.label_budget < 1 or cfg.total_steps < 1:
        raise TetherError("fragment_length, label_budget and total_steps must all be >= 1")
    n_envs, _, ppo_kwargs = ppo_settings(cfg)
    n_steps = int(ppo_kwargs.get("n_steps", 2048))
    rollout = n_steps * n_envs  # env steps per PPO rollout
    initial_steps = max(rollout, 4 * cfg.fragment_length * n_envs)
    n_rollouts = (cfg.total_steps - initial_steps) // rollout
    if n_rollouts < 1:
        raise TetherError(f"total_steps {cfg.total_steps} is too small for {cfg.env_id}: it needs at least "
                          f"{initial_steps + rollout} (clip collection + one PPO rollout of {n_steps} x {n_envs} envs)")
    iterations = min(cfg.iterations or min(n_rollouts, 50), n_rollouts)
    per_iter = [n_rollouts // iterations + (i < n_rollouts % iterations) for i in range(iterations)]  # rollouts
    schedule = label_schedule(cfg.label_budget, iterations, cfg.initial_label_fraction, cfg.label_decay)

    wrapped, agent_env = make_agent_env(cfg, None, capacity=max(per_iter[0] * n_steps, initial_steps // n_envs))
    in_dim = wrapped.buffer.obs.shape[2] + wrapped.buffer.act.shape[2]
    net = RewardEnsemble(in_dim, cfg.ensemble_size, cfg.reward_hidden, seed=cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.reward_lr, weight_decay=cfg.reward_weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    wrapped.reward_fn = net.numpy_reward()  # never the true reward, even before the first labels
    model = PPO("MlpPolicy", agent_env, seed=cfg.seed, device="cpu", verbose=0, **ppo_kwargs)
    labeler = SyntheticLabeler(cfg.noise, cfg.temperature, seed=cfg.seed)
    bank: Clips | None = None  # every labelled clip
    pa, pb, mu = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)  # (P,) pairs
    boot = np.zeros((cfg.ensemble_size, 0), np.float32)  # (E, P) bootstrap counts
    start_it, history, known, t0, elapsed = 0, [], {}, time.time(), 0.0
    tmp = out / "checkpoint.tmp"
    if resume and not (ckpt / "state.json").is_file() and (tmp / "state.json").is_file():
        shutil.rmtree(ckpt, ignore_errors=True)  # killed between removing the old checkpoint and renaming the new
        tmp.rename(ckpt)
    if resume and (ckpt / "state.json").is_file():
        st = json.loads((ckpt / "state.json").read_text())
        model = PPO.load(ckpt / "agent.zip", env=agent_env, device="cpu")
        if hasattr(agent_env, "obs_rms"):
            agent_env.obs_rms = torch.load(ckpt / "obs_rms.pt", weights_only=False)
        saved = torch.load(ckpt / "reward.pt", weights_only=False)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["gen"])
        labeler.rng.bit_generator.state = st["labeler_rng"]
        bank = Clips.load(ckpt / "clips.npz") if (ckpt / "clips.npz").is_file() else None
        with np.load(ckpt / "pairs.npz") as z:
            pa, pb, mu, boot = z["a"], z["b"], z["mu"], z["boot"]
        start_it, history, known, elapsed = st["iteration"] + 1, st["history"], \
            {int(k): v for k, v in st["known"].items()}, st["seconds"]
        wrapped.env_steps = st["env_steps"]
        wrapped.reward_fn = net.numpy_reward()
        # forget what the killed iteration wrote after the checkpoint: label lines, database rows
        lines = (out / "labels.jsonl").read_text().splitlines() if (out / "labels.jsonl").is_file() else []
        (out / "labels.jsonl").write_text("".join(f"{x}\n" for x in lines if json.loads(x)["iteration"] < start_it))
        if store is not None:
            forget_after(store, out.name, st["iteration"])
    log = MetricsLog(out, step=wrapped.env_steps if start_it else 0)
    rng = np.random.default_rng([cfg.seed, start_it])
    base = out.parent.parent if out.parent.name == "runs" else out.parent

    # ---- loop ---------------------------------------------------------------------------------------
    for it in range(start_it, iterations + 1):
        t_it = time.time()
        n_eps = len(wrapped.episode_returns)
        if it == 0:
            _collect(model, agent_env, initial_steps)
        else:
            model.learn(per_iter[it - 1] * rollout, reset_num_timesteps=False, progress_bar=False)

        # clips from this iteration's experience; pairs; answers
        n_pairs = schedule[it]
        pool_size = 2 * n_pairs * (cfg.oversample if cfg.selection == "disagreement" and it > 0 else 1)
        pool = cut_clips(wrapped.buffer, pool_size, cfg.fragment_length, rng) if n_pairs else None
        a, b, dis = (select_pairs(pool, n_pairs, rng, cfg.selection, net if it > 0 else None, cfg.oversample)
                     if pool is not None else (np.zeros(0, np.int64),) * 2 + (np.zeros(0),))
        choices = labeler.label(pool.true_return[a], pool.true_return[b]) if len(a) else []
        if len(a):
            used, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
            offset = 0 if bank is None else len(bank)
            bank = Clips.concat([bank, pool.take(used)]) if bank is not None else pool.take(used)
            new_a, new_b = offset + inv[:len(a)], offset + inv[len(a):]
            pa, pb = np.concatenate([pa, new_a]), np.concatenate([pb, new_b])
            mu = np.concatenate([mu, np.array([CHOICE_TARGET[c] for c in choices], np.float32)])
            boot = np.concatenate([boot, np.random.default_rng([cfg.seed, it, 7]).poisson(
                1.0, (cfg.ensemble_size, len(a))).astype(np.float32)], 1)
            with open(out / "labels.jsonl", "a") as f:
                for k in range(len(a)):
                    f.write(json.dumps({"iteration": it, "clip_a": int(new_a[k]), "clip_b": int(new_b[k]),
                                        "choice": choices[k], "labeler": labeler.name,
                                        "return_a": float(bank.true_return[new_a[k]]),
                                        "return_b": float(bank.true_return[new_b[k]]),
                                        "disagreement": float(dis[k])}) + "\n")

        # reward ensemble: incremental retraining on every label so far, then output statistics
        train_stats = {}
        if len(mu):
            x = torch.from_numpy(bank.x)  # (K, T, F)
            if it == 0:
                net.set_input_stats(x.reshape(-1, in_dim))
            train_stats = train_ensemble(net, opt, x[pa], x[pb], torch.from_numpy(mu), torch.from_numpy(boot),
                                         cfg.initial_reward_epochs if it == 0 else cfg.reward_epochs,
                                         cfg.reward_batch_size, cfg.label_noise, gen)
            recent = wrapped.buffer.obs[:wrapped.buffer.size], wrapped.buffer.act[:wrapped.buffer.size]
            net.set_output_stats(torch.from_numpy(np.concatenate(recent, -1).reshape(-1, in_dim)))
            wrapped.reward_fn = net.numpy_reward()

        # metrics
        eps = wrapped.episode_returns[n_eps:]
        rec = {"step": wrapped.env_steps, "iteration": it, "labels": int(len(mu)), "new_labels": len(a),
               "disagreement": float(np.mean(dis)) if len(dis) else 0.0,
               "train_true_return": float(np.mean(eps)) if eps else float("nan"),
               "iteration_seconds": time.time() - t_it} | train_stats
        if it > 0 and (it % cfg.eval_every == 0 or it == iterations):
            t_eval = time.time()
            rec["eval_true_return"] = evaluate(model, cfg.env_id, cfg.eval_episodes, cfg.seed + 10_000,
                                               cfg.behaviour, cfg.env_kwargs, obs_fn=_obs_fn(agent_env))
            rec["eval_seconds"] = time.time() - t_eval  # not training: excluded from wall-time comparisons
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and np.isnan(v))}
        history.append(rec)
        log.log(rec)

        # checkpoint (written whole, then swapped in) and the comparisons in the database
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save(tmp / "agent.zip")
        if hasattr(agent_env, "obs_rms"):
            torch.save(agent_env.obs_rms, tmp / "obs_rms.pt")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}, tmp / "reward.pt")
        if bank is not None:
            bank.save(tmp / "clips.npz")
            if len(a):
                bank.save(out / "clips.npz")  # append-only: the database's clip indices stay valid
        np.savez(tmp / "pairs.npz", a=pa, b=pb, mu=mu, boot=boot)
        if store is not None and len(a):
            clips_file = str((out / "clips.npz").resolve().relative_to(base.resolve())) \
                if out.resolve().is_relative_to(base.resolve()) else str((out / "clips.npz").resolve())
            info = {int(k): {"env_index": int(bank.env_index[k]), "start_step": int(bank.start_step[k]),
                             "iteration": it} for k in np.concatenate([new_a, new_b])}
            meta = [{"return_a": float(bank.true_return[i]), "return_b": float(bank.true_return[j]),
                     "disagreement": float(d), "iteration": it, "behaviour": cfg.behaviour_name,
                     "error_rate": cfg.noise, "temperature": cfg.temperature}
                    for i, j, d in zip(new_a, new_b, dis)]
            known = store_comparisons(store, env_id=cfg.env_id, behaviour=cfg.behaviour_name, run_name=out.name,
                                      run_id=run_id, clips_file=clips_file, fragment_length=cfg.fragment_length,
                                      clip_info=info, pairs=[(int(i), int(j), c, m) for i, j, c, m in
                                                             zip(new_a, new_b, choices, meta)],
                                      labeler=labeler.name, known=known)
        state = {"iteration": it, "env_steps": wrapped.env_steps, "history": history, "known": known,
                 "seconds": elapsed + time.time() - t0, "labeler_rng": labeler.rng.bit_generator.state,
                 "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "behaviour"}}
        (tmp / "state.json").write_text(json.dumps(state, default=str))
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)

    # ---- save ---------------------------------------------------------------------------------------
    log.close()
    model.save(out / "agent.zip")
    torch.save(net.state_dict(), out / "reward.pt")
    final = next((h["eval_true_return"] for h in reversed(history) if "eval_true_return" in h), float("nan"))
    res = Result(out, wrapped.env_steps, int(len(mu)), final,
                 float(np.mean(wrapped.episode_returns[-10:])) if wrapped.episode_returns else float("nan"),
                 elapsed + time.time() - t0, history)
    (out / "result.json").write_text(json.dumps({k: v for k, v in dataclasses.asdict(res).items() if k != "history"}
                                                | {"out_dir": str(out)}, indent=1))
    return res
