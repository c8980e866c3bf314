"""tether control (reward learned from synthetic clip comparisons) vs SB3 PPO on the true reward,
at equal environment steps; prints true returns, labels and wall times, and their ratios.

    .venv/bin/python bench/control.py --env Pendulum-v1 --steps 100000 --labels 300 --seeds 0
    .venv/bin/python bench/control.py --env HalfCheetah-v5 --steps 1000000 --labels 700 --seeds 0 1 2

Both arms use the same PPO settings (tether.control.recipe.PPO_PRESETS), the same env wrapper (the
baseline's passes the true reward through) and the same step count: the RLHF arm's, clip collection
included. Return = mean true return of the final agent over 10 deterministic evaluation episodes.

Not done yet: the third arm, imitation's PreferenceComparisons at equal steps and labels. imitation
1.0.1 pins old gymnasium / stable-baselines3, so it belongs in its own venv (bench/.imitation, installed
with --no-deps); `--imitation` is refused until that arm is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def true_reward_ppo(env_id: str, steps: int, seed: int, threads: int = 1, behaviour=None) -> dict:
    """SB3 PPO on the true reward (the env's, or `behaviour`'s) for `steps` env steps;
    {'eval_return', 'seconds', 'env_steps'}."""
    import torch
    from stable_baselines3 import PPO

    from tether.control.env import evaluate
    from tether.control.recipe import ControlConfig, _obs_fn, make_agent_env, ppo_settings

    torch.set_num_threads(threads)
    cfg = ControlConfig(env_id=env_id, seed=seed, behaviour=behaviour)
    _, _, kwargs = ppo_settings(cfg)
    t0 = time.time()
    wrapped, agent_env = make_agent_env(cfg, None, capacity=1)
    model = PPO("MlpPolicy", agent_env, seed=seed, device="cpu", verbose=0, **kwargs)
    model.learn(steps, progress_bar=False)
    seconds = time.time() - t0
    ret = evaluate(model, env_id, 10, seed + 10_000, behaviour, obs_fn=_obs_fn(agent_env))
    return {"eval_return": ret, "seconds": seconds, "env_steps": wrapped.env_steps}


def tether_control(env_id: str, steps: int, labels: int, seed: int, out: Path, **kw) -> dict:
    from tether.control.recipe import ControlConfig, run

    t0 = time.time()
    res = run(ControlConfig(env_id=env_id, total_steps=steps, label_budget=labels, seed=seed,
                            out_dir=str(out / f"control-{env_id}-{seed}"), **kw))
    seconds = time.time() - t0 - sum(h.get("eval_seconds", 0.0) for h in res.history)  # training only
    return {"eval_return": res.eval_return, "seconds": seconds, "env_steps": res.env_steps,
            "labels": res.labels, "train_return": res.train_return}


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
    ap.add_argument("--imitation", action="store_true", help="(not written yet)")
    args = ap.parse_args()
    if args.imitation:
        sys.exit("the imitation arm is not written yet (see the module docstring)")
    behaviour = None
    if args.behaviour:
        from tether.commands.common import load_function

        behaviour = load_function(args.behaviour, "--behaviour")
    rows = []
    for seed in args.seeds:
        rl = tether_control(args.env, args.steps, args.labels, seed, args.out, selection=args.selection,
                            fragment_length=args.fragment_length, behaviour=behaviour,
                            behaviour_name=args.behaviour or "env-reward")
        base = true_reward_ppo(args.env, rl["env_steps"], seed, behaviour=behaviour)
        rows.append({"seed": seed, "tether": rl, "ppo_true_reward": base})
        print(json.dumps(rows[-1]), flush=True)
    import numpy as np

    t = np.mean([r["tether"]["eval_return"] for r in rows])
    b = np.mean([r["ppo_true_reward"]["eval_return"] for r in rows])
    ts = np.mean([r["tether"]["seconds"] for r in rows])
    bs = np.mean([r["ppo_true_reward"]["seconds"] for r in rows])
    print(f"{args.env}, {rows[0]['tether']['env_steps']} env steps, {rows[0]['tether']['labels']} labels, "
          f"{len(rows)} seed(s): tether {t:.1f} vs PPO on true reward {b:.1f} (true return); "
          f"wall time {ts:.0f} s vs {bs:.0f} s = {ts / bs:.2f}x")


if __name__ == "__main__":
    main()
