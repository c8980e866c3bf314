"""Feedback -> pairs and scores, checked on cases worked by hand."""

import math

import numpy as np
import pytest

from tether.feedback.aggregate import (
    Comparison,
    Pair,
    bradley_terry,
    bt_probability,
    comparison_pairs,
    elo,
    normalise_ratings,
    quality_scores,
    ranking_pairs,
    rating_pairs,
    thumbs_pairs,
)


def test_comparison_pairs_counts_ties_and_cant_tell():
    result = comparison_pairs([
        (1, 2, "a", 7, 100),
        Comparison(3, 4, "b", labeler=8, prompt_id=101),
        (5, 6, "tie", 7, 102),
        (5, 6, "cant_tell", 8, 102),
        (5, 6, "tie", 9, 102),
    ])
    assert result.pairs == [Pair(100, 1, 2, labeler=7), Pair(101, 4, 3, labeler=8)]
    assert (result.n_ties, result.n_cant_tell) == (2, 1)


def test_comparison_pairs_rejects_bad_rows():
    with pytest.raises(ValueError, match="unknown outcome 'draw'"):
        comparison_pairs([(1, 2, "draw", 7, 100)])
    with pytest.raises(ValueError, match="compared with itself"):
        comparison_pairs([(1, 1, "a", 7, 100)])


def test_ranking_pairs_k_choose_2():
    # [3, 1, 2] best to worst: 3 > 1, 3 > 2, 1 > 2, i.e. 3 * 2 / 2 = 3 pairs.
    pairs = ranking_pairs([3, 1, 2], prompt_id=9, labeler=4, group=77)
    assert [(p.chosen, p.rejected) for p in pairs] == [(3, 1), (3, 2), (1, 2)]
    assert all((p.prompt_id, p.labeler, p.group, p.weight) == (9, 4, 77, 1.0) for p in pairs)
    assert len(ranking_pairs(range(5))) == 10
    # InstructGPT weighting: each of the C(3, 2) = 3 pairs weighs 1/3, the ranking sums to 1.
    weights = [p.weight for p in ranking_pairs([3, 1, 2], normalise=True)]
    assert weights == pytest.approx([1 / 3] * 3)
    assert ranking_pairs([5]) == []


def test_ranking_pairs_names_the_duplicate():
    with pytest.raises(ValueError, match="response 1 appears more than once"):
        ranking_pairs([3, 1, 2, 1])


def test_rating_pairs_within_prompt_and_labeler():
    ratings = [
        # labeler 7, prompt 1: 10 -> 5, 11 -> 3, 12 -> 3: 10 > 11, 10 > 12, and 11 = 12 is a tie.
        (10, 1, 7, 5), (11, 1, 7, 3), (12, 1, 7, 3),
        # labeler 8, prompt 1: 11 -> 4 beats 10 -> 2, though labeler 7 thought otherwise.
        (10, 1, 8, 2), (11, 1, 8, 4),
        # prompt 2 is never paired with prompt 1; one "can't tell" rating.
        (20, 2, 7, 1), (21, 2, 7, None),
    ]
    result = rating_pairs(ratings)
    assert sorted((p.chosen, p.rejected, p.labeler) for p in result.pairs) == [
        (10, 11, 7), (10, 12, 7), (11, 10, 8)]
    assert (result.n_ties, result.n_cant_tell) == (1, 1)
    # margins: rating gaps over the scale's width 5 - 1 = 4: (5 - 3) / 4 = 0.5 twice, (4 - 2) / 4 = 0.5
    assert sorted(p.margin for p in result.pairs) == [0.5, 0.5, 0.5]
    wide = rating_pairs([(1, 1, 7, 5), (2, 1, 7, 1), (3, 1, 7, 4)])
    assert {(p.chosen, p.rejected): p.margin for p in wide.pairs} == {(1, 2): 1.0, (1, 3): 0.25, (3, 2): 0.75}


RATINGS = [
    # labeler 1: 5, 3 -> mean 4, std 1 -> z = +1, -1
    (1, 50, 1, 5), (2, 50, 1, 3),
    # labeler 2: 2, 1 -> mean 1.5, std 0.5 -> z = +1, -1 (a harsher labeler, same opinion)
    (1, 50, 2, 2), (2, 50, 2, 1),
    # labeler 3: always 4 -> zero variance -> z = 0, reported
    (1, 50, 3, 4), (2, 50, 3, 4),
]


def test_normalise_ratings_by_hand():
    result = normalise_ratings(RATINGS)
    # response 1: (1 + 1 + 0) / 3 = 2/3; response 2: (-1 - 1 + 0) / 3 = -2/3
    assert result.scores == pytest.approx({1: 2 / 3, 2: -2 / 3})
    assert result.zero_variance == {3: 4.0}
    with pytest.raises(ValueError, match="outside the scale 1..5"):
        normalise_ratings([(1, 50, 1, 6)])


def test_rating_pairs_across_labelers():
    result = rating_pairs(RATINGS, across_labelers=True)
    # z-score gap 2/3 - (-2/3) = 4/3, divided by 4 -> margin 1/3
    assert result.pairs == [Pair(50, 1, 2, margin=pytest.approx(1 / 3))]
    # Within labeler 3 alone the two responses tie; across labelers they do not.
    assert rating_pairs(RATINGS).n_ties == 1
    assert result.n_ties == 0


def test_thumbs_pairs_majority_and_tied_votes():
    thumbs = [
        (1, 10, 7, True), (1, 10, 8, True), (1, 10, 9, False),  # 2 up, 1 down -> up
        (2, 10, 7, False),  # down
        (3, 10, 7, True), (3, 10, 8, False),  # 1 - 1: excluded and counted as a tie
        (4, 10, 9, True),  # up
        (5, 11, 7, True), (6, 11, 7, False), (6, 11, 8, None),  # prompt 11; one "can't tell"
    ]
    result = thumbs_pairs(thumbs)
    assert sorted((p.prompt_id, p.chosen, p.rejected) for p in result.pairs) == [
        (10, 1, 2), (10, 4, 2), (11, 5, 6)]
    assert (result.n_ties, result.n_cant_tell) == (1, 1)


def test_quality_scores():
    penalties = {"factual_error": 1.0, "unsafe": 2.0}
    flaws = {1: ["factual_error", "factual_error"], 2: [], 3: ["unsafe", "factual_error"]}
    scores = quality_scores({1: 0.5, 2: -0.2, 3: 0.0}, flaws, penalties)
    # 1: 0.5 - 1.0 (listed twice, penalised once); 2: unchanged; 3: 0 - 2 - 1
    assert scores == pytest.approx({1: -0.5, 2: -0.2, 3: -3.0})
    with pytest.raises(ValueError, match="'rude'.*factual_error, unsafe"):
        quality_scores({1: 0.0}, {1: ["rude"]}, penalties)


def test_bradley_terry_two_to_one_without_prior():
    # A beats B twice, B beats A once. The MLE solves P(A > B) = p_A / (p_A + p_B) = 2/3, so
    # p_A / p_B = 2 and the log-scale scores differ by log 2, centred: +-log(2) / 2.
    scores = bradley_terry([("A", "B", "a"), ("A", "B", "a"), ("A", "B", "b")], prior=0)
    assert scores["A"] - scores["B"] == pytest.approx(math.log(2))
    assert scores["A"] + scores["B"] == pytest.approx(0.0)
    assert bt_probability(scores["A"], scores["B"]) == pytest.approx(2 / 3)
    # The same data as weighted (winner, loser, weight) triples, and as Pairs.
    assert bradley_terry([("A", "B", 2.0), ("B", "A", 1.0)], prior=0) == pytest.approx(scores)
    pairs = [Pair(None, "A", "B", 2.0), Pair(None, "B", "A")]
    assert bradley_terry(pairs, prior=0) == pytest.approx(scores)


def test_bradley_terry_prior_keeps_undefeated_finite():
    with pytest.raises(ValueError, match="strongly connected"):
        bradley_terry([("A", "B", "a")] * 3, prior=0)
    scores = bradley_terry([("A", "B", "a")] * 3, items=["A", "B", "C"])
    assert all(math.isfinite(s) for s in scores.values()) and scores.converged
    assert scores["A"] > scores["C"] > scores["B"]  # C never played: it stays at the prior


def test_bradley_terry_ties_counted_not_dropped():
    data = [("A", "B", "tie"), ("A", "B", "a"), ("B", "A", "a"), ("A", "B", "cant_tell")]
    half = bradley_terry(data, prior=0)
    assert half == pytest.approx({"A": 0.0, "B": 0.0})
    assert (half.n_ties, half.n_cant_tell) == (1, 1)
    # Two A wins and a tie: A has 2.5 of 3 wins, so p_A / p_B = 2.5 / 0.5 = 5.
    lopsided = bradley_terry([("A", "B", "a"), ("A", "B", "a"), ("A", "B", "tie")], prior=0)
    assert lopsided["A"] - lopsided["B"] == pytest.approx(math.log(5))
    ignored = bradley_terry(data + [("A", "B", "a")], ties="ignore", prior=0)
    assert ignored["A"] - ignored["B"] == pytest.approx(math.log(2)) and ignored.n_ties == 1


def test_bradley_terry_recovers_known_strengths():
    rng = np.random.default_rng(0)
    truth = np.array([-1.5, -0.5, 0.0, 0.7, 1.6])
    matches = []
    for _ in range(3000):
        i, j = rng.choice(len(truth), size=2, replace=False)
        win = rng.random() < 1 / (1 + np.exp(truth[j] - truth[i]))
        matches.append((int(i), int(j), "a" if win else "b"))
    scores = bradley_terry(matches, prior=0.5)
    fitted = np.array([scores[i] for i in range(len(truth))])
    assert list(np.argsort(fitted)) == list(np.argsort(truth))
    assert fitted == pytest.approx(truth - truth.mean(), abs=0.15)


def test_bt_probability_is_stable():
    assert bt_probability(0.0, 0.0) == 0.5
    assert bt_probability(800.0, 0.0) == 1.0 and bt_probability(0.0, 800.0) == 0.0


def test_elo_by_hand():
    # Equal ratings: expected score 0.5, so the winner gains 32 * (1 - 0.5) = 16.
    assert elo([("x", "y", "a")]) == {"x": 1016.0, "y": 984.0}
    # A tie between equals changes nothing; "cant_tell" changes nothing and is counted.
    ratings = elo([("x", "y", "tie"), ("x", "y", "cant_tell")])
    assert ratings == {"x": 1000.0, "y": 1000.0}
    assert (ratings.n_ties, ratings.n_cant_tell) == (1, 1)


def test_elo_symmetric():
    rng = np.random.default_rng(1)
    matches = [(int(a), int(b), str(rng.choice(["a", "b", "tie"])))
               for a, b in (rng.choice(6, size=2, replace=False) for _ in range(200))]
    swapped = [(b, a, {"a": "b", "b": "a", "tie": "tie"}[o]) for a, b, o in matches]
    ratings = elo(matches)
    assert elo(swapped) == pytest.approx(ratings)
    assert sum(ratings.values()) == pytest.approx(1000.0 * len(ratings))  # zero-sum updates
