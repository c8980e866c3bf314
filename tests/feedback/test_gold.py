"""The gold scorer: orderings on hand-written texts, documented numbers, combination, speed."""

import dataclasses
import math
import time

import pytest

from tether.feedback.gold import (
    COMPONENTS,
    FORM,
    GoldScorer,
    content_words,
    gold_breakdown,
    gold_score,
    placeholders,
)

PROMPT = "How can I fall asleep faster at night?"
CLEAN = ("To fall asleep faster, keep a regular bedtime, avoid screens for an hour before bed, and "
         "keep your bedroom cool and dark. A warm shower and a calm routine help too. Sleep well!")
CUT = ("To fall asleep faster, keep a regular bedtime, avoid screens for an hour before bed, and "
       "keep your bedroom cool and")
LOOP = "SmolLM, I'm here to help you fall asleep. " * 12
OFF_TOPIC = ("To make a simple tomato sauce, soften garlic in olive oil, add crushed tomatoes and "
             "basil, and simmer for twenty minutes. Enjoy your pasta!")
RUDE = "What a stupid question, I hate answering it. " + CLEAN
LONG = CLEAN + (" But the more I think about it, the more I realize that everyone is different, "
                "and what works for one person may not work for another person at all. In "
                "addition, there are many factors involved, and many people have written about "
                "this topic over the years, with opinions that vary widely from one expert to "
                "the next.") * 2
# Real SmolLM2-135M-Instruct samples (temperature 0.7, cut off at max_new_tokens=96).
SMOL = [
    ("Explain what a black hole is to a ten-year-old.",
     " To them, it's a massive, dark hole in the center of a star.\n\nBut the more I think about "
     "it, the more I realize that the concept of black holes is a never-ending mystery. It's a "
     "reminder that we're not ready to tackle the complexities of the universe, and that's what "
     "makes the universe so fascinating.\n\nPlus, that's just one of those things. There's so "
     "much more to explore and discover. And that's"),
    ("Give me a two-day plan to visit Rome.",
     " I'll be visiting the Colosseum and the Roman Forum, and I want to visit the Pantheon and "
     "the Vatican Museums. I'll arrive at the Colosseum and get to the Roman Forum, and I'll "
     "spend the day in the Roman Colosseum, which is a massive amphitheater, and I'll have a "
     "meal there, and I'll be exploring the Roman Colosseum, which is one of the most iconic "
     "landmarks of all time.\n\nI"),
    ("Write a haiku about autumn leaves.",
     " Here's an example of how you could incorporate the element of autumn:\n\nIn the early "
     "light,\nAlder leaves stand tall,\nAlder leaves stand tall.\n\nIn the early light,\nAlder "
     "leaves stand tall, a little while after the sun sets.\n\nThis haiku captures the essence of "
     "autumn, with the use of the word 'alder' and the image of the leaves standing tall, just as "
     "the late evening,"),
]


def test_ordering_clean_cut_off_loop():
    clean = gold_score(PROMPT, CLEAN)
    assert clean > 0.85
    assert gold_score(PROMPT, CLEAN, finished=False) < clean - 0.2  # same text, cut off
    assert gold_score(PROMPT, CUT, finished=False) < clean - 0.2
    assert gold_score(PROMPT, LOOP, finished=False) < gold_score(PROMPT, CUT, finished=False) - 0.1
    assert gold_breakdown(PROMPT, LOOP, finished=False)["non_repetitive"] < 0.2


def test_relevant_beats_off_topic_and_echo():
    assert gold_score(PROMPT, CLEAN) - gold_score(PROMPT, OFF_TOPIC) > 0.4
    assert gold_breakdown(PROMPT, OFF_TOPIC)["relevance"] == 0.0
    # Repeating the prompt back is not an answer: no new content words.
    echo = "How can I fall asleep faster at night? I want to fall asleep faster."
    assert gold_breakdown(PROMPT, echo)["relevance"] == 0.0
    assert gold_score(PROMPT, echo) < 0.45
    assert content_words("black holes") == content_words("a black hole")  # crude stemming
    assert content_words("saving sleeping") == content_words("save sleep")


def test_placeholder_impolite_long_short_empty():
    note_prompt = "Write a short thank-you note to a neighbour who watered my plants."
    note = ("Thank you so much for watering my plants while I was away! They look wonderful, and "
            "I really appreciate your kindness, neighbour.")
    with_slots = "Dear [Name], " + note + " Best wishes, [Your Name]"
    assert placeholders(with_slots) == ["[Name]", "[Your Name]"]
    assert gold_breakdown(note_prompt, with_slots)["no_placeholder"] == 0.0
    assert gold_score(note_prompt, with_slots) < gold_score(note_prompt, note) - 0.1
    assert placeholders("See [1], tick [x] and read [the docs](https://x.org). [ ]") == []
    assert gold_score(PROMPT, RUDE) < gold_score(PROMPT, CLEAN) - 0.05
    assert gold_breakdown(PROMPT, RUDE)["tone"] < 0.3
    assert gold_score(PROMPT, LONG) < gold_score(PROMPT, CLEAN) - 0.1
    assert gold_score(PROMPT, "Sure.") < 0.4
    assert gold_score(PROMPT, "") == 0.0 and gold_score(PROMPT, "  \n ") == 0.0


def test_typical_bundled_outputs_score_mid_range():
    for prompt, response in SMOL:
        assert 0.4 <= gold_score(prompt, response, finished=False) <= 0.65, prompt


@pytest.mark.parametrize("text,finished,expected", [
    ("It is done.", True, 1.0), ('He said "yes."', True, 1.0), ("Why not?", True, 1.0),
    ("```python\nprint(1)\n```", True, 1.0), ("A list without a stop", True, 0.5),
    ("It is done.", False, 0.0),
])
def test_ends_cleanly(text, finished, expected):
    assert gold_breakdown("Say something", text, finished)["ends_cleanly"] == expected


def test_concise_documented_values():
    def concise(n):
        return gold_breakdown("Count", " ".join(["word"] * n) + ".")["concise"]
    assert concise(50) == 1.0
    assert concise(75) == pytest.approx(1 / (1 + (25 / 40) ** 2))  # 0.72
    assert concise(150) == pytest.approx(1 / (1 + (100 / 40) ** 2))  # 0.14
    assert concise(3) == pytest.approx(0.36)


def test_range_and_determinism():
    texts = [CLEAN, CUT, LOOP, OFF_TOPIC, RUDE, LONG, "", "!!!", "[Name]", "🙂 " * 40,
             "x " * 500, "Great! Wonderful! Excellent!"] + [r for _, r in SMOL]
    for text in texts:
        for finished in (True, False):
            score = gold_score(PROMPT, text, finished)
            assert 0.0 <= score <= 1.0 and not math.isnan(score)
            parts = gold_breakdown(PROMPT, text, finished)
            assert set(parts) == set(COMPONENTS) and all(0 <= v <= 1 for v in parts.values())
            assert score == gold_score(PROMPT, text, finished)
            assert score == GoldScorer(target_words=50)(PROMPT, text, finished)  # fresh scorer


def test_breakdown_combines_to_score_as_documented():
    scorer = GoldScorer()
    weight = dict(scorer.weights)
    assert set(weight) == set(FORM) and sum(weight.values()) == pytest.approx(1.0)
    for text, finished in [(CLEAN, True), (CUT, False), (LOOP, False), (OFF_TOPIC, True)]:
        parts = gold_breakdown(PROMPT, text, finished)
        form = sum(weight[k] * parts[k] for k in FORM)
        expected = (1 - 0.6 * (1 - parts["relevance"])) * form
        assert gold_score(PROMPT, text, finished) == pytest.approx(expected)
    only_ends = dataclasses.replace(scorer, relevance_weight=0.0, weights=tuple(
        (k, 1.0 if k == "ends_cleanly" else 0.0) for k in FORM))
    assert only_ends(PROMPT, OFF_TOPIC) == 1.0 and only_ends(PROMPT, CUT, False) == 0.0


def test_scorer_validation():
    with pytest.raises(ValueError):
        GoldScorer(weights=(("concise", 1.0),))
    with pytest.raises(ValueError):
        GoldScorer(relevance_weight=1.5)
    with pytest.raises(ValueError):
        GoldScorer(weights=tuple((k, 0.0) for k in FORM))


def test_fast_after_analyzer_is_built():
    gold_score(PROMPT, CLEAN)  # builds the analyzer
    texts = [f"{CLEAN} Tip {i}: {LONG[:200 + i]}" for i in range(200)]  # distinct: no cache hits
    start = time.perf_counter()
    for text in texts:
        gold_score(PROMPT, text)
    per_call_ms = (time.perf_counter() - start) / len(texts) * 1000
    assert per_call_ms < 3.0  # ~0.5-1 ms on an idle core; slack for a busy machine
