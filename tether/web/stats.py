"""Figures for the admin dashboard, from the workspace database.

- tasks and labels per task kind; labels and median answer time per labeler;
- agreement on pairwise judgements (comparisons and ranking-derived pairs): raw agreement,
  Krippendorff's alpha (nominal), per-labeler leave-one-out agreement, and the labelers
  `tether.feedback.agreement.flag_labelers` flags (as `tether rm` would see them);
- a leaderboard of policies per round: Bradley-Terry strengths and Elo ratings from every
  comparison and ranking between responses of different (policy, round);
- human win rates from blind A/B evaluations.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.feedback import aggregate as agg
from tether.feedback.agreement import flag_labelers, krippendorff_alpha, leave_one_out_agreement, raw_agreement
from tether.feedback.collect import pair_labels

FEEDBACK = {"comparison": S.Comparison, "ranking": S.Ranking, "rating": S.Rating, "thumb": S.Thumb,
            "flaws": S.FlawReport, "critique": S.Critique}


def task_counts(s: Session) -> list[dict[str, Any]]:
    """Per task kind: tasks open / done / cancelled, and labels given through the web app."""
    rows: dict[str, dict[str, Any]] = {k: {"kind": k, "open": 0, "done": 0, "cancelled": 0, "labels": 0}
                                       for k in S.TASK_KINDS}
    for kind, status, n in s.execute(select(S.Task.kind, S.Task.status, func.count())
                                     .group_by(S.Task.kind, S.Task.status)):
        rows[kind][status] = n
    for kind, n in s.execute(select(S.Task.kind, func.count()).join(S.Assignment, S.Assignment.task_id == S.Task.id)
                             .where(S.Assignment.status == "done").group_by(S.Task.kind)):
        rows[kind]["labels"] = n
    return [r for r in rows.values() if r["open"] or r["done"] or r["cancelled"]]


def labeler_counts(s: Session) -> list[dict[str, Any]]:
    """Per labeler: labels per feedback kind, total, median seconds per answer, role, active."""
    per: dict[int, dict[str, Any]] = {}
    for lab in s.scalars(select(S.Labeler).order_by(S.Labeler.name)):
        per[lab.id] = {"id": lab.id, "name": lab.name, "role": lab.role, "active": lab.active,
                       "invited": lab.invite_token is not None, "counts": {}, "total": 0, "_ms": []}
    for kind, model in FEEDBACK.items():
        for lid, ms in s.execute(select(model.labeler_id, model.duration_ms)):
            row = per.get(lid)
            if row is None:
                continue
            row["counts"][kind] = row["counts"].get(kind, 0) + 1
            row["total"] += 1
            if ms is not None:
                row["_ms"].append(ms)
    for row in per.values():
        times = row.pop("_ms")
        row["median_s"] = statistics.median(times) / 1000 if times else None
    return list(per.values())


def agreement(s: Session) -> dict[str, Any]:
    """Agreement on pairwise judgements and the flagged labelers."""
    comparisons = list(s.scalars(select(S.Comparison)))
    rankings = list(s.scalars(select(S.Ranking)))
    for r in rankings:
        r.response_ids  # noqa: B018 (load the items inside the session)
    names = dict(s.execute(select(S.Labeler.id, S.Labeler.name)).all())
    labels, durations = pair_labels(comparisons, rankings)
    out: dict[str, Any] = {"items": len(labels), "multi": sum(len(v) >= 2 for v in labels.values()),
                           "raw": None, "alpha": None, "per_labeler": [], "flags": []}
    if out["multi"]:
        out["raw"] = raw_agreement(labels)
        alpha = krippendorff_alpha(labels, level="nominal")
        out["alpha"] = None if math.isnan(alpha) else alpha
    for lid, (share, n) in leave_one_out_agreement(labels).items():
        if n:
            out["per_labeler"].append({"name": names.get(lid, lid), "agreement": share, "n": n})
    out["flags"] = [{"name": names.get(f.labeler, f.labeler), "reason": f.reason, "value": f.value, "n": f.n}
                    for f in flag_labelers(labels, durations)] if labels else []
    return out


def leaderboard(s: Session) -> list[dict[str, Any]]:
    """Bradley-Terry and Elo of "policy (round r)" from cross-policy comparisons and rankings."""
    who = {rid: f"{policy} (round {rnd})" for rid, policy, rnd in
           s.execute(select(S.Response.id, S.Response.policy, S.Response.round))}
    matches: list[tuple[str, str, str]] = []
    for c in s.scalars(select(S.Comparison).order_by(S.Comparison.id)):
        a, b = who.get(c.response_a_id), who.get(c.response_b_id)
        if a and b and a != b:
            matches.append((a, b, c.choice))
    for r in s.scalars(select(S.Ranking).order_by(S.Ranking.id)):
        for p in agg.ranking_pairs(r.response_ids):
            a, b = who.get(p.chosen), who.get(p.rejected)
            if a and b and a != b:
                matches.append((a, b, "a"))
    if not matches:
        return []
    bt, el = agg.bradley_terry(matches), agg.elo(matches)
    games: dict[str, int] = defaultdict(int)
    for a, b, outcome in matches:
        if outcome != "cant_tell":
            games[a] += 1
            games[b] += 1
    rows = [{"name": k, "bt": bt.get(k), "elo": el.get(k), "games": games[k]} for k in el]
    return sorted(rows, key=lambda r: -(r["bt"] if r["bt"] is not None else -1e9))


def ab_win_rates(s: Session) -> list[dict[str, Any]]:
    """Blind A/B evaluations: per pair of policies, wins each way, ties, can't tell, and the first
    policy's win rate (ties count half; can't-tell left out)."""
    tally: dict[tuple[str, str], dict[str, int]] = {}
    for c in s.scalars(select(S.Comparison).where(S.Comparison.task_id.is_not(None))):
        pols = c.meta.get("policies") if c.meta.get("kind") == "ab_eval" else None
        if not pols or len(pols) != 2:
            continue
        key = tuple(sorted(pols))
        t = tally.setdefault(key, {"first": 0, "second": 0, "tie": 0, "cant_tell": 0})
        if c.choice in ("tie", "cant_tell"):
            t[c.choice] += 1
        else:
            winner = pols[0] if c.choice == "a" else pols[1]
            t["first" if winner == key[0] else "second"] += 1
    rows = []
    for (p1, p2), t in sorted(tally.items()):
        decided = t["first"] + t["second"] + t["tie"]
        rate = (t["first"] + t["tie"] / 2) / decided if decided else None
        rows.append({"policy_a": p1, "policy_b": p2, **t, "win_rate_a": rate})
    return rows


def policies(s: Session) -> list[tuple[str, int]]:
    """(policy, number of responses) of stored samples, for the A/B task form."""
    return [(p, n) for p, n in s.execute(select(S.Response.policy, func.count())
                                         .where(S.Response.source.in_(("sample", "import")))
                                         .group_by(S.Response.policy).order_by(S.Response.policy))]
