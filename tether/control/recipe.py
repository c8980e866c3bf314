"""`tether control`: RLHF for a gymnasium agent from comparisons of trajectory clips
(Christiano et al. 2017, "Deep reinforcement learning from human preferences").

Reads top to bottom. Setup: the vectorised env wrapped so the agent (SB3 PPO) sees the reward
ensemble's normalised prediction instead of the env's reward, the ensemble, the label schedule.
Loop, one iteration at a time: experience (iteration 0: the untrained agent acts without learning;
later: PPO learns for a few rollouts on the current learned reward), clips cut from that experience,
pairs chosen (random or by ensemble disagreement), answered by the synthetic labeler — or, with
``labeler="web"``, stored as pairwise tasks for people in ``tether serve``, a checkpoint, a wait until
they are answered, the answers read back from the database —, the ensemble retrained incrementally
on all labels so far, its output re-normalised on recent experience, a checkpoint. Save: the agent,
the ensemble, clips.npz, labels.jsonl, metrics.jsonl + TensorBoard.

Every environment step the agent takes is counted against ``total_steps``, the clip-collection
steps of iteration 0 included; evaluation episodes (true return, on a separate env) are not.
How it departs from the paper: experience is on-policy PPO rollouts, not A2C/TRPO running
asynchronously with the labelers; labels come in per-iteration batches (imitation's schedule).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tether.control.clips import CHOICE_TARGET, Clips, SyntheticLabeler, cut_clips, label_schedule, select_pairs
from tether.control.env import Behaviour, evaluate, make_vec_env, wrap
from tether.control.reward import RewardEnsemble, train_ensemble
from tether.errors import TetherError

LABELERS = ("synthetic", "web")
# PPO settings per env (rl-baselines3-zoo's tuned ones, except that HalfCheetah keeps SB3's Tanh where the zoo
# uses ReLU: bench/RESULTS.md's figures are with Tanh); anything else gets SB3's defaults and 4 envs.
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
    labeler: str = "synthetic"  # or "web": people answer the pairs in `tether serve`; the run waits
    overlap: int = 1  # web: labelers per clip pair (each answer is a label)
    web_poll_seconds: float = 5.0  # web: how often to look for answers
    web_timeout_minutes: float | None = None  # web: give up waiting after this (resume waits again)
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


def _save_clips(bank: Clips, path: Path) -> None:
    """Replace ``path`` atomically: the web app may be reading it to draw a clip."""
    part = path.with_name(f".{path.stem}.part.npz")
    bank.save(part)
    os.replace(part, path)


def _checkpoint(out: Path, model, agent_env, net, opt, gen, bank, pairs: dict, state: dict,
                recent: tuple | None = None) -> None:
    """Write the checkpoint whole into ``checkpoint.tmp``, then swap it in for ``checkpoint``."""
    tmp, ckpt = out / "checkpoint.tmp", out / "checkpoint"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save(tmp / "agent.zip")
    if hasattr(agent_env, "obs_rms"):
        torch.save(agent_env.obs_rms, tmp / "obs_rms.pt")
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}, tmp / "reward.pt")
    if bank is not None:
        bank.save(tmp / "clips.npz")
    np.savez(tmp / "pairs.npz", **pairs)
    if recent is not None:  # a run waiting for web labels: the experience the reward is normalised on
        np.savez(tmp / "recent.npz", obs=recent[0], act=recent[1])
    (tmp / "state.json").write_text(json.dumps(state, default=str))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)


def run(cfg: ControlConfig, store=None, run_id: int | None = None, resume: bool = False,
        say: Callable[[str], None] | None = None) -> Result:
    """Train an agent on a reward learned from clip comparisons. ``store``: a workspace Store to
    record every comparison in (see :mod:`tether.control.db`; needed for ``labeler="web"``, whose
    tasks and answers live there); ``resume``: continue from ``out_dir``'s checkpoint; ``say``:
    where progress lines go (default: print)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    from tether.control.db import forget_after, store_clip_tasks, store_comparisons
    from tether.control.weblabels import read_answers, wait_for_tasks
    from tether.recipes.common import MetricsLog

    # ---- setup --------------------------------------------------------------------------------------
    say = say or (lambda msg: print(msg, flush=True))
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out, ckpt = Path(cfg.out_dir), Path(cfg.out_dir) / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    if cfg.fragment_length < 1 or cfg.label_budget < 1 or cfg.total_steps < 1:
        raise TetherError("fragment_length, label_budget and total_steps must all be >= 1")
    if cfg.labeler not in LABELERS:
        raise TetherError(f"labeler: expected one of {', '.join(LABELERS)}, got {cfg.labeler!r}")
    web = cfg.labeler == "web"
    if web and store is None:
        raise TetherError("labeler 'web' needs the workspace database (its tasks and answers live there): "
                          "pass a store (the CLI's --store, on by default)")
    if cfg.overlap < 1:
        raise TetherError(f"overlap: each clip pair needs at least 1 labeler, got {cfg.overlap}")
    if cfg.web_poll_seconds <= 0:
        raise TetherError(f"web_poll_seconds: must be > 0, got {cfg.web_poll_seconds}")
    if cfg.web_timeout_minutes is not None and cfg.web_timeout_minutes < 0:
        raise TetherError(f"web_timeout_minutes: must be >= 0, got {cfg.web_timeout_minutes}")
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
    agent_log = configure(str(out / "tb" / "agent"), ["tensorboard"])  # SB3's PPO metrics beside ours (else
    model.set_logger(agent_log)  # each learn() call would make a new empty SB3 folder in the temp directory)
    labeler = SyntheticLabeler(cfg.noise, cfg.temperature, seed=cfg.seed)
    bank: Clips | None = None  # every labelled clip
    pa, pb, mu = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)  # (P,) pairs
    boot = np.zeros((cfg.ensemble_size, 0), np.float32)  # (E, P) bootstrap counts
    start_it, history, known, t0, elapsed = 0, [], {}, time.time(), 0.0
    pending = None  # web labels: an iteration whose clip pairs are out with the labelers
    tmp = out / "checkpoint.tmp"
    if resume and not (ckpt / "state.json").is_file() and (tmp / "state.json").is_file():
        shutil.rmtree(ckpt, ignore_errors=True)  # killed between removing the old checkpoint and renaming the new
        tmp.rename(ckpt)
    if resume and (ckpt / "state.json").is_file():
        st = json.loads((ckpt / "state.json").read_text())
        pending = st.get("pending")
        if pending is not None and not web:
            raise TetherError(f"{ckpt}: this run is waiting for web labels (iteration {pending['iteration']}); "
                              "resume it with labeler 'web' (--labeler web)")
        model = PPO.load(ckpt / "agent.zip", env=agent_env, device="cpu")
        model.set_logger(agent_log)
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
        if pending is not None:
            with np.load(ckpt / "recent.npz") as z:
                pending["recent"] = (z["obs"], z["act"])
        start_it, history, known, elapsed = st["iteration"] + 1, st["history"], \
            {int(k): v for k, v in st["known"].items()}, st["seconds"]
        wrapped.env_steps = st["env_steps"]
        wrapped.reward_fn = net.numpy_reward()
        # forget what the killed iteration wrote after the checkpoint: label lines, database rows
        lines = (out / "labels.jsonl").read_text().splitlines() if (out / "labels.jsonl").is_file() else []
        (out / "labels.jsonl").write_text("".join(f"{x}\n" for x in lines if json.loads(x)["iteration"] < start_it))
        if store is not None:
            forget_after(store, out.name, st["iteration"] if pending is None else pending["iteration"])
    # a run resumed while waiting keeps metrics up to the step before the waiting iteration's record
    log = MetricsLog(out, step=(wrapped.env_steps - (pending is not None)) if start_it else 0)
    rng = np.random.default_rng([cfg.seed, start_it])
    base = out.parent.parent if out.parent.name == "runs" else out.parent
    clips_file = str((out / "clips.npz").resolve().relative_to(base.resolve())) \
        if out.resolve().is_relative_to(base.resolve()) else str((out / "clips.npz").resolve())

    def clip_info(clips, it: int) -> dict[int, dict]:  # what the database records of each clip
        extra = {"env_kwargs": cfg.env_kwargs} if cfg.env_kwargs else {}
        return {int(k): {"env_index": int(bank.env_index[k]), "start_step": int(bank.start_step[k]),
                         "iteration": it, **extra} for k in clips}

    def state(it: int, **more) -> dict:
        return {"iteration": it, "env_steps": wrapped.env_steps, "history": history, "known": known,
                "seconds": elapsed + time.time() - t0, "labeler_rng": labeler.rng.bit_generator.state,
                "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "behaviour"}, **more}

    # ---- loop ---------------------------------------------------------------------------------------
    for it in range(start_it, iterations + 1):
        waited = 0.0  # seconds spent waiting for web labels
        if pending is None:
            t_it, it_seconds = time.time(), 0.0
            n_eps = len(wrapped.episode_returns)
            if it == 0:
                _collect(model, agent_env, initial_steps)
            else:
                model.learn(per_iter[it - 1] * rollout, reset_num_timesteps=False, progress_bar=False)

            # clips from this iteration's experience; pairs
            n_pairs = schedule[it]
            pool_size = 2 * n_pairs * (cfg.oversample if cfg.selection == "disagreement" and it > 0 else 1)
            pool = cut_clips(wrapped.buffer, pool_size, cfg.fragment_length, rng) if n_pairs else None
            a, b, dis = (select_pairs(pool, n_pairs, rng, cfg.selection, net if it > 0 else None, cfg.oversample)
                         if pool is not None else (np.zeros(0, np.int64),) * 2 + (np.zeros(0),))
            new_a, new_b = np.zeros(0, np.int64), np.zeros(0, np.int64)
            if len(a):
                used, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
                offset = 0 if bank is None else len(bank)
                bank = Clips.concat([bank, pool.take(used)]) if bank is not None else pool.take(used)
                new_a, new_b = offset + inv[:len(a)], offset + inv[len(a):]
            eps = wrapped.episode_returns[n_eps:]
            recent = wrapped.buffer.obs[:wrapped.buffer.size], wrapped.buffer.act[:wrapped.buffer.size]
            task_ids: list[int] = []
            if web and len(new_a):  # out to the labelers: clips on disk, tasks in the database, a checkpoint
                _save_clips(bank, out / "clips.npz")  # append-only: the database's clip indices stay valid
                task_ids, known = store_clip_tasks(
                    store, env_id=cfg.env_id, behaviour=cfg.behaviour_name, run_name=out.name, run_id=run_id,
                    clips_file=clips_file, fragment_length=cfg.fragment_length,
                    clip_info=clip_info(np.concatenate([new_a, new_b]), it), iteration=it,
                    pairs=[(int(i), int(j)) for i, j in zip(new_a, new_b)], labels_needed=cfg.overlap, known=known)
                pending = {"iteration": it, "a": new_a.tolist(), "b": new_b.tolist(), "dis": np.asarray(dis).tolist(),
                           "tasks": task_ids, "eps": list(map(float, eps)), "seconds": time.time() - t_it}
                _checkpoint(out, model, agent_env, net, opt, gen, bank, dict(a=pa, b=pb, mu=mu, boot=boot),
                            state(it - 1, pending=pending), recent)
                say(f"iteration {it}: {len(task_ids)} clip pairs to label, {cfg.overlap} labeler(s) each: "
                    f"open `tether serve -w {base}` (labelers: `tether labelers add NAME -w {base}`)")
        else:  # resumed while waiting for web labels
            it_seconds, t_it = pending["seconds"], time.time()
            new_a, new_b = np.array(pending["a"], np.int64), np.array(pending["b"], np.int64)
            dis, eps, task_ids, recent = np.array(pending["dis"]), pending["eps"], pending["tasks"], pending["recent"]
            say(f"iteration {it}: waiting again for the labels of {len(task_ids)} clip pairs")

        # answers: (clip a, clip b, choice, labeler, extra) per label; "cant_tell" is kept out of training
        if web and task_ids:
            t_wait = time.time()
            wait_for_tasks(store, task_ids, poll_s=cfg.web_poll_seconds, what=f" (iteration {it})", say=say,
                           timeout_s=None if cfg.web_timeout_minutes is None else 60 * cfg.web_timeout_minutes)
            answers = [(int(new_a[x.pair]), int(new_b[x.pair]), x.choice, x.labeler,
                        {"task_id": x.task_id, "comparison_id": x.comparison_id, "duration_ms": x.duration_ms,
                         "disagreement": float(dis[x.pair])}) for x in read_answers(store, task_ids)]
            waited = time.time() - t_wait
        else:
            choices = labeler.label(bank.true_return[new_a], bank.true_return[new_b]) if len(new_a) else []
            answers = [(int(i), int(j), c, labeler.name, {"disagreement": float(d)})
                       for i, j, c, d in zip(new_a, new_b, choices, dis)]
        trained = [x for x in answers if x[2] in CHOICE_TARGET]
        if trained:
            pa = np.concatenate([pa, np.array([x[0] for x in trained], np.int64)])
            pb = np.concatenate([pb, np.array([x[1] for x in trained], np.int64)])
            mu = np.concatenate([mu, np.array([CHOICE_TARGET[x[2]] for x in trained], np.float32)])
            boot = np.concatenate([boot, np.random.default_rng([cfg.seed, it, 7]).poisson(
                1.0, (cfg.ensemble_size, len(trained))).astype(np.float32)], 1)
        if answers:
            with open(out / "labels.jsonl", "a") as f:
                for i, j, c, who, extra in answers:
                    f.write(json.dumps({"iteration": it, "clip_a": i, "clip_b": j, "choice": c, "labeler": who,
                                        "return_a": float(bank.true_return[i]), "return_b": float(bank.true_return[j]),
                                        **extra}) + "\n")

        # reward ensemble: incremental retraining on every label so far, then output statistics
        train_stats = {}
        if len(mu):
            x = torch.from_numpy(bank.x)  # (K, T, F)
            if it == 0 or web and bool((net.in_mean == 0).all() and (net.in_std == 1).all()):  # first labels
                net.set_input_stats(x.reshape(-1, in_dim))
            train_stats = train_ensemble(net, opt, x[pa], x[pb], torch.from_numpy(mu), torch.from_numpy(boot),
                                         cfg.initial_reward_epochs if it == 0 else cfg.reward_epochs,
                                         cfg.reward_batch_size, cfg.label_noise, gen)
            net.set_output_stats(torch.from_numpy(np.concatenate(recent, -1).reshape(-1, in_dim)))
            wrapped.reward_fn = net.numpy_reward()

        # metrics
        rec = {"step": wrapped.env_steps, "iteration": it, "labels": int(len(mu)), "new_labels": len(trained),
               "disagreement": float(np.mean(dis)) if len(dis) else 0.0,
               "train_true_return": float(np.mean(eps)) if len(eps) else float("nan"),
               "iteration_seconds": time.time() - t_it + it_seconds} | train_stats  # waiting included
        if web:
            rec |= {"web_answers": len(answers), "cant_tell": len(answers) - len(trained), "label_wait_seconds": waited}
        if it > 0 and (it % cfg.eval_every == 0 or it == iterations):
            t_eval = time.time()
            rec["eval_true_return"] = evaluate(model, cfg.env_id, cfg.eval_episodes, cfg.seed + 10_000,
                                               cfg.behaviour, cfg.env_kwargs, obs_fn=_obs_fn(agent_env))
            rec["eval_seconds"] = time.time() - t_eval  # not training: excluded from wall-time comparisons
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and np.isnan(v))}
        history.append(rec)
        log.log(rec)

        # the comparisons in the database (synthetic labels; web ones are there already), then a checkpoint
        if not web and len(new_a):
            _save_clips(bank, out / "clips.npz")  # append-only: the database's clip indices stay valid
            if store is not None:
                meta = [{"return_a": float(bank.true_return[i]), "return_b": float(bank.true_return[j]),
                         "disagreement": float(d), "iteration": it, "behaviour": cfg.behaviour_name,
                         "error_rate": cfg.noise, "temperature": cfg.temperature}
                        for i, j, d in zip(new_a, new_b, dis)]
                known = store_comparisons(store, env_id=cfg.env_id, behaviour=cfg.behaviour_name, run_name=out.name,
                                          run_id=run_id, clips_file=clips_file, fragment_length=cfg.fragment_length,
                                          clip_info=clip_info(np.concatenate([new_a, new_b]), it),
                                          pairs=[(int(i), int(j), c, m) for (i, j, c, _, _), m in zip(answers, meta)],
                                          labeler=labeler.name, known=known)
        pending = None
        _checkpoint(out, model, agent_env, net, opt, gen, bank, dict(a=pa, b=pb, mu=mu, boot=boot), state(it))

    # ---- save ---------------------------------------------------------------------------------------
    log.close()
    agent_log.close()
    model.save(out / "agent.zip")
    torch.save(net.state_dict(), out / "reward.pt")
    final = next((h["eval_true_return"] for h in reversed(history) if "eval_true_return" in h), float("nan"))
    res = Result(out, wrapped.env_steps, int(len(mu)), final,
                 float(np.mean(wrapped.episode_returns[-10:])) if wrapped.episode_returns else float("nan"),
                 elapsed + time.time() - t0, history)
    (out / "result.json").write_text(json.dumps({k: v for k, v in dataclasses.asdict(res).items() if k != "history"}
                                                | {"out_dir": str(out)}, indent=1))
    return res
