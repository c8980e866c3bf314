"""The AI judge's verdicts as feedback: stored as comparisons by an 'ai_judge' labeler
(`judge_stored_pairs`), and measured against the gold scorer and other labelers (`judge_agreement`;
`verdict_stats` is the arithmetic). The judge itself is `tether.feedback.judge`."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
from sqlalchemy import select

from tether.data import feedback as F
from tether.data import schema as S
from tether.data.store import Store
from tether.errors import TetherError
from tether.feedback.judge import Judge, Verdict

def judge_stored_pairs(store: Store, judge: Judge, name: str = "ai-judge", round: int | None = None,
                       tasks: bool = True, new_pairs: int = 0, limit: int | None = None, seed: int = 0,
                       batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> dict[str, int]:
    """Judge stored pairwise tasks this judge has not answered (if `tasks`), then up to `new_pairs` new
    same-prompt pairs of sampled responses (stored as done pairwise tasks, as `simulate_feedback`
    stores its own). Each verdict is a comparison by labeler `name` (role 'ai_judge') through
    `record_comparison`, with meta {p_a, orders, mass, backend, rubric}, plus a done assignment.
    Batches are stored as they finish: a rerun carries on where a killed one stopped. Returns counts:
    "tasks", "new_pairs" and one per choice ("a", "b", "tie", "cant_tell")."""
    rng = np.random.default_rng(seed)
    with store.session() as s:
        lab = store.labeler(s, name, role="ai_judge", groups={"backend": judge.backend.name, "rubric": judge.rubric_sha})
        if lab.role != "ai_judge":
            raise TetherError(f"labeler '{name}' exists with role '{lab.role}', not 'ai_judge': choose another name")
        lab_id = lab.id
        answered = set(s.scalars(select(S.Assignment.task_id).where(S.Assignment.labeler_id == lab_id)))
        work: list[tuple[int | None, int, int]] = []  # (task id or None for a new pair, response a, response b)
        if tasks:
            q = select(S.Task).where(S.Task.kind == "pairwise", S.Task.status != "cancelled")
            q = q if round is None else q.where(S.Task.round == round)
            work += [(t.id, *t.response_ids) for t in s.scalars(q.order_by(S.Task.priority.desc(), S.Task.id))
                     if t.id not in answered and len(t.response_ids) == 2]
        if new_pairs > 0:
            seen = {frozenset(p) for p in s.execute(select(S.Comparison.response_a_id, S.Comparison.response_b_id)
                                                    .where(S.Comparison.labeler_id == lab_id)).all()}
            seen |= {frozenset(w[1:]) for w in work}
            q = select(S.Response.id, S.Response.prompt_id).where(S.Response.source == "sample").order_by(S.Response.id)
            groups: dict[int, list[int]] = defaultdict(list)
            for rid, pid in s.execute(q if round is None else q.where(S.Response.round == round)).all():
                groups[pid].append(rid)
            fresh = [p for g in groups.values() for p in combinations(g, 2) if frozenset(p) not in seen]
            picked = rng.choice(len(fresh), size=min(new_pairs, len(fresh)), replace=False) if fresh else []
            work += [(None, *fresh[i]) for i in sorted(int(i) for i in picked)]
        work = work[:limit] if limit is not None else work
        ids = {i for w in work for i in w[1:]}
        info = {r.id: r for r in s.execute(
            select(S.Response.id, S.Response.text, S.Response.finished, S.Response.prompt_id, S.Response.round,
                   S.Prompt.text.label("prompt"), S.Prompt.messages).join(S.Prompt).where(S.Response.id.in_(ids))).all()}
        work = [w for w in work if w[1] in info and w[2] in info]  # a task naming a deleted response is skipped
    counts = {"tasks": 0, "new_pairs": 0}
    for start in range(0, len(work), batch_size):
        chunk = work[start:start + batch_size]
        t0 = time.perf_counter()
        verdicts = judge.judge_pairs([(info[a].prompt if info[a].messages is None else info[a].messages,
                                       info[a].text, info[b].text, info[a].finished, info[b].finished)
                                      for _, a, b in chunk])
        ms = int(1000 * (time.perf_counter() - t0) / len(chunk))
        with store.session() as s:
            lab = s.get(S.Labeler, lab_id)
            for (task_id, a, b), v in zip(chunk, verdicts):
                counts["tasks" if task_id is not None else "new_pairs"] += 1
                if task_id is None:
                    task = S.Task(kind="pairwise", prompt_id=info[a].prompt_id, response_ids=[a, b], labels_needed=1,
                                  round=max(info[a].round, info[b].round), status="done", options={"source": "ai_judge"})
                    s.add(task)
                    s.flush()
                    task_id = task.id
                F.record_comparison(s, lab, a, b, v.choice, task_id=task_id, duration_ms=ms,
                                    meta={"p_a": v.p_a, "orders": list(v.orders), "mass": v.mass,
                                          "backend": judge.backend.name, "rubric": judge.rubric_sha})
                s.add(S.Assignment(task_id=task_id, labeler_id=lab_id, status="done", completed_at=S.utcnow()))
                counts[v.choice] = counts.get(v.choice, 0) + 1
        if on_batch is not None:
            on_batch(len(chunk))
    return counts


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def verdict_stats(verdicts: Sequence[Verdict], winners: Sequence[str | None]) -> dict:
    """The judge against reference answers: `winners[i]` is "a" or "b" (the reference's better answer
    of pair i) or None (no reference preference: left out of the agreement numbers).

    agreement: share of reference-decided pairs where the verdict names the same answer, a tie or
    can't-tell counting 1/2 (so any judge that cannot tell scores 0.5, chance level);
    decisive_agreement: the same over the pairs the judge decided ("a"/"b"); decided: their share;
    p_winner: mean P(reference winner) from the judge's probabilities; position_bias_rate: share of
    pairs, among those with a decisive answer in both orders, whose two orders disagree;
    first_position_rate: share of decisive single-order answers that chose the answer shown first
    (0.5 = no position preference); tie_rate: share of all verdicts that are tie or can't-tell;
    letter_mass: mean probability the judge put on "A" or "B" (nan when the backend cannot tell)."""
    if len(verdicts) != len(winners):
        raise ValueError(f"{len(verdicts)} verdicts but {len(winners)} reference answers")
    scored = [(v, w) for v, w in zip(verdicts, winners) if w in ("a", "b")]
    decided = [(v, w) for v, w in scored if v.choice in ("a", "b")]
    both = [v for v in verdicts if all(o in ("a", "b") for o in v.orders)]
    firsts = [o == shown_first for v in verdicts for o, shown_first in zip(v.orders, ("a", "b")) if o in ("a", "b")]
    return {"pairs": len(verdicts), "scored_pairs": len(scored),
            "agreement": _mean([1.0 if v.choice == w else 0.0 if v.choice in ("a", "b") else 0.5 for v, w in scored]),
            "decisive_agreement": _mean([float(v.choice == w) for v, w in decided]),
            "decided": len(decided) / len(scored) if scored else math.nan,
            "p_winner": _mean([v.p_a if w == "a" else 1.0 - v.p_a for v, w in scored if v.p_a is not None]),
            "position_bias_rate": _mean([float(v.position_flip) for v in both]),
            "first_position_rate": _mean([float(f) for f in firsts]),
            "tie_rate": _mean([float(v.choice in ("tie", "cant_tell")) for v in verdicts]),
            "letter_mass": _mean([v.mass for v in verdicts if v.mass is not None])}


def gold_winners(items: Sequence[tuple], scorer: Callable[[str, str, bool], float] | None = None,
                 min_gap: float = 0.0) -> list[str | None]:
    """"a"/"b" by the gold scorer for (prompt, a, b, a_finished, b_finished) items; None when the
    gold scores differ by `min_gap` or less."""
    from tether.feedback.gold import DEFAULT_SCORER
    from tether.models import prompt_text

    scorer = scorer or DEFAULT_SCORER
    out = []
    for prompt, a, b, fa, fb in items:
        ga, gb = scorer(prompt_text(prompt), a, fa), scorer(prompt_text(prompt), b, fb)
        out.append(None if abs(ga - gb) <= min_gap else "a" if ga > gb else "b")
    return out


HUMAN_ROLES = ("labeler", "admin", "import")


def judge_agreement(store: Store, name: str = "ai-judge", scorer: Callable[[str, str, bool], float] | None = None,
                    min_gap: float = 0.0, rounds: list[int] | None = None) -> dict:
    """How the stored verdicts of judge `name` agree with the gold scorer and with the majority of
    other labelers on the same pair, by kind of labeler: "human" (roles labeler/admin/import) and
    "simulated". Returns {"judge", "gold": verdict_stats, "labelers": {kind: verdict_stats}}; a
    majority is the most common decisive answer of that kind on the pair (a tie at the top: none)."""
    with store.session() as s:
        lab = s.scalar(select(S.Labeler).where(S.Labeler.name == name))
        if lab is None:
            raise TetherError(f"no labeler named '{name}' in this workspace: run `tether judge` first")
        q = select(S.Comparison).where(S.Comparison.labeler_id == lab.id).order_by(S.Comparison.id)
        mine = list(s.scalars(q if rounds is None else q.where(S.Comparison.round.in_(rounds))))
        ids = {i for c in mine for i in (c.response_a_id, c.response_b_id)}
        info = {r[0]: r[1:] for r in s.execute(select(S.Response.id, S.Response.text, S.Response.finished,
                                                      S.Prompt.text).join(S.Prompt).where(S.Response.id.in_(ids))).all()}
        others = s.execute(select(S.Comparison.response_a_id, S.Comparison.response_b_id, S.Comparison.choice,
                                  S.Labeler.role).join(S.Labeler, S.Comparison.labeler_id == S.Labeler.id)
                           .where(S.Comparison.labeler_id != lab.id, S.Comparison.response_a_id.in_(ids))).all()
        verdicts = [Verdict(c.choice, c.meta.get("p_a"), tuple(c.meta.get("orders", ("none", "none"))),
                            c.meta.get("mass")) for c in mine]
        pairs = [(c.response_a_id, c.response_b_id) for c in mine]
    items = [(info[a][2], info[a][0], info[b][0], info[a][1], info[b][1]) for a, b in pairs]
    out = {"judge": name, "gold": verdict_stats(verdicts, gold_winners(items, scorer, min_gap)), "labelers": {}}
    votes: dict[str, dict[frozenset, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for a, b, choice, role in others:
        kind = "human" if role in HUMAN_ROLES else role if role == "simulated" else None
        if kind and choice in ("a", "b"):
            votes[kind][frozenset((a, b))][a if choice == "a" else b] += 1
    for kind, by_pair in sorted(votes.items()):
        winners = []
        for a, b in pairs:
            top = by_pair.get(frozenset((a, b)), Counter()).most_common(2)
            ok = top and (len(top) == 1 or top[0][1] > top[1][1])
            winners.append(("a" if top[0][0] == a else "b") if ok else None)
        out["labelers"][kind] = verdict_stats(verdicts, winners)
    return out

