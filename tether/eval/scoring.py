"""Score responses with a reward model and measure how well it agrees with a gold scorer.

`gold_agreement` is the reward model's report card in simulated runs: over every pair of
responses to the same prompt whose gold scores differ, how often does the reward model order them
as the gold scorer does (pairwise accuracy), and how well do the two rank all responses (Spearman).
`labeler_gold_agreement` is the yardstick beside it: how often the labelers' own preferences (every
stored pair, from every feedback kind) agree with the gold scorer, raw and as the reward model
weighs them (flagged labelers down-weighted). A reward model cannot be expected to beat the labels
it learns from by much; on held-out prompts it should come close to them.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from sqlalchemy import select

from tether.data import schema as S
from tether.data.store import Store


def stored_responses(store: Store, rounds: list[int] | None = None, source: str | None = "sample",
                     limit: int | None = None, split: str | None = None, ids=None) -> list[dict]:
    """Stored responses with their prompts, oldest first; `split`: only prompts of that split; `ids`:
    only these response ids."""
    with store.session() as s:
        q = select(S.Response.id, S.Response.prompt_id, S.Prompt.text, S.Prompt.messages, S.Response.text,
                   S.Response.finished, S.Response.round, S.Response.policy).join(S.Prompt).order_by(S.Response.id)
        if rounds is not None:
            q = q.where(S.Response.round.in_(rounds))
        if source is not None:
            q = q.where(S.Response.source == source)
        if split is not None:
            q = q.where(S.Prompt.split == split)
        if ids is not None:
            q = q.where(S.Response.id.in_(ids))
        if limit is not None:
            q = q.limit(limit)
        return [dict(response_id=i, prompt_id=p, prompt=pt, messages=m, response=t, finished=f, round=r, policy=pol)
                for i, p, pt, m, t, f, r, pol in s.execute(q).all()]


def score_rows(rows: list[dict], model, tokenizer, batch_size: int = 16, max_length: int = 512) -> None:
    """Add 'reward' (normalised, ensemble mean) and 'reward_std' (ensemble spread) to each row."""
    from tether.reward import ensemble_stats, score_texts

    items = [(r["messages"] if r["messages"] is not None else r["prompt"], r["response"], r["finished"]) for r in rows]
    mean, std = ensemble_stats(score_texts(model, tokenizer, items, batch_size=batch_size, max_length=max_length))
    for r, m, sd in zip(rows, mean.tolist(), std.tolist()):
        r["reward"], r["reward_std"] = m, sd


def _ranks(x: np.ndarray) -> np.ndarray:
    order = x.argsort(kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks of ties
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def gold_agreement(rows: list[dict], key: str = "reward", gold: str = "gold", min_gap: float = 0.0) -> dict:
    """Pairwise accuracy of `key` against `gold` over same-prompt pairs whose gold scores differ by
    more than `min_gap`, and the Spearman correlation over all rows."""
    by_prompt: dict[int, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    right = total = 0
    for group in by_prompt.values():
        for x, y in combinations(group, 2):
            if abs(x[gold] - y[gold]) <= min_gap:
                continue
            total += 1
            right += (x[key] - y[key]) * (x[gold] - y[gold]) > 0
    return {"pairs": total, "accuracy": right / total if total else float("nan"),
            "spearman": spearman([r[key] for r in rows], [r[gold] for r in rows])}


def labeler_gold_agreement(pairs, gold: dict[int, float]) -> dict:
    """How often labelled pairs prefer what the gold scorer prefers.

    `pairs`: `aggregate.Pair`s (chosen, rejected, weight); `gold`: response id -> gold score. Pairs whose
    two gold scores are equal carry no gold preference and are skipped. Returns the raw share of
    agreeing pairs ("accuracy"), the weight-averaged share ("weighted", with the weights the reward
    model trains with) and the number of pairs counted."""
    right = total = w_right = w_total = 0.0
    for p in pairs:
        g = gold[p.chosen] - gold[p.rejected]
        if g == 0:
            continue
        total += 1
        w_total += p.weight
        if g > 0:
            right += 1
            w_right += p.weight
    return {"pairs": int(total), "accuracy": right / total if total else float("nan"),
            "weighted": w_right / w_total if w_total else float("nan")}


def labelers_vs_gold(store: Store, rounds: list[int] | None = None) -> dict | None:
    """`labeler_gold_agreement` over every pair stored as feedback in `rounds` (all if None), with the
    gold scorer's scores of the responses involved; None when there is no feedback."""
    from tether.feedback.collect import collect_pairs
    from tether.feedback.gold import gold_score

    collected = collect_pairs(store, rounds)
    if not collected.pairs:
        return None
    ids = {p.chosen for p in collected.pairs} | {p.rejected for p in collected.pairs}
    gold = {r["response_id"]: gold_score(r["prompt"], r["response"], r["finished"])
            for r in stored_responses(store, None, source=None, ids=ids)}
    return labeler_gold_agreement(collected.pairs, gold)
