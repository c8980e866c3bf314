"""The third arm of bench/control.py: imitation 1.0.1's PreferenceComparisons, on this venv's
gymnasium / stable-baselines3 with imitation itself from bench/.imitation (installed there with
--no-deps by bench/control.py --imitation). Prints one JSON line last:
{"eval_return", "seconds", "env_steps", "labels"}.

    PYTHONPATH=bench/.imitation:. .venv/bin/python bench/imitation_arm.py --env HalfCheetah-v5 \
        --steps 307200 --labels 700 --seed 0

Held equal to tether's arm: the agent (SB3 PPO with tether.control.recipe.PPO_PRESETS, observations
through VecNormalize when the preset says so), the clip length, the label budget, the number of
iterations (one per PPO rollout, at most 50), the 10 % of labels on the untrained agent's clips and
the evaluation (tether.control.env.evaluate: 10 deterministic episodes on a separate env, not counted).
imitation's own choices are kept where they are its method: its reward net (BasicRewardNet over
(obs, action), RunningNorm on inputs and outputs, as its train_preference_comparisons script builds
it), its trainer (3 epochs a round, 4x in the first), random fragments, the hyperbolic query
schedule, its synthetic labeler at its defaults (answers sampled from a Boltzmann choice over the two
clips' true returns at temperature 1: near-exact at these envs' reward scales, as tether's exact one).
Every env step is counted by a wrapper under everything else (agent training and the extra steps
imitation takes to gather clips), so bench/control.py can give the other arms the same budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--steps", type=int, default=100_000, help="the total_timesteps imitation is asked for")
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fragment-length", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tether-bench-control/imitation"),
                    help="imitation's logs (progress.csv)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from imitation.algorithms import preference_comparisons as pc
    from imitation.rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
    from imitation.util import logger as imit_logger
    from imitation.util.networks import RunningNorm
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

    from tether.control.env import evaluate, make_vec_env
    from tether.control.recipe import ControlConfig, ppo_settings

    class StepCounter(VecEnvWrapper):
        """Counts every env step taken through it (all envs)."""

        def __init__(self, venv):
            super().__init__(venv)
            self.env_steps = 0

        def reset(self):
            return self.venv.reset()

        def step_wait(self):
            out = self.venv.step_wait()
            self.env_steps += self.num_envs
            return out

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n_envs, normalize, kwargs = ppo_settings(ControlConfig(env_id=args.env, seed=args.seed))
    counter = StepCounter(make_vec_env(args.env, n_envs, args.seed))
    venv = VecNormalize(counter, norm_obs=True, norm_reward=False) if normalize else counter
    rollout = int(kwargs.get("n_steps", 2048)) * n_envs

    t0 = time.time()
    log = imit_logger.configure(str(args.out), ["csv"])  # its tables off stdout, no folders in the temp directory
    net = NormalizedRewardNet(BasicRewardNet(venv.observation_space, venv.action_space,
                                             normalize_input_layer=RunningNorm), RunningNorm)
    agent = PPO("MlpPolicy", venv, seed=args.seed, device="cpu", verbose=0, **kwargs)
    trainer = pc.AgentTrainer(algorithm=agent, reward_fn=net, venv=venv, rng=rng, custom_logger=log)
    prefs = pc.PreferenceComparisons(
        trainer, net, num_iterations=max(1, min(50, args.steps // rollout)),
        fragmenter=pc.RandomFragmenter(rng=rng, warning_threshold=0, custom_logger=log),
        preference_gatherer=pc.SyntheticGatherer(rng=rng, custom_logger=log),
        reward_trainer=pc.BasicRewardTrainer(pc.PreferenceModel(net), pc.CrossEntropyRewardLoss(), rng=rng, epochs=3,
                                             custom_logger=log),
        fragment_length=args.fragment_length, transition_oversampling=1, initial_comparison_frac=0.1,
        initial_epoch_multiplier=4, query_schedule="hyperbolic", allow_variable_horizon=False, custom_logger=log)
    prefs.train(total_timesteps=args.steps, total_comparisons=args.labels)
    seconds = time.time() - t0
    obs_fn = venv.normalize_obs if normalize else None
    ret = evaluate(agent, args.env, 10, args.seed + 10_000, obs_fn=obs_fn)
    print(json.dumps({"eval_return": ret, "seconds": seconds, "env_steps": counter.env_steps,
                      "labels": len(prefs.dataset)}), flush=True)


if __name__ == "__main__":
    main()
