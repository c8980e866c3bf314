"""The default hidden "gold" scorer: what the simulated labelers stand in for.

tether can run the RLHF loop without people: simulated labelers (`tether.feedback.labelers`)
judge responses through a hidden gold score of the text. Nothing trains on it directly; it is the
yardstick for whether the reward model and the policy learned what the "humans" wanted.

`gold_breakdown(prompt, response, finished)` returns six components, each in [0, 1]. Five are
about form and are averaged with weights (normalised to sum to 1); relevance multiplies:

    score = (1 - relevance_weight * (1 - relevance)) * sum_k weights[k] * component[k]

with relevance_weight 0.6, so a fluent, clean answer that ignores the prompt keeps at most 40 %.
(A plain weighted sum let short polite non-answers such as "Sure, happy to help!" beat any real
answer.) Form components and default weights:

- ``ends_cleanly`` (0.25): 1 when generation finished (EOS, ``finished=True``) and the text ends
  with sentence punctuation ``. ! ? …`` (optionally followed by closing quotes/brackets) or a
  closing code fence; 0.5 when finished without such an ending; 0 when cut off at the length limit.
- ``concise`` (0.25): 1 up to `target_words` (50) words, then a smooth penalty
  ``1 / (1 + (excess / length_scale)^2)`` (length_scale 40: 75 words -> 0.72, 150 -> 0.14); below
  `min_words` (5) words ``(n / min_words)^2`` (3 words -> 0.36).
- ``non_repetitive`` (0.20): share of distinct word 3-grams times the share of lines/sentences
  (of two or more words) that do not repeat an earlier one. A "here to help" loop gets ~0.
- ``tone`` (0.15): VADER compound sentiment (Hutto & Gilbert 2014), averaged over sentences and
  mapped to [0, 1] as ``(compound + 1) / 2``; neutral text 0.5. One hostile sentence (compound
  below `hostile`, -0.5) sets the tone of the whole answer: its compound is used instead.
- ``no_placeholder`` (0.15): 1 without unfilled placeholders such as "[Name]", "[Your Name]" or
  "[insert date]"; each one found takes off 0.5 (floor 0). Citations "[1]", checkboxes "[x]" and
  markdown links "[text](url)" are not placeholders.

``relevance`` = ``min(1, coverage / coverage_target) * min(1, new / novelty_target)``: coverage is
the share of the prompt's content words (lowercased, not in a small stopword list that includes
instruction and filler words, crude suffix stripping) found in the response, full credit at half
of them (coverage_target 0.5); `new` counts distinct response content words not in the prompt,
full credit at 4, so an off-topic answer and a bare echo of the prompt both score low. A prompt
without content words gives coverage 1.

An empty (or whitespace-only) response scores 0 on every component. Measured on bundled-model
samples: on-topic rambling cut off at max_new_tokens scores about 0.5-0.65, off-topic rambling
~0.25, short non-answers ("The answer is:") 0.25-0.4; a clean, concise, polite, relevant answer
scores above 0.85. Known blind spots: facts are not checked (a short, fluent, on-topic but wrong
answer scores high), and VADER reads topic words as tone ("crushed tomatoes" is negative).
Deterministic, pure Python, ~0.5 ms a call; the VADER analyzer is built once, lazily, and results
are memoised per (scorer, prompt, response, finished).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

FORM = ("ends_cleanly", "concise", "non_repetitive", "tone", "no_placeholder")
COMPONENTS = (*FORM, "relevance")

STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers him his how i if in into is it its itself just let me more most my no nor
not now of off on once only or other our ours out over own same she should so some such than that
the their them then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself
explain describe write give tell suggest list make please short simple brief quick good best way
ways thing things some something someone one two three four five use using get like really
seem seems think know want need sure just well yes okay ok also much many lot lots
""".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_UNIT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_CLEAN_END = re.compile(r"(?:[.!?\u2026][\"'\u201d\u2019)\]*_]*|```)\s*$")
_PLACEHOLDER = re.compile(r"\[(?:[A-Z][^\[\]\n]{0,40}|(?:your|insert|name|date|company)"
                          r"[^\[\]\n]{0,40})\](?!\()")


@dataclass(frozen=True)
class GoldScorer:
    """Weights and targets of the gold score; call it like `gold_score`.

    Tune with `dataclasses.replace(GoldScorer(), target_words=80)`. `weights` gives each form
    component in `FORM` a weight >= 0 (normalised to sum to 1); `relevance_weight` in [0, 1] is how
    much an off-topic answer loses (0: relevance ignored, 1: an off-topic answer scores 0).
    """
    weights: tuple[tuple[str, float], ...] = (
        ("ends_cleanly", 0.25), ("concise", 0.25), ("non_repetitive", 0.20), ("tone", 0.15),
        ("no_placeholder", 0.15))
    relevance_weight: float = 0.6
    hostile: float = -0.5
    target_words: int = 50
    length_scale: float = 40.0
    min_words: int = 5
    coverage_target: float = 0.5
    novelty_target: int = 4
    stopwords: frozenset[str] = field(default=STOPWORDS, repr=False)

    def __post_init__(self) -> None:
        names = [name for name, _ in self.weights]
        if sorted(names) != sorted(FORM):
            raise ValueError(f"weights must name each of {FORM} once, got {names}")
        if any(w < 0 for _, w in self.weights) or sum(w for _, w in self.weights) <= 0:
            raise ValueError("weights must be >= 0 and not all 0")
        if not 0.0 <= self.relevance_weight <= 1.0:
            raise ValueError(f"relevance_weight must be in [0, 1], got {self.relevance_weight}")
        if self.target_words < 1 or self.length_scale <= 0 or self.min_words < 1:
            raise ValueError("target_words, length_scale and min_words must be positive")

    @property
    def weight(self) -> dict[str, float]:
        """Form component -> weight, normalised to sum to 1."""
        total = sum(w for _, w in self.weights)
        return {name: w / total for name, w in self.weights}

    def breakdown(self, prompt: str, response: str, finished: bool = True) -> dict[str, float]:
        """Component -> value in [0, 1] (see the module docstring)."""
        return dict(_breakdown(self, prompt, response, bool(finished)))

    def combine(self, parts: dict[str, float]) -> float:
        """The score from a breakdown: on-topic factor times the weighted form components."""
        form = sum(w * parts[k] for k, w in self.weight.items())
        return min(1.0, max(0.0, (1.0 - self.relevance_weight * (1.0 - parts["relevance"])) * form))

    def __call__(self, prompt: str, response: str, finished: bool = True) -> float:
        return self.combine(self.breakdown(prompt, response, finished))


_ANALYZER = None


def _analyzer():
    """The VADER analyzer, built on first use and cached for the process."""
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


def words(text: str) -> list[str]:
    """Lowercased word tokens (letters/digits, with an inner apostrophe: "don't")."""
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    """Crude suffix stripping, then a final "e": "holes"/"hole", "saving"/"save" match."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith(("ches", "shes")) or (len(word) > 4 and word[-3:] in ("ses", "xes", "zes")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and word[-2] not in "su'":
        word = word[:-1]
    else:
        for suffix in ("ing", "ed", "ly"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[:-len(suffix)]
                break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def content_words(text: str, stopwords: frozenset[str] = STOPWORDS) -> set[str]:
    """Stems of the words of `text` that are not stopwords and have 3+ letters."""
    return {_stem(w) for w in words(text) if len(w) >= 3 and w not in stopwords}


def placeholders(text: str) -> list[str]:
    """Unfilled placeholders such as "[Name]" or "[insert date]", in order."""
    return [m for m in _PLACEHOLDER.findall(text) if m.strip("[] ").lower() not in ("x", "")]


def _compound(text: str, hostile: float) -> float:
    """Mean VADER compound over sentences (VADER's advice for paragraphs), or the most negative
    sentence's compound when that is below `hostile`."""
    polarity = _analyzer().polarity_scores
    scores = [polarity(u)["compound"] for u in _UNIT_SPLIT.split(text) if u.strip()] or [0.0]
    return min(scores) if min(scores) < hostile else sum(scores) / len(scores)


def _non_repetitive(tokens: list[str], text: str) -> float:
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    distinct = len(set(grams)) / len(grams) if grams else 1.0
    units = [" ".join(words(u)) for u in _UNIT_SPLIT.split(text)]
    units = [u for u in units if u.count(" ") >= 1]
    repeats = (len(units) - len(set(units))) / len(units) if units else 0.0
    return distinct * (1.0 - repeats)


@lru_cache(maxsize=8192)
def _breakdown(scorer: GoldScorer, prompt: str, response: str,
               finished: bool) -> tuple[tuple[str, float], ...]:
    tokens = words(response)
    if not tokens:
        return tuple((name, 0.0) for name in COMPONENTS)
    n = len(tokens)
    ends = (1.0 if _CLEAN_END.search(response) else 0.5) if finished else 0.0
    if n < scorer.min_words:
        concise = (n / scorer.min_words) ** 2
    else:
        excess = max(0, n - scorer.target_words) / scorer.length_scale
        concise = 1.0 / (1.0 + excess * excess)
    tone = (_compound(response, scorer.hostile) + 1.0) / 2.0
    asked = content_words(prompt, scorer.stopwords)
    said = content_words(response, scorer.stopwords)
    coverage = len(asked & said) / len(asked) if asked else 1.0
    relevance = (min(1.0, coverage / scorer.coverage_target)
                 * min(1.0, len(said - asked) / scorer.novelty_target))
    no_placeholder = max(0.0, 1.0 - 0.5 * len(placeholders(response)))
    values = {"ends_cleanly": ends, "concise": concise,
              "non_repetitive": _non_repetitive(tokens, response), "tone": tone,
              "relevance": relevance, "no_placeholder": no_placeholder}
    return tuple((name, min(1.0, max(0.0, values[name]))) for name in COMPONENTS)


DEFAULT_SCORER = GoldScorer()


def gold_breakdown(prompt: str, response: str, finished: bool = True,
                   scorer: GoldScorer | None = None) -> dict[str, float]:
    """The gold components, each in [0, 1]; `GoldScorer.combine` turns them into `gold_score`."""
    return (scorer or DEFAULT_SCORER).breakdown(prompt, response, finished)


def gold_score(prompt: str, response: str, finished: bool = True,
               scorer: GoldScorer | None = None) -> float:
    """Gold score in [0, 1] of `response` to `prompt`; `finished`: generation ended with EOS."""
    return (scorer or DEFAULT_SCORER)(prompt, response, finished)


__all__ = ["COMPONENTS", "DEFAULT_SCORER", "FORM", "GoldScorer", "STOPWORDS", "content_words",
           "gold_breakdown", "gold_score", "placeholders", "words"]
