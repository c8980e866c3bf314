"""From the feedback stored in a workspace to weighted preference pairs for training.

Every kind of feedback becomes pairs of response ids (`aggregate.Pair`): comparisons directly,
rankings into their K(K-1)/2 pairs (kept together as a group), ratings into pairs within one
labeler's ratings of one prompt, thumbs into up-over-down pairs. Before that, labeler quality is
measured on the pairwise judgements (comparisons and ranking-derived pairs) with
`agreement.flag_labelers`; flagged labelers are down-weighted or excluded, as configured.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select

from tether.data import schema as S
from tether.data.store import Store
from tether.errors import TetherError
from tether.feedback import aggregate as A
from tether.feedback.agreement import LabelerFlag, flag_labelers, labeler_weights

KINDS = ("comparison", "ranking", "rating", "thumb")


@dataclass
class CollectedPairs:
    pairs: list[A.Pair]
    by_kind: dict[str, int] = field(default_factory=dict)  # pairs per feedback kind
    n_ties: int = 0
    n_cant_tell: int = 0
    flags: list[LabelerFlag] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)  # labeler id -> weight applied
    labelers: dict[int, str] = field(default_factory=dict)  # labeler id -> name


def pair_labels(comparisons, rankings) -> tuple[dict, dict]:
    """labels_by_item for agreement: item = an unordered response pair (lower id first), label =
    'first' or 'second' for the winner (a binary task, whatever the order shown), or 'tie' /
    'cant_tell'; plus each labeler's answer times."""
    labels: dict[tuple, dict] = defaultdict(dict)
    durations: dict[int, list[float]] = defaultdict(list)

    def put(labeler: int, x: int, y: int, winner: int | str) -> None:
        item = (min(x, y), max(x, y))
        labels[item][labeler] = winner if isinstance(winner, str) else ("first" if winner == item[0] else "second")

    for c in comparisons:
        winner = {"a": c.response_a_id, "b": c.response_b_id}.get(c.choice, c.choice)
        put(c.labeler_id, c.response_a_id, c.response_b_id, winner)
        if c.duration_ms is not None:
            durations[c.labeler_id].append(c.duration_ms)
    for r in rankings:
        for p in A.ranking_pairs(r.response_ids):
            put(r.labeler_id, p.chosen, p.rejected, p.chosen)
        if r.duration_ms is not None:
            durations[r.labeler_id].append(r.duration_ms)
    return labels, durations


def collect_pairs(store: Store, rounds: list[int] | None = None, kinds: tuple[str, ...] = KINDS,
                  labeler_policy: Literal["downweight", "exclude", "keep"] = "downweight",
                  downweight: float = 0.3, min_items: int = 10, min_ms: float = 1500,
                  judge_weight: float = 1.0) -> CollectedPairs:
    """Weighted pairs from the feedback of `rounds` (all rounds if None). `judge_weight` multiplies the
    weight of every AI judge's labels (role 'ai_judge'; 0 leaves them out), e.g. to count an RLAIF judge
    less than people."""
    if judge_weight < 0:
        raise TetherError(f"judge_weight must be >= 0, got {judge_weight}")
    with store.session() as s:
        def rows(model):
            q = select(model)
            return list(s.scalars(q.where(model.round.in_(rounds)) if rounds is not None else q))

        comparisons = rows(S.Comparison) if "comparison" in kinds else []
        rankings = rows(S.Ranking) if "ranking" in kinds else []
        for r in rankings:
            r.response_ids  # noqa: B018 (load the items while the session is open)
        ratings = rows(S.Rating) if "rating" in kinds else []
        thumbs = rows(S.Thumb) if "thumb" in kinds else []
        prompt_of = dict(s.execute(select(S.Response.id, S.Response.prompt_id)).all())
        # feedback on control clips (`tether control`) trains the control reward, never a language model's
        clips = set(s.scalars(select(S.Response.id).join(S.Prompt).where(S.Prompt.split == S.CONTROL_SPLIT)))
        names = dict(s.execute(select(S.Labeler.id, S.Labeler.name)).all())
        judges = set(s.scalars(select(S.Labeler.id).where(S.Labeler.role == "ai_judge")))
    if clips:
        comparisons = [c for c in comparisons if c.response_a_id not in clips]
        rankings = [r for r in rankings if r.response_ids[0] not in clips]
        ratings = [r for r in ratings if r.response_id not in clips]
        thumbs = [t for t in thumbs if t.response_id not in clips]

    out = CollectedPairs([], labelers=names)
    labels, durations = pair_labels(comparisons, rankings)
    if labeler_policy != "keep" and labels:
        out.flags = flag_labelers(labels, durations, min_items=min_items, min_ms=min_ms)
        out.weights = labeler_weights(out.flags, "exclude" if labeler_policy == "exclude" else "downweight",
                                      factor=downweight)
    for j in judges:
        out.weights[j] = out.weights.get(j, 1.0) * judge_weight

    def add(kind: str, pairs: list[A.Pair]) -> None:
        kept = []
        for p in pairs:
            w = p.weight * out.weights.get(p.labeler, 1.0)
            if w > 0:
                kept.append(A.Pair(p.prompt_id, p.chosen, p.rejected, w, p.group, p.labeler, p.margin))
        out.pairs.extend(kept)
        out.by_kind[kind] = len(kept)

    res = A.comparison_pairs(A.Comparison(c.response_a_id, c.response_b_id, c.choice, c.labeler_id,
                                          prompt_of[c.response_a_id]) for c in comparisons)
    out.n_ties, out.n_cant_tell = res.n_ties, res.n_cant_tell
    add("comparison", res.pairs)
    add("ranking", [p for r in rankings for p in A.ranking_pairs(r.response_ids, r.prompt_id, r.labeler_id,
                                                                 group=r.id)])
    res = A.rating_pairs((r.response_id, prompt_of[r.response_id], r.labeler_id, r.score) for r in ratings)
    out.n_ties += res.n_ties
    add("rating", res.pairs)
    # thumbs are pooled over labelers (majority vote per response), so weights apply per vote:
    # excluded labelers' votes are dropped before the vote
    votes = [(t.response_id, prompt_of[t.response_id], t.labeler_id, t.up) for t in thumbs
             if out.weights.get(t.labeler_id, 1.0) > 0]
    res = A.thumbs_pairs(votes)
    out.n_ties += res.n_ties
    add("thumb", res.pairs)
    return out


def preference_examples(store: Store, collected: CollectedPairs):
    """The pairs with their texts, ready for `tether.recipes.rm.train`."""
    from tether.recipes.rm import PreferenceExample

    ids = {p.chosen for p in collected.pairs} | {p.rejected for p in collected.pairs}
    with store.session() as s:
        rows = s.execute(select(S.Response.id, S.Response.text, S.Response.finished, S.Prompt.text,
                                S.Prompt.messages).join(S.Prompt).where(S.Response.id.in_(ids))).all()
    info = {r[0]: r for r in rows}
    out = []
    for p in collected.pairs:
        _, chosen, c_fin, ptext, msgs = info[p.chosen]
        _, rejected, r_fin, _, _ = info[p.rejected]
        out.append(PreferenceExample(prompt=msgs if msgs is not None else ptext, chosen=chosen, rejected=rejected,
                                     chosen_finished=c_fin, rejected_finished=r_fin, weight=p.weight, group=p.group,
                                     margin=p.margin))
    return out


def rating_examples(store: Store, collected: CollectedPairs, rounds: list[int] | None = None):
    """Each rated response with its normalised rating (per-labeler z-scores averaged over its labelers,
    `aggregate.normalise_ratings`), for the reward model's regression term (`RatingExample`s).
    Labelers that `collected` excluded (weight 0) are left out; control clips never appear."""
    from tether.recipes.rm import RatingExample

    with store.session() as s:
        q = (select(S.Rating.response_id, S.Response.prompt_id, S.Rating.labeler_id, S.Rating.score)
             .join(S.Response, S.Response.id == S.Rating.response_id).join(S.Prompt, S.Prompt.id == S.Response.prompt_id)
             .where(S.Prompt.split != S.CONTROL_SPLIT))
        rows = [tuple(r) for r in s.execute(q if rounds is None else q.where(S.Rating.round.in_(rounds))).all()
                if collected.weights.get(r[2], 1.0) > 0]
        scores = A.normalise_ratings(rows).scores
        info = {r[0]: r for r in s.execute(select(S.Response.id, S.Response.text, S.Response.finished, S.Prompt.text,
                                                  S.Prompt.messages).join(S.Prompt)
                                           .where(S.Response.id.in_(list(scores)))).all()}
    return [RatingExample(prompt=info[i][4] if info[i][4] is not None else info[i][3], response=info[i][1],
                          finished=info[i][2], target=z) for i, z in sorted(scores.items())]


def policy_samples(store: Store, rounds: list[int] | None = None, limit: int = 512) -> list[tuple]:
    """(prompt, response, finished) of sampled responses, for reward normalisation (mean 0, std 1
    over the policy's own samples)."""
    from tether.eval.scoring import stored_responses

    rows = stored_responses(store, rounds, limit=limit)
    return [(r["messages"] if r["messages"] is not None else r["prompt"], r["response"], r["finished"]) for r in rows]
