"""tether control (reward learned from synthetic clip comparisons) vs SB3 PPO on the true reward,
at equal environment steps; prints true returns, labels and wall times, and their ratios.

    .venv/bin/python bench/control.py --env Pendulum-v1 --steps 100000 --labels 300 --seeds 0
    .venv/bin/python bench/control.py --env HalfCheetah-v5 --steps 307200 --labels 700 --seeds 0 1 2 --imitation

All arms use the same PPO settings (tether.control.recipe.PPO_PRESETS), the same env wrapper (the
baseline's passes the true reward through) and the same step count: the RLHF arm's, clip collection
included. Return = mean true return of the final agent over 10 deterministic evaluation episodes;
wall time = training only (evaluation excluded), one torch thread each, arms run one after another.

``--imitation`` adds the third arm, imitation 1.0.1's PreferenceComparisons (bench/imitation_arm.py
says what it holds equal). imitation pins gymnasium 0.29 / stable-baselines3 2.2, which lack the v5
MuJoCo envs, so it is installed with --no-deps into bench/.imitation (with scipy, its one import
the venv lacks) and runs on this venv's gymnasium 1.x / SB3 2.x through PYTHONPATH. It runs first:
imitation rounds its steps to whole rollouts and adds the steps it takes to gather clips, so its
counted env steps become the budget of the other two arms.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def true_reward_ppo(env_id: str, steps: int, seed: int, threads: int = 1, behaviour=None) -> dict:
    """SB3 PPO on the true reward (the env's, or `behaviour`'s) for `steps` env steps;
    {'eval_return', 'seconds', 'env_steps'}. Where the preset normalises observations (rl-zoo's
    ``normalize: true``), rewards are normalised too, as the zoo does (VecNormalize at PPO's gamma):
    the baseline gets its tuned setup; tether's arm normalises its learned reward itself."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecNormalize

    from tether.control.env import evaluate
    from tether.control.recipe import ControlConfig, make_agent_env, ppo_settings

    torch.set_num_threads(threads)
    cfg = ControlConfig(env_id=env_id, seed=seed, behaviour=behaviour)
    _, normalize, kwargs = ppo_settings(cfg)
    t0 = time.time()
    wrapped, _ = make_agent_env(dataclasses.replace(cfg, ppo={"normalize": False}), None, capacity=1)
    agent_env = VecNormalize(wrapped, norm_obs=True, norm_reward=True, gamma=kwargs.get("gamma", 0.99)) \
        if normalize else wrapped
    model = PPO("MlpPolicy", agent_env, seed=seed, device="cpu", verbose=0, **kwargs)
    model.set_logger(Logger(None, []))  # no logs (SB3 would make an empty folder in the temp directory)
    model.learn(steps, progress_bar=False)
    seconds = time.time() - t0
    ret = evaluate(model, env_id, 10, seed + 10_000, behaviour, obs_fn=agent_env.normalize_obs if normalize else None)
    return {"eval_return": ret, "seconds": seconds, "env_steps": wrapped.env_steps}


def tether_control(env_id: str, steps: int, labels: int, seed: int, out: Path, **kw) -> dict:
    from tether.control.recipe import ControlConfig, run

    t0 = time.time()
    res = run(ControlConfig(env_id=env_id, total_steps=steps, label_budget=labels, seed=seed,
                            out_dir=str(out / f"control-{env_id}-{seed}"), **kw))
    seconds = time.time() - t0 - sum(h.get("eval_seconds", 0.0) for h in res.history)  # training only
    return {"eval_return": res.eval_return, "seconds": seconds, "env_steps": res.env_steps,
            "labels": res.labels, "train_return": res.train_return}


IMITATION_DIR = Path(__file__).resolve().parent / ".imitation"


def ensure_imitation() -> None:
    import subprocess

    if (IMITATION_DIR / "imitation" / "__init__.py").is_file() and (IMITATION_DIR / "scipy").is_dir():
        return
    print(f"installing imitation==1.0.1 (--no-deps) and scipy into {IMITATION_DIR} ...", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(IMITATION_DIR),
           "imitation==1.0.1", "scipy"]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"could not install imitation: {' '.join(cmd)}")


def imitation_arm(env_id: str, steps: int, labels: int, seed: int, fragment_length: int, out: Path) -> dict:
    """bench/imitation_arm.py in a subprocess with bench/.imitation first on the path."""
    import os
    import subprocess

    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(IMITATION_DIR), str(Path(__file__).resolve().parents[1])])}
    cmd = [sys.executable, str(Path(__file__).with_name("imitation_arm.py")), "--env", env_id, "--steps", str(steps),
           "--labels", str(labels), "--seed", str(seed), "--fragment-length", str(fragment_length),
           "--out", str(out / f"imitation-{env_id}-{seed}")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the imitation arm failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--selection", default="disagreement")
    ap.add_argument("--fragment-length", type=int, default=25)
    ap.add_argument("--behaviour", help="MODULE:FUNC or FILE.py:FUNC: a behaviour as the true reward "
                    "(e.g. tether.control.behaviours:spin_clockwise)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tether-bench-control"))
    ap.add_argument("--imitation", action="store_true",
                    help="also run imitation's PreferenceComparisons (first; its env steps set the budget)")
    ap.add_argument("--arms", default="tether,ppo_true_reward",
                    help="comma-separated arms besides imitation (tether, ppo_true_reward; '' for imitation alone)")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - {"tether", "ppo_true_reward"} or not (arms or args.imitation):
        sys.exit(f"--arms: a comma-separated subset of tether,ppo_true_reward, got {args.arms!r}")
    if args.imitation:
        if args.behaviour:
            sys.exit("--imitation compares on the env's reward only (imitation's labeler reads the env reward)")
        ensure_imitation()
    behaviour = None
    if args.behaviour:
        from tether.commands.common import load_function

        behaviour = load_function(args.behaviour, "--behaviour")
    rows = []
    for seed in args.seeds:
        row, steps = {"seed": seed}, args.steps
        if args.imitation:
            row["imitation"] = imitation_arm(args.env, args.steps, args.labels, seed, args.fragment_length, args.out)
            steps = row["imitation"]["env_steps"]
        if "tether" in arms:
            row["tether"] = tether_control(args.env, steps, args.labels, seed, args.out, selection=args.selection,
                                           fragment_length=args.fragment_length, behaviour=behaviour,
                                           behaviour_name=args.behaviour or "env-reward", eval_every=10**9)
            steps = row["tether"]["env_steps"]  # whole rollouts, clip collection counted
        if "ppo_true_reward" in arms:
            row["ppo_true_reward"] = true_reward_ppo(args.env, steps, seed, behaviour=behaviour)
        rows.append(row)
        print(json.dumps(row), flush=True)
    import numpy as np

    def stat(arm: str, key: str) -> str:
        v = [r[arm][key] for r in rows]
        return f"{np.mean(v):.1f}" + (f" ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else "")

    base = "ppo_true_reward" if "ppo_true_reward" in arms else None
    base_ret = np.mean([r[base]["eval_return"] for r in rows]) if base else 0.0
    base_s = np.mean([r[base]["seconds"] for r in rows]) if base else 0.0
    print(f"{args.env}, {len(rows)} seed(s), {args.labels} labels; env steps: "
          + ", ".join(f"{arm} {int(np.mean([r[arm]['env_steps'] for r in rows]))}" for arm in rows[0] if arm != "seed"))
    for arm in [a for a in rows[0] if a != "seed"]:
        ret = np.mean([r[arm]["eval_return"] for r in rows])
        sec = np.mean([r[arm]["seconds"] for r in rows])
        share = f" ({ret / base_ret:6.1%} of true-reward PPO's)" if base_ret > 0 else ""  # negative returns: no ratio
        ratio = f" ({sec / base_s:.2f}x true-reward PPO's)" if base else ""
        print(f"  {arm:16s} true return {stat(arm, 'eval_return'):>16s}{share}   wall {sec:6.0f} s{ratio}")


if __name__ == "__main__":
    main()
