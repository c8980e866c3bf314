"""Which comparisons to ask for next: active query selection by reward-model ensemble disagreement.

Christiano et al. 2017 ("Deep reinforcement learning from human preferences", sec. 2.2.4) fit an
ensemble of reward predictors, each on its own bootstrap resample of the labels, predict for every
candidate pair the probability that one answer is preferred, P(a > b) = sigmoid(r(a) - r(b))
(Bradley-Terry, their eq. 1), and send labelers the pairs whose prediction varies most across the
ensemble. They found it helped on some tasks and hurt on others; `bench/active.py` measures it here
against random selection at the same label budget.

The pure functions take scores (M members, N responses) and candidate pairs (P, 2) of response
indices; `rank_stored_pairs` scores a workspace's sampled responses with a tether reward model whose
H heads are the ensemble (`tether rm --heads 4`: each head trains on its own bootstrap resample) and
returns the top-k pairs; `queue_tasks` stores them as open pairwise tasks, priority = disagreement.
Probabilities use the heads' *raw* rewards: the Bradley-Terry loss was fitted on them, and the
stored normalisation (a per-head scale) would change every P(a > b).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from sqlalchemy import select

from tether.data import schema as S
from tether.data.store import Store
from tether.errors import TetherError


def _check(scores: torch.Tensor, pairs: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (M members, N responses), got shape {tuple(scores.shape)}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) response indices, got shape {tuple(pairs.shape)}")
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= scores.shape[1]):
        raise ValueError(f"pair indices must lie in [0, {scores.shape[1]}), got {pairs.min()}..{pairs.max()}")


def preference_probs(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(M, P): member m's P(a > b) = sigmoid(r_m(a) - r_m(b)) for each pair (a, b) (Christiano eq. 1)."""
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    _check(scores, pairs)
    return torch.sigmoid(scores[:, pairs[:, 0]] - scores[:, pairs[:, 1]])  # (M, P)


def disagreement(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(P,): variance across the M members of P(a > b), population variance (divide by M).
    Needs M >= 2: a single member has no disagreement to measure."""
    if scores.dim() == 2 and scores.shape[0] < 2:
        raise ValueError("disagreement needs an ensemble of at least 2 members (scores of shape (M >= 2, N))")
    return preference_probs(scores, pairs).var(0, correction=0)  # (P,)


def select_active(scores: torch.Tensor, pairs: torch.Tensor, k: int) -> torch.Tensor:
    """(min(k, P),) indices into `pairs`, highest disagreement first; equal values keep pair order."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    d = disagreement(scores, torch.as_tensor(pairs, dtype=torch.long))  # (P,)
    return torch.sort(-d, stable=True).indices[:k]


def select_random(n_pairs: int, k: int, seed: int = 0) -> torch.Tensor:
    """(min(k, n_pairs),) distinct indices in [0, n_pairs), uniformly at random (the baseline)."""
    if k < 0 or n_pairs < 0:
        raise ValueError(f"k and n_pairs must be >= 0, got {k} and {n_pairs}")
    return torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))[:k]


def same_prompt_pairs(prompt_ids: Sequence[Hashable]) -> torch.Tensor:
    """(P, 2) every pair (i, j), i < j, of responses to the same prompt, in (i, j) order."""
    groups: dict[Hashable, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(p, []).append(i)
    out = [(a, b) for a in range(len(prompt_ids)) for b in groups[prompt_ids[a]] if b > a]
    return torch.tensor(sorted(out), dtype=torch.long).reshape(-1, 2)


@dataclass(frozen=True)
class CandidatePair:
    """A pair to ask about: response ids, the ensemble's mean P(a > b) and its variance across heads."""
    prompt_id: int
    response_a: int
    response_b: int
    p_a: float
    disagreement: float


def rank_stored_pairs(store: Store, model, tokenizer, k: int, rounds: list[int] | None = None,
                      method: Literal["disagreement", "random"] = "disagreement", exclude_labeled: bool = True,
                      seed: int = 0, batch_size: int = 16, max_length: int = 512) -> list[CandidatePair]:
    """The k same-prompt pairs of stored sampled responses (of `rounds`, all if None) to label next.

    Every response is scored once by the reward model (`model`, `tokenizer` from
    `tether.reward.load_reward_model`; heads = ensemble members). `exclude_labeled` leaves out pairs
    that already have a comparison from anyone. method "disagreement": highest variance first;
    "random": a uniform sample (still reporting each pair's disagreement when there are >= 2 heads)."""
    from tether.eval.scoring import stored_responses
    from tether.reward import score_texts

    if method not in ("disagreement", "random"):
        raise TetherError(f"selection method must be 'disagreement' or 'random', got {method!r}")
    heads = model.config.num_labels
    if method == "disagreement" and heads < 2:
        raise TetherError(f"this reward model has {heads} head; disagreement needs an ensemble: "
                          "train one with `tether rm --heads 4`")
    rows = stored_responses(store, rounds)
    pairs = same_prompt_pairs([r["prompt_id"] for r in rows])  # (P, 2)
    if exclude_labeled and len(pairs):
        with store.session() as s:
            done = {frozenset(p) for p in s.execute(select(S.Comparison.response_a_id, S.Comparison.response_b_id))}
        keep = [i for i, (a, b) in enumerate(pairs.tolist()) if frozenset((rows[a]["response_id"],
                                                                           rows[b]["response_id"])) not in done]
        pairs = pairs[keep]
    if len(pairs) == 0:
        return []
    used = sorted(set(pairs.flatten().tolist()))  # score only responses in some candidate pair
    where = {i: j for j, i in enumerate(used)}
    items = [(rows[i]["messages"] if rows[i]["messages"] is not None else rows[i]["prompt"], rows[i]["response"],
              rows[i]["finished"]) for i in used]
    scores = score_texts(model, tokenizer, items, batch_size=batch_size, max_length=max_length,
                         normalise_scores=False).T  # (H, N)
    local = torch.tensor([[where[a], where[b]] for a, b in pairs.tolist()], dtype=torch.long)  # (P, 2) into `used`
    probs = preference_probs(scores, local)  # (H, P)
    var = probs.var(0, correction=0) if heads > 1 else torch.zeros(len(local))  # (P,)
    idx = select_active(scores, local, k) if method == "disagreement" else select_random(len(local), k, seed)
    return [CandidatePair(rows[a]["prompt_id"], rows[a]["response_id"], rows[b]["response_id"],
                          float(probs[:, i].mean()), float(var[i]))
            for i in idx.tolist() for a, b in [pairs[i].tolist()]]


def queue_tasks(store: Store, chosen: Sequence[CandidatePair], labels_needed: int = 3,
                round: int | None = None) -> list[int]:
    """Store the pairs as open pairwise tasks (priority = disagreement, so the most informative come
    first); returns the task ids. `round`: the tasks' round (default: the newer response's round)."""
    ids = []
    with store.session() as s:
        for c in chosen:
            rnd = round if round is not None else max(s.get(S.Response, c.response_a).round,
                                                      s.get(S.Response, c.response_b).round)
            task = S.Task(kind="pairwise", prompt_id=c.prompt_id, response_ids=[c.response_a, c.response_b],
                          labels_needed=labels_needed, priority=c.disagreement, round=rnd, status="open",
                          options={"source": "active", "p_a": c.p_a})
            s.add(task)
            s.flush()
            ids.append(task.id)
    return ids


__all__ = ["CandidatePair", "disagreement", "preference_probs", "queue_tasks", "rank_stored_pairs",
           "same_prompt_pairs", "select_active", "select_random"]
