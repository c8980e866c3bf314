"""Simulated labelers against the gold score, and the flag_labelers acceptance test."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from tether.feedback.agreement import agreement_by_group, flag_labelers
from tether.feedback.gold import gold_score
from tether.feedback.labelers import (
    FLAW_CATEGORIES,
    SimulatedLabeler,
    detect_flaws,
    labeler_pool,
)

# --- a small generator of responses of varied quality -----------------------------------------

BASES = [
    ("How can I fall asleep faster at night?",
     "To fall asleep faster, keep a regular bedtime, avoid screens for an hour before bed, and "
     "keep your bedroom cool and dark. If you cannot sleep after twenty minutes, get up and read."),
    ("How do I make a simple tomato sauce for pasta?",
     "Soften a chopped onion and two cloves of garlic in olive oil, add a can of crushed tomatoes, "
     "a pinch of salt and some basil, and simmer for twenty minutes. Toss it with the pasta."),
    ("What are three ways to save money on groceries?",
     "To save money on groceries, plan your meals and shop with a list, buy store brands instead "
     "of big names, and cook in batches so leftovers replace takeaway. Happy saving!"),
    ("Explain what a black hole is to a ten-year-old.",
     "A black hole is a place in space where gravity pulls so hard that nothing, not even light, "
     "can escape. It forms when a huge star runs out of fuel and collapses into a tiny point."),
    ("How do I change a flat tyre on a bicycle?",
     "To fix a flat tyre, remove the wheel, lever one side of the tyre off the rim and pull out "
     "the inner tube. Patch the hole or fit a new tube, then refit the tyre and pump it up."),
    ("Why is the sky blue?",
     "Sunlight is made of many colours. Air molecules scatter short blue wavelengths much more "
     "than red ones, so blue light reaches our eyes from every part of the sky."),
    ("How should I prepare for a job interview?",
     "Research the company, practise answers to common interview questions out loud, and prepare "
     "two or three questions for the interviewer. Sleep well and arrive early. Good luck!"),
    ("Write a short thank-you note to a neighbour who watered my plants.",
     "Thank you so much for watering my plants while I was away! They look happier than ever, and "
     "I really appreciate your kindness. Let me know if I can ever return the favour."),
    ("What is the difference between weather and climate?",
     "Weather is what the atmosphere does on a given day: rain, sun or wind. Climate is the "
     "average of that weather over many years in a region."),
    ("What are some good habits for learning a new language?",
     "Practise a little every day, learn words in context rather than lists, speak with native "
     "speakers early, and listen to podcasts or songs in the language."),
]
FILLER = [
    "But the more I think about it, the more I realize that there is always more to learn.",
    "It's important to remember that everyone is different, and what works for one person may "
    "not work for another.",
    "There's so much more to explore and discover, and that's what makes it so fascinating.",
    "In addition, it can be helpful to consider the bigger picture and the many factors involved.",
    "Many people have written about this topic over the years, and opinions vary widely.",
    "Ultimately, the most important thing is to stay curious and keep an open mind.",
    "Of course, there are many other things that could be said about this as well.",
]
LOOP = "SmolLM, I'm here to help you with anything you need. "
RUDE = ["Ugh, this is a stupid question and I hate answering it. ",
        "Stop wasting my time with dumb questions. "]
VARIANTS = ("clean", "cut_off", "long", "long_cut", "repetitive", "impolite", "off_topic",
            "placeholder", "short")


def variant(rng, i, kind):
    """(text, finished) of variant `kind` of the answer to BASES[i], SmolLM-like failures."""
    answer = BASES[i][1]
    if kind == "clean":
        return answer, True
    if kind == "cut_off":
        tokens = answer.split()
        return " ".join(tokens[: int(len(tokens) * rng.uniform(0.4, 0.8))]), False
    if kind in ("long", "long_cut"):  # rambling, finished or cut off at the length limit
        text = answer + " " + " ".join(rng.choice(FILLER, size=int(rng.integers(4, 8)),
                                                  replace=False))
        return (text, True) if kind == "long" else (
            " ".join(text.split()[: int(rng.integers(60, 80))]), False)
    if kind == "repetitive":
        text = answer.split(".")[0] + ". " + LOOP * int(rng.integers(4, 8))
        return " ".join(text.split()[:75]), False
    if kind == "impolite":
        return str(rng.choice(RUDE)) + answer, True
    if kind == "off_topic":
        return BASES[(i + 1 + int(rng.integers(len(BASES) - 1))) % len(BASES)][1], True
    if kind == "placeholder":
        return "Dear [Name], " + answer + " Best wishes, [Your Name]", True
    if kind == "short":
        return str(rng.choice(["Sure.", "Good question!", "I don't know."])), True
    raise ValueError(kind)


def make_pairs(n, seed):
    """n items (prompt, (a, a_finished), (b, b_finished)), two different variants per item."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        i = int(rng.integers(len(BASES)))
        kind_a, kind_b = rng.choice(VARIANTS, size=2, replace=False)
        items.append((BASES[i][0], variant(rng, i, kind_a), variant(rng, i, kind_b)))
    return items


PAIRS = make_pairs(300, seed=1)
GOLD_DIFF = [gold_score(p, *a) - gold_score(p, *b) for p, a, b in PAIRS]


def compare_stats(labeler):
    """(agreement with gold on decisive answers where gold differs by > 0.01, share of decisive
    answers picking the longer response where lengths differ by > 20 words)."""
    agree, n, longer, n_long = 0, 0, 0, 0
    for (prompt, a, b), diff in zip(PAIRS, GOLD_DIFF):
        choice, _ = labeler.compare(prompt, a[0], b[0], a[1], b[1])
        if choice not in ("a", "b"):
            continue
        if abs(diff) > 0.01:
            n, agree = n + 1, agree + ((choice == "a") == (diff > 0))
        len_a, len_b = len(a[0].split()), len(b[0].split())
        if abs(len_a - len_b) > 20:
            n_long, longer = n_long + 1, longer + ((choice == "a") == (len_a > len_b))
    assert n >= 250 and n_long >= 80
    return agree / n, longer / n_long


@pytest.fixture(scope="module")
def pool():
    return {lab.kind: lab for lab in reversed(labeler_pool(seed=0))}  # first of each kind


# --- comparisons -------------------------------------------------------------------------------

def test_compare_agreement_with_gold(pool):
    careful, careful_longer = compare_stats(pool["careful"])
    adversarial, _ = compare_stats(pool["adversarial"])
    random, _ = compare_stats(pool["random"])
    noisy, _ = compare_stats(pool["noisy"])
    biased, biased_longer = compare_stats(pool["biased"])
    assert careful > 0.85
    assert adversarial < 0.20
    assert 0.40 < random < 0.60
    assert 0.65 < noisy < careful
    assert biased_longer > careful_longer + 0.08  # the length bias shows


def test_compare_outcomes_ties_and_determinism():
    lab = SimulatedLabeler("t", tie_margin=0.05, tie_rate=1.0, cant_tell_rate=0.0, seed=3)
    prompt, answer = BASES[0]
    assert lab.compare(prompt, answer, answer)[0] == "tie"
    always_unsure = SimulatedLabeler("u", cant_tell_rate=1.0)
    assert always_unsure.compare(prompt, answer, "Sure.")[0] == "cant_tell"
    runs = [[SimulatedLabeler("d", seed=7).compare(p, a[0], b[0], a[1], b[1]) for p, a, b in
             PAIRS[:20]] for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError):
        SimulatedLabeler("bad", kind="lazy")


# --- rankings, ratings, thumbs -----------------------------------------------------------------

def spearman(x, y):
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def responses_for(i, seed):
    rng = np.random.default_rng(seed)
    return [variant(rng, i, kind) for kind in VARIANTS]


def test_rank_is_a_permutation_that_follows_gold(pool):
    corr = defaultdict(list)
    for i in range(len(BASES)):
        prompt, rows = BASES[i][0], responses_for(i, seed=i)
        texts, finished = [t for t, _ in rows], [f for _, f in rows]
        gold = [gold_score(prompt, t, f) for t, f in rows]
        for kind in ("careful", "adversarial", "random"):
            order, ms = pool[kind].rank(prompt, texts, finished)
            assert sorted(order) == list(range(len(texts))) and ms > 0
            position = np.empty(len(order))
            position[order] = np.arange(len(order))
            corr[kind].append(spearman(gold, -position))
    assert np.mean(corr["careful"]) > 0.7
    assert np.mean(corr["adversarial"]) < -0.7
    assert abs(np.mean(corr["random"])) < 0.3
    with pytest.raises(ValueError):
        pool["careful"].rank("p", ["a", "b"], [True])


def test_rate_and_thumb_follow_gold(pool):
    rows = [(BASES[i][0], *r) for i in range(len(BASES)) for r in responses_for(i, seed=50 + i)]
    gold = [gold_score(p, t, f) for p, t, f in rows]
    for kind, sign in (("careful", 1), ("adversarial", -1), ("random", 0)):
        scores = [pool[kind].rate(p, t, f)[0] for p, t, f in rows]
        assert set(scores) <= {1, 2, 3, 4, 5}
        if sign:
            assert sign * spearman(gold, scores) > 0.6, kind
        else:
            assert abs(spearman(gold, scores)) < 0.3
    ups = [pool["careful"].thumb(p, t, f)[0] for p, t, f in rows]
    good = [u for u, g in zip(ups, gold) if g > 0.85]
    bad = [u for u, g in zip(ups, gold) if g < 0.5]
    assert np.mean(good) > 0.9 and np.mean(bad) < 0.1
    adv = [pool["adversarial"].thumb(p, t, f)[0] for p, t, f in rows]
    assert np.mean([u for u, g in zip(adv, gold) if g > 0.85]) < 0.1


# --- flaws and critiques -----------------------------------------------------------------------

def test_detect_flaws_per_variant():
    rng = np.random.default_rng(0)
    # kind -> (flaws it must show, extra flaws it may show: a truncated answer can lose the
    # prompt's words, a 75-word loop is also too long)
    expect = {"clean": (set(), set()), "cut_off": ({"cut_off"}, {"off_topic"}),
              "long": ({"too_long"}, set()), "impolite": ({"impolite"}, set()),
              "repetitive": ({"repetitive", "cut_off"}, {"too_long", "off_topic"}),
              "off_topic": ({"off_topic"}, set()), "placeholder": ({"placeholder"}, set())}
    for i in range(len(BASES)):
        for kind, (must, may) in expect.items():
            text, finished = variant(rng, i, kind)
            found = set(detect_flaws(BASES[i][0], text, finished))
            assert must <= found <= must | may, (kind, found)
    assert detect_flaws("Why?", "") == ["off_topic"]


def test_labeler_flaw_reports_and_critique(pool):
    prompt, answer = BASES[3]
    long_cut = variant(np.random.default_rng(2), 3, "long_cut")
    true = detect_flaws(prompt, *long_cut)
    assert "cut_off" in true
    assert pool["careful"].flaws(prompt, *long_cut)[0] == true
    assert set(pool["adversarial"].flaws(prompt, *long_cut)[0]) == set(FLAW_CATEGORIES) - set(true)
    noisy = [tuple(pool["noisy"].flaws(prompt, *long_cut)[0]) for _ in range(100)]
    assert 0.5 < sum(found == tuple(true) for found in noisy) / 100 < 0.95  # misses / invents
    assert pool["careful"].flaws(prompt, answer, categories=("placeholder",))[0] == []
    with pytest.raises(ValueError):
        pool["careful"].flaws(prompt, answer, categories=("boring",))
    text, ms = pool["careful"].critique(prompt, *long_cut)
    assert "stops mid-sentence" in text and ms > 0
    assert pool["careful"].critique(prompt, answer)[0].startswith("Good answer")
    assert pool["careful"].rewrite(prompt, answer) == (None, 0.0)


# --- durations and the pool --------------------------------------------------------------------

def test_durations_positive_and_random_fastest():
    medians = {}
    for lab in labeler_pool(seed=0):
        times = [lab.compare(p, a[0], b[0], a[1], b[1])[1] for p, a, b in PAIRS[:40]]
        times += [lab.rate(PAIRS[0][0], PAIRS[0][1][0])[1], lab.thumb("p", "r.")[1]]
        assert min(times) > 0
        medians[lab.name] = (lab.kind, float(np.median(times)))
    slowest_random = max(m for kind, m in medians.values() if kind == "random")
    assert slowest_random < 1000
    assert all(m > 1500 for kind, m in medians.values() if kind != "random")


def test_labeler_pool_composition():
    labs = labeler_pool(n=20, n_adversarial=3, n_random=2, seed=0)
    kinds = Counter(lab.kind for lab in labs)
    assert kinds == {"careful": 8, "noisy": 4, "biased": 3, "adversarial": 3, "random": 2}
    assert len({lab.name for lab in labs}) == 20 and "sim-careful-01" in {lab.name for lab in labs}
    assert len({lab.seed for lab in labs}) == 20
    biased_pools = {lab.groups["pool"] for lab in labs if lab.kind == "biased"}
    assert len(biased_pools) == 1
    assert all(lab.groups["pool"] not in biased_pools for lab in labs if lab.kind != "biased")
    assert all(lab.flip for lab in labs if lab.kind == "adversarial")
    assert [lab.name for lab in labeler_pool(seed=0)] == [lab.name for lab in labs]
    assert Counter(lab.kind for lab in labeler_pool(n=5, n_adversarial=0, n_random=0,
                                                     n_noisy=0, n_biased=0)) == {"careful": 5}
    with pytest.raises(ValueError):
        labeler_pool(n=4, n_adversarial=3, n_random=2)


# --- the acceptance test: flag_labelers finds the bad labelers ---------------------------------

def test_flag_labelers_finds_adversarial_and_random_labelers():
    labs = labeler_pool(n=20, n_adversarial=3, n_random=2, seed=0)
    items = make_pairs(320, seed=0)
    rng = np.random.default_rng(100)
    labels, durations = defaultdict(dict), defaultdict(list)
    # Balanced overlap: every 4 items, a fresh shuffle of the 20 labelers split in 4 groups of 5,
    # so each item gets 5 labelers and each labeler labels exactly 320 * 5 / 20 = 80 items.
    for item, (prompt, a, b) in enumerate(items):
        if item % 4 == 0:
            order = rng.permutation(len(labs))
        for j in order[(item % 4) * 5:(item % 4) * 5 + 5]:
            choice, ms = labs[j].compare(prompt, a[0], b[0], a[1], b[1])
            # As agreement.py advises, neutral answers are dropped to score decisive ones only.
            labels[item][labs[j].name] = choice if choice in ("a", "b") else None
            durations[labs[j].name].append(ms)
    decisive = Counter(lab for row in labels.values() for lab, v in row.items() if v)
    assert min(decisive.values()) >= 60
    # A user's choice: flag agreement with the leave-one-out majority below chance (0.5) on a
    # binary task (below 0.3 reads as "systematic_flip"), a median answer time under 1.5 s, and
    # demand 30 scored items before judging anyone.
    flags = flag_labelers(labels, durations, chance=0.5, min_items=30, min_ms=1500)
    reasons = defaultdict(set)
    for flag in flags:
        reasons[flag.labeler].add(flag.reason)
    kind = {lab.name: lab.kind for lab in labs}
    bad = [n for n in kind if kind[n] in ("adversarial", "random")]
    careful = [n for n in kind if kind[n] == "careful"]
    assert sum(n in reasons for n in bad) / len(bad) >= 0.9
    assert sum(n in reasons for n in careful) / len(careful) <= 0.05
    assert all("systematic_flip" in reasons[n] for n in bad if kind[n] == "adversarial")
    assert all("too_fast" in reasons[n] for n in bad if kind[n] == "random")
    # Measured with these seeds: no noisy or biased labeler is flagged.
    assert not [n for n in reasons if kind[n] in ("noisy", "biased")]
    # The group breakdown puts the crowd pool (adversarial + random + noisy) at the bottom ...
    by_pool = agreement_by_group(labels, {lab.name: lab.groups for lab in labs}, "pool")
    assert by_pool["crowd"][0] < min(by_pool["in-house"][0], by_pool["vendor-b"][0]) - 0.2
    # ... and the length bias of the biased labelers shows as a pool: vendor-b picks the longer
    # response (of two differing by > 20 words) more often than the careful in-house pool.
    pool_of = {lab.name: lab.groups["pool"] for lab in labs}
    longer = defaultdict(list)
    for item, row in labels.items():
        _, a, b = items[item]
        len_a, len_b = len(a[0].split()), len(b[0].split())
        for name, choice in row.items():
            if choice and abs(len_a - len_b) > 20:
                longer[pool_of[name]].append((choice == "a") == (len_a > len_b))
    assert np.mean(longer["vendor-b"]) > np.mean(longer["in-house"]) + 0.1
