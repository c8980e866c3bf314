"""Agreement statistics and labeler flags, checked on cases worked by hand."""

import math

import numpy as np
import pytest

from tether.feedback.agreement import (
    LabelerFlag,
    agreement_by_group,
    cohens_kappa,
    fleiss_kappa,
    flag_labelers,
    krippendorff_alpha,
    labeler_weights,
    leave_one_out_agreement,
    raw_agreement,
)


def test_raw_agreement():
    labels = {
        "i1": {1: "a", 2: "a", 3: "b"},  # pairs (1,2) agree, (1,3) and (2,3) do not: 1/3
        "i2": {1: "a", 2: "a"},  # 1/1
        "i3": {1: "a", 2: None},  # one label only: skipped
    }
    assert raw_agreement(labels) == pytest.approx((1 / 3 + 1) / 2)
    with pytest.raises(ValueError):
        raw_agreement({"i3": {1: "a"}})


def test_cohens_kappa_two_by_two():
    #               B yes  B no
    #    A yes        20     5    (25)
    #    A no         10    15    (25)
    #                (30)   (20)   n = 50
    # p_o = (20 + 15) / 50 = 0.7
    # p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    assert cohens_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohens_kappa(["y", "y"], ["y", "y"]))  # p_e = 1: undefined
    with pytest.raises(ValueError, match="differ in length"):
        cohens_kappa(a, b[:-1])


def test_fleiss_kappa_three_items():
    # 4 raters, categories x and y; n = 4, N = 3.
    # item 1: x x x x -> counts (4, 0): P_1 = (16 + 0 - 4) / (4 * 3) = 1
    # item 2: x x y y -> counts (2, 2): P_2 = (4 + 4 - 4) / 12 = 1/3
    # item 3: y y y x -> counts (1, 3): P_3 = (1 + 9 - 4) / 12 = 1/2
    # P_bar = (1 + 1/3 + 1/2) / 3 = 11/18
    # p_x = (4 + 2 + 1) / 12 = 7/12, p_y = 5/12, P_e = (49 + 25) / 144 = 37/72
    # kappa = (44/72 - 37/72) / (1 - 37/72) = 7/35 = 0.2
    labels = {
        1: dict(enumerate("xxxx")),
        2: dict(enumerate("xxyy")),
        3: dict(enumerate("yyyx")),
    }
    assert fleiss_kappa(labels) == pytest.approx(0.2)
    assert fleiss_kappa(labels, categories=["x", "y", "z"]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="not in categories"):
        fleiss_kappa(labels, categories=["x"])
    # Unequal counts: raise by default, or keep only the modal count (4 ratings) on request.
    uneven = {**labels, 4: {0: "x", 1: "y"}}
    with pytest.raises(ValueError, match="same number of ratings"):
        fleiss_kappa(uneven)
    assert fleiss_kappa(uneven, unequal="modal") == pytest.approx(0.2)


# Krippendorff's alpha example from Wikipedia ("A computational example"): 3 coders, 15 units,
# None = missing. Re-derived for nominal data:
#   pairable units (>= 2 values): 3 (2,2) 4 (1,1) 5 (3,3) 6 (3,3,4) 7 (4,4,4) 8 (1,3) 9 (2,2)
#   10 (1,1) 11 (1,1) 12 (3,3) 13 (3,3) 15 (3,4); units 1, 2, 14 hold fewer than two values.
#   n = 10 units x 2 + 2 units x 3 = 26 pairable values;
#   n_1 = 2+1+2+2 = 7, n_2 = 2+2 = 4, n_3 = 2+2+1+2+2+1 = 10, n_4 = 1+3+1 = 5.
#   Off-diagonal coincidences: unit 8 and unit 15 each give 2 ordered pairs / (2-1) = 2; unit 6
#   gives 4 ordered (3,4)/(4,3) pairs / (3-1) = 2; total 6, so D_o = 6 / 26.
#   D_e = (n^2 - sum n_c^2) / (n (n-1)) = (676 - (49+16+100+25)) / 650 = 486 / 650.
#   alpha = 1 - D_o / D_e = 1 - (6 * 650) / (26 * 486) = 1 - 3900/12636 = 0.691358...
WIKI = {
    "A": [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
    "B": [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
    "C": [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
}
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", sec. C: 4 observers, 12 units.
PAPER = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def by_item(table):
    n_units = len(next(iter(table.values())))
    return {u: {coder: values[u] for coder, values in table.items()} for u in range(n_units)}


def test_krippendorff_alpha_published_examples():
    assert krippendorff_alpha(by_item(WIKI), "nominal") == pytest.approx(1 - 3900 / 12636)
    assert krippendorff_alpha(by_item(WIKI), "nominal") == pytest.approx(0.691358, abs=1e-6)
    assert krippendorff_alpha(by_item(WIKI), "interval") == pytest.approx(0.810845, abs=1e-6)
    assert krippendorff_alpha(by_item(PAPER), "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(by_item(PAPER), "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(by_item(PAPER), "interval") == pytest.approx(0.849, abs=5e-4)


def test_krippendorff_alpha_edges():
    perfect = {1: {"a": 1, "b": 1}, 2: {"a": 2, "b": 2, "c": 2}, 3: {"a": 3}}
    assert krippendorff_alpha(perfect, "interval") == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha({1: {"a": 1, "b": 1}}, "nominal"))
    with pytest.raises(ValueError, match="two or more"):
        krippendorff_alpha({1: {"a": 1}, 2: {"b": 2}})


def test_leave_one_out_agreement():
    labels = {
        # others of 1 are (a, b): tie -> skipped for 1; others of 2 are (a, b): skipped too;
        # others of 3 are (a, a): majority a, 3 said b -> miss.
        "i1": {1: "a", 2: "a", 3: "b"},
        # others of 1: (a) -> hit; others of 2: (a) -> hit; labeler 3 absent.
        "i2": {1: "a", 2: "a"},
        "i3": {4: "a"},  # alone: no other labelers, skipped
    }
    loo = leave_one_out_agreement(labels)
    assert loo[1] == (1.0, 1) and loo[2] == (1.0, 1) and loo[3] == (0.0, 1)
    assert math.isnan(loo[4][0]) and loo[4][1] == 0


HONEST = ("h1", "h2", "h3", "h4")


def simulated_pool(n_items=40, seed=0):
    """4 honest labelers (90% right) and one who flips every binary answer."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(["a", "b"], size=n_items)
    flip = {"a": "b", "b": "a"}
    labels = {}
    for item, answer in enumerate(truth):
        labels[item] = {h: answer if rng.random() < 0.9 else flip[answer] for h in HONEST}
        labels[item]["adv"] = flip[answer]
    return labels, dict(enumerate(truth))


def test_flipping_labeler_is_flagged():
    labels, truth = simulated_pool()
    flags = flag_labelers(labels)
    assert [(f.labeler, f.reason) for f in flags] == [("adv", "systematic_flip")]
    # Items where the four honest labelers split 2-2 have no leave-one-out majority: skipped.
    assert flags[0].value < 0.3 and 30 <= flags[0].n < 40
    # With gold answers the flipper also fails the gold check.
    gold = {item: truth[item] for item in range(10)}
    reasons = {(f.labeler, f.reason) for f in flag_labelers(labels, gold=gold)}
    assert reasons == {("adv", "systematic_flip"), ("adv", "gold_accuracy")}


def test_flag_labelers_too_fast_and_low_agreement():
    labels, _ = simulated_pool()
    durations = {"h1": [4000] * 12, "h2": [900, 1000, 1100] * 4, "h3": [200] * 3}
    flags = flag_labelers(labels, durations_ms=durations)
    assert LabelerFlag("h2", "too_fast", 1000.0, 12) in flags
    assert not any(f.labeler in ("h1", "h3") for f in flags)  # h3: too few timings to judge
    # On a 3-category task "flip" does not apply; below-chance agreement is "low_agreement".
    rng = np.random.default_rng(2)
    three = {i: {**{h: "x" for h in ("h1", "h2", "h3")}, "r": str(rng.choice(["y", "z"]))}
             for i in range(12)}
    flags = flag_labelers(three, chance=1 / 3)
    assert [(f.labeler, f.reason) for f in flags] == [("r", "low_agreement")]
    # Ties are labels like any other: they do not make a binary task look non-binary.
    labels[0]["h1"] = "tie"
    assert [f.reason for f in flag_labelers(labels)] == ["systematic_flip"]


def test_agreement_by_group():
    labels, _ = simulated_pool()
    groups = {"h1": {"country": "A"}, "h2": {"country": "A"}, "h3": {"country": "B"},
              "h4": {"country": "B"}, "adv": {"country": "C"}}
    result = agreement_by_group(labels, groups, "country")
    assert set(result) == {"A", "B", "C"}
    assert result["C"][0] < 0.3 and result["C"][1] == 1 and result["C"][2] >= 30
    assert result["A"][0] > 0.7 and result["A"][1] == 2
    del groups["adv"]
    assert agreement_by_group(labels, groups, "country")[None][1] == 1  # no metadata: None


def test_labeler_weights():
    flags = [LabelerFlag("adv", "systematic_flip", 0.1, 40),
             LabelerFlag("adv", "too_fast", 500.0, 40),
             LabelerFlag("h2", "too_fast", 900.0, 12)]
    assert labeler_weights(flags) == {"adv": 0.5, "h2": 0.5}
    assert labeler_weights(flags, policy="exclude", labelers=["h1", "adv"]) == {
        "h1": 1.0, "adv": 0.0, "h2": 0.0}
    with pytest.raises(ValueError, match="policy"):
        labeler_weights(flags, policy="ban")
