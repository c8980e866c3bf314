"""Turn human feedback into training signal: preference pairs and item scores.

Pure, database-free functions. Rows are tuples in the documented field order or objects with
attributes of those names (dataclasses, ORM rows). Ties and "can't tell" are never dropped
silently: each function says what it does with them and counts them (`n_ties`, `n_cant_tell`).
Methods: ranking pairs as in InstructGPT (Ouyang et al. 2022, sec. 3.5); Bradley-Terry (Bradley &
Terry 1952) fitted by Hunter's (2004) MM algorithm; sequential Elo ratings (Elo 1978).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np

Outcome = Literal["a", "b", "tie", "cant_tell"]
OUTCOMES: tuple[str, ...] = ("a", "b", "tie", "cant_tell")


@dataclass(frozen=True)
class Pair:
    """`chosen` beat `rejected`; `group` is the ranking the pair came from (one batch per group)."""
    prompt_id: int | None
    chosen: int
    rejected: int
    weight: float = 1.0
    group: int | None = None
    labeler: int | None = None
    margin: float | None = None  # how much better, from a rating gap in [0, 1] (Llama 2 margin loss)


@dataclass(frozen=True)
class Comparison:
    """A labeler compared two responses: outcome "a", "b", "tie" or "cant_tell"."""
    response_a: int
    response_b: int
    outcome: Outcome
    labeler: int | None = None
    prompt_id: int | None = None


@dataclass
class PairsResult:
    """Pairs for training, plus how many ties and can't-tell answers gave no pair."""
    pairs: list[Pair]
    n_ties: int = 0
    n_cant_tell: int = 0


@dataclass
class NormalisedRatings:
    """Response -> mean per-labeler z-score; `zero_variance`: labeler -> the one score they always
    gave (their z-scores are 0); `n_cant_tell`: ratings of None, left out."""
    scores: dict[int, float]
    zero_variance: dict[Any, float]
    n_cant_tell: int = 0


class Scores(dict):
    """dict item -> score, with the `n_ties` and `n_cant_tell` seen in the input;
    `bradley_terry` also sets `n_iter` and `converged`."""
    n_ties: int = 0
    n_cant_tell: int = 0
    n_iter: int = 0
    converged: bool = True


_COMPARISON = ("response_a", "response_b", "outcome", "labeler", "prompt_id")
_RATING = ("response_id", "prompt_id", "labeler", "score")
_THUMB = ("response_id", "prompt_id", "labeler", "up")


def _row(row: Any, names: Sequence[str]) -> tuple:
    if not isinstance(row, (tuple, list)) or hasattr(row, names[0]):
        return tuple(getattr(row, name) for name in names)
    if len(row) != len(names):
        raise ValueError(f"expected ({', '.join(names)}), got {row!r}")
    return tuple(row)


def _check(a: Any, b: Any, outcome: Any) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
    if a == b:
        raise ValueError(f"{a!r} is compared with itself")


def comparison_pairs(comparisons: Iterable[Comparison | tuple]) -> PairsResult:
    """Pairs from comparisons `(response_a, response_b, outcome, labeler, prompt_id)`.

    "a" gives Pair(chosen=a, rejected=b), "b" the reverse; "tie" and "cant_tell" give no pair and
    are counted in `n_ties` / `n_cant_tell`. An unknown outcome or a self-comparison: ValueError.
    """
    result = PairsResult([])
    for row in comparisons:
        a, b, outcome, labeler, prompt_id = _row(row, _COMPARISON)
        _check(a, b, outcome)
        if outcome in ("a", "b"):
            chosen, rejected = (a, b) if outcome == "a" else (b, a)
            result.pairs.append(Pair(prompt_id, chosen, rejected, labeler=labeler))
        result.n_ties += outcome == "tie"
        result.n_cant_tell += outcome == "cant_tell"
    return result


def ranking_pairs(ranking_ids_best_to_worst: Sequence[int], prompt_id: int | None = None,
                  labeler: int | None = None, group: int | None = None, *,
                  normalise: bool = False) -> list[Pair]:
    """The K(K-1)/2 pairs of a ranking of K responses, best first (InstructGPT, sec. 3.5).

    All pairs carry `group`. With `normalise=True` each weighs 1/C(K, 2), InstructGPT's loss
    factor, so each ranking counts once whatever its K. A ranking holds no ties (record a tie as
    a comparison with outcome "tie"); a repeated id raises ValueError naming it.
    """
    ranking, seen = list(ranking_ids_best_to_worst), set()
    for response in ranking:
        if response in seen:
            raise ValueError(f"response {response!r} appears more than once in ranking {ranking}")
        seen.add(response)
    k = len(ranking)
    weight = 2.0 / (k * (k - 1)) if normalise and k > 1 else 1.0
    return [Pair(prompt_id, a, b, weight, group, labeler) for a, b in combinations(ranking, 2)]


def _rating_rows(ratings: Iterable, scale: tuple[float, float]) -> tuple[list[tuple], int]:
    lo, hi = scale
    if not lo < hi:
        raise ValueError(f"scale must be (low, high) with low < high, got {scale!r}")
    rows, n_cant = [], 0
    for response, prompt_id, labeler, score in (_row(r, _RATING) for r in ratings):
        if score is None:
            n_cant += 1
        elif not lo <= score <= hi:
            raise ValueError(f"rating {score!r} of response {response!r} by labeler {labeler!r} "
                             f"is outside the scale {lo}..{hi}")
        else:
            rows.append((response, prompt_id, labeler, float(score)))
    return rows, n_cant


def normalise_ratings(ratings: Iterable, scale: tuple[float, float] = (1, 5)) -> NormalisedRatings:
    """Per-labeler z-scores averaged per response, from `(response_id, prompt_id, labeler, score)`.

    z = (score - labeler mean) / labeler std (population std of all the labeler's ratings) removes
    each labeler's leniency and spread. A labeler whose ratings never vary (a single one included)
    gets z = 0 and is reported in `zero_variance`. A score of None ("can't tell") is left out and
    counted; a score outside `scale` raises ValueError.
    """
    rows, n_cant = _rating_rows(ratings, scale)
    by_labeler: dict[Any, list[float]] = defaultdict(list)
    for _, _, labeler, score in rows:
        by_labeler[labeler].append(score)
    stats = {lab: (statistics.fmean(s), statistics.pstdev(s)) for lab, s in by_labeler.items()}
    zero = {lab: by_labeler[lab][0] for lab, (_, std) in stats.items() if std < 1e-12}
    per_response: dict[int, list[float]] = defaultdict(list)
    for response, _, labeler, score in rows:
        mean, std = stats[labeler]
        per_response[response].append(0.0 if labeler in zero else (score - mean) / std)
    scores = {r: statistics.fmean(z) for r, z in per_response.items()}
    return NormalisedRatings(scores, zero, n_cant)


def rating_pairs(ratings: Iterable, across_labelers: bool = False,
                 scale: tuple[float, float] = (1, 5)) -> PairsResult:
    """Pairs from ratings `(response_id, prompt_id, labeler, score)`: the higher score wins.

    By default only responses rated by the same labeler for the same prompt are compared (one
    labeler's scale is never set against another's); repeated ratings are averaged. With
    `across_labelers=True` a response's score is its mean per-labeler z-score
    (`normalise_ratings`) and all responses to a prompt are compared (pairs get labeler=None).
    Equal scores (within 1e-9) give no pair and count in `n_ties`; a score of None ("can't
    tell") is left out and counted in `n_cant_tell`. Each pair's `margin` is the score gap over
    the scale's width (5 vs 2 on 1-5: 0.75), for the margin loss of Llama 2 (Touvron et al. 2023,
    eq. 2); across labelers the gap is in z-scores, divided by 4 and capped at 1.
    """
    rows, n_cant = _rating_rows(ratings, scale)
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    if across_labelers:
        prompt_of: dict[int, Any] = {}
        for response, prompt_id, _, _ in rows:
            if prompt_of.setdefault(response, prompt_id) != prompt_id:
                raise ValueError(f"response {response!r} is rated under two prompts")
        for response, score in normalise_ratings(rows, scale).scores.items():
            groups[prompt_of[response], None][response] = score
    else:
        acc: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for response, prompt_id, labeler, score in rows:
            acc[prompt_id, labeler][response].append(score)
        for key, per_response in acc.items():
            groups[key] = {r: statistics.fmean(s) for r, s in per_response.items()}
    result = PairsResult([], 0, n_cant)
    for (prompt_id, labeler), scores in groups.items():
        for (r1, s1), (r2, s2) in combinations(scores.items(), 2):
            if math.isclose(s1, s2, rel_tol=0.0, abs_tol=1e-9):
                result.n_ties += 1
            else:
                chosen, rejected = (r1, r2) if s1 > s2 else (r2, r1)
                gap = abs(s1 - s2) / (4.0 if across_labelers else scale[1] - scale[0])
                result.pairs.append(Pair(prompt_id, chosen, rejected, labeler=labeler, margin=min(gap, 1.0)))
    return result


def thumbs_pairs(thumbs: Iterable) -> PairsResult:
    """Pairs from thumbs votes `(response_id, prompt_id, labeler, up)`.

    All labelers' votes on a response are pooled and the majority makes it "up" or "down"; within
    a prompt every up-response beats every down-response (labeler=None). A response with as many
    up as down votes gives no pair and counts in `n_ties` (responses, not pairs); a vote of None
    ("can't tell") is left out and counted in `n_cant_tell`.
    """
    votes: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    result = PairsResult([])
    for response, prompt_id, _, up in (_row(t, _THUMB) for t in thumbs):
        if up is None:
            result.n_cant_tell += 1
        else:
            votes[prompt_id, response][0 if up else 1] += 1
    sides: dict[Any, tuple[list, list]] = defaultdict(lambda: ([], []))
    for (prompt_id, response), (n_up, n_down) in votes.items():
        if n_up == n_down:
            result.n_ties += 1
        else:
            sides[prompt_id][0 if n_up > n_down else 1].append(response)
    for prompt_id, (ups, downs) in sides.items():
        result.pairs.extend(Pair(prompt_id, win, lose) for win in ups for lose in downs)
    return result


def quality_scores(ratings_by_response: Mapping[int, float],
                   flaws_by_response: Mapping[int, Iterable[str]],
                   penalties: Mapping[str, float]) -> dict[int, float]:
    """Quality = normalised rating minus the penalties of the response's flaw categories.

    Each distinct category counts once (a flaw listed twice, e.g. by two labelers, is penalised
    once). An unknown category raises ValueError naming it and the known ones, as do flaws for a
    response with no rating. Responses without flaws keep their rating.
    """
    known = ", ".join(sorted(penalties)) or "(none)"
    for response, flaws in flaws_by_response.items():
        if response not in ratings_by_response:
            raise ValueError(f"response {response!r} has flaws but no rating")
        for flaw in flaws:
            if flaw not in penalties:
                raise ValueError(f"unknown flaw category {flaw!r}; known categories: {known}")
    return {r: float(s) - sum(penalties[f] for f in set(flaws_by_response.get(r, ())))
            for r, s in ratings_by_response.items()}


def _matches(data: Iterable) -> Iterable[tuple[Hashable, Hashable, str, float]]:
    """(a, b, outcome, weight) from Pairs, Comparisons, (a, b, outcome, ...) or (win, lose[, w])."""
    for m in data:
        if isinstance(m, Pair):
            a, b, outcome, weight = m.chosen, m.rejected, "a", m.weight
        elif hasattr(m, "response_a"):
            a, b, outcome, weight = m.response_a, m.response_b, m.outcome, 1.0
        elif len(m) >= 3 and isinstance(m[2], str):
            a, b, outcome, weight = m[0], m[1], m[2], 1.0
        elif len(m) in (2, 3):
            a, b, outcome, weight = m[0], m[1], "a", float(m[2]) if len(m) == 3 else 1.0
        else:
            raise ValueError(f"cannot read a match from {m!r}")
        _check(a, b, outcome)
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        yield a, b, outcome, weight


def _reach(n: int, edges: Iterable[tuple[int, int]]) -> Callable[[int], set[int]]:
    adjacency: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        adjacency[i].append(j)

    def reach(start: int) -> set[int]:
        seen, stack = {start}, [start]
        while stack:
            new = [j for j in adjacency[stack.pop()] if j not in seen]
            seen.update(new)
            stack.extend(new)
        return seen

    return reach


def bradley_terry(pairs_or_outcomes: Iterable, items: Iterable[Hashable] | None = None,
                  ties: Literal["half", "ignore"] = "half", prior: float = 1.0,
                  max_iter: int = 1000, tol: float = 1e-8) -> Scores:
    """Bradley-Terry strengths (Bradley & Terry 1952) by Hunter's (2004) MM algorithm.

    Model P(i beats j) = p_i / (p_i + p_j). Input: `Pair`s, `Comparison`s, or triples, either
    (a, b, outcome) with a str outcome "a"/"b"/"tie"/"cant_tell" or (winner, loser, weight) with a
    number (plain (winner, loser) weighs 1). Returns `Scores` item -> log p_i, centred to mean 0;
    `bt_probability(s_i, s_j)` is then P(i beats j). `items` adds items with no comparisons.

    Ties: ties="half" counts a tie as half a win each way, ties="ignore" leaves it out; both count
    it in `n_ties`. "cant_tell" is left out and counted in `n_cant_tell`; items seen only in
    left-out matches get no score unless listed in `items`.

    Prior: each item gets `prior` virtual wins and losses against a pseudo item of fixed strength
    1, a weak symmetric prior that keeps undefeated and winless items finite and puts unconnected
    groups on one scale; each MM step is then followed by an exact step along each connected
    group's common offset, where MM alone crawls. prior=0 is the plain maximum-likelihood fit; it
    exists only if the win graph is strongly connected (Hunter 2004, Assumption 1), else
    ValueError. Stops when no log-strength moves more than `tol`, or warns (RuntimeWarning) after
    `max_iter` iterations: see `n_iter` and `converged`.
    """
    if ties not in ("half", "ignore"):
        raise ValueError(f"ties must be 'half' or 'ignore', got {ties!r}")
    if not prior >= 0:
        raise ValueError(f"prior must be >= 0, got {prior!r}")
    index: dict[Hashable, int] = {}
    for item in items or ():
        index.setdefault(item, len(index))
    out = Scores()
    beats: dict[tuple[int, int], float] = defaultdict(float)  # (i, j) -> weight of i beating j
    for a, b, outcome, weight in _matches(pairs_or_outcomes):
        out.n_ties += outcome == "tie"
        out.n_cant_tell += outcome == "cant_tell"
        if outcome == "cant_tell" or (outcome == "tie" and ties == "ignore"):
            continue
        i, j = index.setdefault(a, len(index)), index.setdefault(b, len(index))
        if outcome == "tie":
            beats[i, j] += weight / 2
            beats[j, i] += weight / 2
        else:
            beats[(i, j) if outcome == "a" else (j, i)] += weight
    n, edges = len(index), [e for e, w in beats.items() if w > 0]
    backward = [(j, i) for i, j in edges]
    if n > 1 and prior == 0 and len(_reach(n, edges)(0)) + len(_reach(n, backward)(0)) < 2 * n:
        raise ValueError("with prior=0 every item must beat and be beaten by the others through "
                         "chains of comparisons (a strongly connected win graph); use prior > 0")
    win_i, win_j = (np.array([e[k] for e in edges], dtype=int) for k in (0, 1))
    w = np.array([beats[e] for e in edges], dtype=float)
    total_wins = np.bincount(win_i, weights=w, minlength=n) + prior
    log_p, group, reach = np.zeros(n), np.full(n, -1), _reach(n, edges + backward)
    for start in range(n):  # label the connected groups of items
        if group[start] < 0:
            group[list(reach(start))] = group.max() + 1
    sizes, out.converged = np.bincount(group), n <= 1
    while n > 1 and out.n_iter < max_iter:  # MM: p_i <- W_i / sum_j N_ij / (p_i + p_j)
        out.n_iter += 1
        p = np.exp(log_p)
        s = w / (p[win_i] + p[win_j])
        denom = np.bincount(win_i, s, n) + np.bincount(win_j, s, n) + 2 * prior / (p + 1.0)
        new = np.log(total_wins) - np.log(denom)
        if prior == 0:
            new -= new.mean()  # without the pseudo item (fixed at p = 1) the scale is free
        for _ in range(100 if prior > 0 else 0):  # solve sum_group P(i beats pseudo) = size/2
            sig = 1.0 / (1.0 + np.exp(-new))
            slope = np.maximum(np.bincount(group, sig * (1 - sig)), 1e-300)
            step = np.clip((sizes / 2 - np.bincount(group, sig)) / slope, -1.0, 1.0)
            new += step[group]
            if np.abs(step).max() < 1e-12:
                break
        delta, log_p = np.max(np.abs(new - log_p)), new
        if delta < tol:
            out.converged = True
            break
    if not out.converged:
        warnings.warn(f"bradley_terry did not converge in {max_iter} iterations", RuntimeWarning)
    log_p -= log_p.mean() if n else 0.0
    out.update({item: float(log_p[i]) for item, i in index.items()})
    return out


def bt_probability(score_a: float, score_b: float) -> float:
    """P(a beats b) under Bradley-Terry for log-scale scores: 1 / (1 + exp(score_b - score_a))."""
    d = score_a - score_b
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


def elo(matches: Iterable, k: float = 32, initial: float = 1000.0) -> Scores:
    """Sequential Elo ratings over matches, in the order given.

    Matches are read as in `bradley_terry`; a weight scales `k`. E_a = 1 / (1 + 10 ** ((R_b -
    R_a) / 400)); R_a += k (S_a - E_a) and R_b changes by the opposite amount (zero-sum), with
    S_a = 1, 0, or 0.5 for a tie (counted in `n_ties`). "cant_tell" changes nothing and is counted
    in `n_cant_tell`; its items still get `initial`.
    """
    ratings = Scores()
    for a, b, outcome, weight in _matches(matches):
        ra, rb = ratings.setdefault(a, float(initial)), ratings.setdefault(b, float(initial))
        ratings.n_ties += outcome == "tie"
        if outcome == "cant_tell":
            ratings.n_cant_tell += 1
            continue
        expected = 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))
        change = k * weight * ({"a": 1.0, "b": 0.0, "tie": 0.5}[outcome] - expected)
        ratings[a], ratings[b] = ra + change, rb - change
    return ratings
