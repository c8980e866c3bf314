"""Compare a policy with a reference policy on held-out prompts.

Both policies answer the same prompts (`samples` answers each, the same seeds on both sides). Each
answer is scored by the hidden gold scorer (the "human" the labelers stand in for) and, when given,
by a reward model (the proxy the policy was trained on). Reported:

- gold win rate of the policy over the reference: answer j of the policy against answer j of the
  reference to the same prompt, a tie counting one half, with a 95 % normal-approximation
  interval over those paired outcomes (50 prompts x 2 samples pins a rate to about +-7 points);
- mean gold score and mean reward of each side (a reward that rises while gold falls is
  over-optimisation: the policy learned the proxy's blind spots);
- KL(policy || reference) in nats per sequence: sum over the policy's response tokens of
  log pi(y_t) - log pi_ref(y_t) from the raw logits (temperature 1), averaged over the policy's
  own samples, with its standard error;
- response length (tokens, EOS included) and the share that ended with EOS.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from tether import models, reward
from tether.models import prompt_text
from tether.algos.losses import logprobs_from_logits
from tether.rollout import Generation, SamplingCopy, generate, pack, response_logits

Prompt = str | list[dict]


@dataclass
class Side:
    """One policy's answers, in prompt order (sample j of prompt i at i * samples + j)."""

    name: str
    generations: list[Generation]
    gold: list[float] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        g = self.generations
        out = {"policy": self.name, "length": sum(x.num_tokens for x in g) / len(g),
               "eos": sum(x.finished for x in g) / len(g)}
        for key in ("gold", "reward", "kl"):
            values = getattr(self, key)
            if values:
                out[key] = sum(values) / len(values)
                out[f"{key}_se"] = _std(values) / math.sqrt(len(values))
        return out


def _std(x: list[float]) -> float:
    if len(x) < 2:
        return 0.0
    m = sum(x) / len(x)
    return math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))


def win_rate(a: list[float], b: list[float]) -> dict:
    """Paired win rate of a over b (ties count 1/2) with a 95 % normal-approximation interval."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    outcomes = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
    rate = sum(outcomes) / len(outcomes)
    half = 1.96 * _std(outcomes) / math.sqrt(len(outcomes))
    return {"win_rate": rate, "ci_low": max(0.0, rate - half), "ci_high": min(1.0, rate + half),
            "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o == 0.0 for o in outcomes), "n": len(outcomes)}


def sample_answers(model, tok, prompts: list[Prompt], samples: int, *, temperature: float, max_new_tokens: int,
                   seed: int, batch_size: int) -> list[Generation]:
    """`samples` answers per prompt, returned in prompt order."""
    jobs = [(i * samples + j, models.encode_prompt(tok, p)) for i, p in enumerate(prompts) for j in range(samples)]
    out: list[Generation | None] = [None] * len(jobs)
    for batch in generate(model, tok, jobs, temperature=temperature, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, seed=seed):
        for g in batch:
            out[g.key] = g
    return out


@torch.no_grad()
def sequence_kl(model, ref_model, tok, prompts: list[Prompt], gens: list[Generation], samples: int,
                batch_size: int = 8) -> list[float]:
    """k1 KL per sequence, sum_t log pi(y_t) - log pi_ref(y_t) over response tokens (EOS included), raw logits."""
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for s in range(0, len(gens), batch_size):
        chunk = gens[s:s + batch_size]
        prompt_ids = [models.encode_prompt(tok, prompts[(s + k) // samples]) for k in range(len(chunk))]
        responses = [g.token_ids + ([g.stop_token] if g.finished else []) for g in chunk]
        ids, attn, mask = pack(prompt_ids, responses, pad)  # (b, P + T), (b, P + T), (b, T)
        ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
        width = ids.shape[1] - mask.shape[1]
        labels = ids[:, width:]  # (b, T)
        lp = logprobs_from_logits(response_logits(model, ids, attn, width)[0], labels)  # (b, T)
        ref = logprobs_from_logits(response_logits(ref_model, ids, attn, width)[0], labels)  # (b, T)
        out += torch.where(mask, lp - ref, 0.0).sum(-1).tolist()
    return out


def compare(policy: str, reference: str, prompts: list[Prompt], *, samples: int = 2, temperature: float = 0.7,
            max_new_tokens: int = 64, seed: int = 0, batch_size: int = 16, reward_model: str | None = None,
            gold_fn: Callable[[str, str, bool], float] | None = None, policy_model=None,
            reference_cache: dict | None = None, dtype: str = "float32") -> dict:
    """Sample both policies on `prompts` and report gold win rate, gold, reward, KL, length, EOS.

    `policy_model`: an already loaded policy to use instead of loading `policy` (the name is still
    reported). `reference_cache`: a dict kept by the caller across calls; the reference's answers are
    sampled once per (reference, prompts, settings) and reused (same seeds give the same answers). `dtype`
    "bfloat16": both sides sample with bf16 weights (`rollout.SamplingCopy`); KL is computed in float32. Returns a dict: {"policy": {...}, "reference": {...}, "gold": win-rate dict, "reward":
    win-rate dict (if a reward model), "answers": [...], "seconds"}."""
    t0 = time.perf_counter()
    if not prompts:
        raise ValueError("compare needs at least one prompt")
    tok = models.load_tokenizer(reference)
    ref_model = models.load_model(reference)
    pol_model = policy_model if policy_model is not None else models.load_model(policy)
    kw = dict(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    key = json.dumps([reference, [prompt_text(p) for p in prompts], samples, kw, dtype], sort_keys=True)
    sampler = (lambda m: SamplingCopy().sync(m)) if dtype == "bfloat16" else (lambda m: m)
    if reference_cache is not None and key in reference_cache:
        ref_answers = reference_cache[key]
    else:
        ref_answers = sample_answers(sampler(ref_model), tok, prompts, samples, **kw)
        if reference_cache is not None:
            reference_cache[key] = ref_answers
    sides = [Side(policy, sample_answers(sampler(pol_model), tok, prompts, samples, **kw)), Side(reference, ref_answers)]
    sides[0].kl = sequence_kl(pol_model, ref_model, tok, prompts, sides[0].generations, samples)
    items = [[(prompts[k // samples], g.text, g.finished) for k, g in enumerate(side.generations)] for side in sides]
    if gold_fn is not None:
        for side, its in zip(sides, items):
            side.gold = [gold_fn(prompt_text(p), t, f) for p, t, f in its]
    if reward_model is not None:
        rm, rm_tok = reward.load_reward_model(reward_model)
        for side, its in zip(sides, items):
            side.reward = reward.score_texts(rm, rm_tok, its, batch_size=batch_size).mean(-1).tolist()
    report = {"policy": sides[0].summary(), "reference": sides[1].summary(), "prompts": len(prompts),
              "samples": samples, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    if gold_fn is not None:
        report["gold"] = win_rate(sides[0].gold, sides[1].gold)
    if reward_model is not None:
        report["reward"] = win_rate(sides[0].reward, sides[1].reward)
    report["answers"] = [
        {"prompt": prompt_text(prompts[k // samples]), "sample": k % samples}
        | {f"{tag}_{key}": val for tag, side in (("policy", sides[0]), ("reference", sides[1]))
           for key, val in (("text", side.generations[k].text), ("finished", side.generations[k].finished),
                            ("gold", side.gold[k] if side.gold else None),
                            ("reward", side.reward[k] if side.reward else None))}
        for k in range(len(sides[0].generations))]
    report["seconds"] = time.perf_counter() - t0
    return report
