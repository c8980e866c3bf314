"""`tether bon`: best-of-N sampling, the cheap baseline every RLHF report compares against.

For each prompt, sample N answers from the policy, score them with the reward model, keep the best.
No training. Its KL to the policy it samples from is known in closed form (Stiennon et al. 2020,
appendix G; Hilton & Gao 2022, "Measuring Goodhart's law"):

    KL(best-of-N || policy) = log N - (N - 1) / N        nats per sequence

(an upper bound, exact when no two samples tie). The report sets best-of-N beside one plain sample
of the same policy (the first of the N, so both sides share their samples): gold win rate with a
95 % interval, mean gold and reward of each, and the analytic KL, so a trained policy's win rate at
its measured KL can be read against best-of-N's at log N - (N - 1) / N.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from tether import models, reward
from tether.errors import TetherError
from tether.eval.compare import sample_answers, win_rate
from tether.models import prompt_text

Prompt = str | list[dict]


def bon_kl(n: int) -> float:
    """Analytic KL of best-of-n to the sampling policy: log n - (n - 1) / n (nats per sequence)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass
class BoNConfig:
    policy: str = models.BUNDLED
    reward_model: str = ""  # a reward model folder from `tether rm`
    n: int = 4  # samples per prompt
    temperature: float = 0.7
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0


def run(cfg: BoNConfig, prompts: list[Prompt], gold_fn: Callable[[str, str, bool], float] | None = None) -> dict:
    """Best-of-N on `prompts`; returns the report (see the module docstring) with every chosen answer."""
    if cfg.n < 2:
        raise TetherError(f"bon: n must be at least 2, got {cfg.n}")
    if not prompts:
        raise TetherError("bon: no prompts")
    t0 = time.perf_counter()
    model, tok = models.load_policy(cfg.policy)
    gens = sample_answers(model, tok, prompts, cfg.n, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          seed=cfg.seed, batch_size=cfg.batch_size)
    del model
    rm, rm_tok = reward.load_reward_model(cfg.reward_model)
    items = [(prompts[k // cfg.n], g.text, g.finished) for k, g in enumerate(gens)]
    rewards = reward.score_texts(rm, rm_tok, items, batch_size=cfg.batch_size).mean(-1).tolist()  # (P * N,)
    best, single = [], []
    for i in range(len(prompts)):
        block = range(i * cfg.n, (i + 1) * cfg.n)
        best.append(max(block, key=lambda k: rewards[k]))
        single.append(i * cfg.n)  # the first sample: an ordinary draw from the policy
    report = {"policy": cfg.policy, "n": cfg.n, "prompts": len(prompts), "kl_analytic": bon_kl(cfg.n),
              "reward_best": sum(rewards[k] for k in best) / len(best),
              "reward_single": sum(rewards[k] for k in single) / len(single),
              "length_best": sum(gens[k].num_tokens for k in best) / len(best),
              "eos_best": sum(gens[k].finished for k in best) / len(best)}
    if gold_fn is not None:
        gold = [gold_fn(prompt_text(p), t, f) for p, t, f in items]
        report["gold_best"] = sum(gold[k] for k in best) / len(best)
        report["gold_single"] = sum(gold[k] for k in single) / len(single)
        report["gold"] = win_rate([gold[k] for k in best], [gold[k] for k in single])
    report["answers"] = [{"prompt": prompt_text(prompts[i]), "best": gens[b].text, "best_reward": rewards[b],
                          "single": gens[s].text, "single_reward": rewards[s]}
                         for i, (b, s) in enumerate(zip(best, single))]
    report["seconds"] = time.perf_counter() - t0
    return report
