"""Simulated labelers: stand-ins for people, built on the hidden gold score (`feedback.gold`).

Each `SimulatedLabeler` judges texts through the gold score g of (prompt, response, finished),
plus its own noise and biases, with its own seeded `numpy.random.Generator`, so a run is
reproducible. Every method returns (answer, duration_ms); durations are lognormal around
`median_ms` (times a per-task factor, `TASK_TIME`).

Noise model. A labeler's utility of a response is u = g + length_bias * words / 100 (a biased
labeler likes long answers, the classic RLHF labeler bias). A comparison picks "a" with
probability sigmoid((u_a - u_b) / temperature) (Bradley-Terry); first a "cant_tell" with
probability `cant_tell_rate`, then a "tie" with probability `tie_rate` when |u_a - u_b| <
`tie_margin` (for an unbiased labeler that is |g_a - g_b|). Rankings are Plackett-Luce samples of
the same utilities (Gumbel trick), ratings and thumbs threshold u plus logistic noise of scale
`temperature`. `flip=True` (an adversarial labeler) answers the opposite: it negates utilities,
inverts ratings (6 - x), thumbs and flaw reports. A labeler of kind "random" ignores the texts and
answers uniformly at random. Otherwise `kind` is a description ("careful", "noisy", "biased",
"adversarial"): behaviour comes from the fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tether.feedback.gold import DEFAULT_SCORER, GoldScorer, words

Kind = Literal["careful", "noisy", "biased", "adversarial", "random"]
KINDS: tuple[str, ...] = ("careful", "noisy", "biased", "adversarial", "random")
FLAW_CATEGORIES: tuple[str, ...] = ("cut_off", "repetitive", "too_long", "off_topic", "impolite",
                                    "placeholder")
TASK_TIME = {"compare": 1.0, "rank_per_response": 0.5, "rate": 0.6, "thumb": 0.3, "flaws": 0.8,
             "critique": 1.5}
_PHRASES = {"cut_off": "it stops mid-sentence", "repetitive": "it repeats itself",
            "too_long": "it is far too long", "off_topic": "it does not answer the question",
            "impolite": "the tone is rude", "placeholder": "it leaves placeholders such as [Name]"}


def detect_flaws(prompt: str, response: str, finished: bool = True,
                 scorer: GoldScorer | None = None) -> list[str]:
    """The true flaws of a response (in `FLAW_CATEGORIES` order), read off the gold breakdown.

    cut_off: not finished, or finished on a dangling "," ":" ";" "-"; repetitive: non_repetitive
    < 0.8; too_long: concise < 0.8 above the target length (~70+ words by default); off_topic:
    relevance < 0.5; impolite: a compound below the scorer's `hostile` (tone < 0.25 by default);
    placeholder: any placeholder.
    An empty response is "off_topic" (and "cut_off" if not finished), nothing else.
    """
    scorer = scorer or DEFAULT_SCORER
    if not words(response):
        return ["cut_off", "off_topic"] if not finished else ["off_topic"]
    parts = scorer.breakdown(prompt, response, finished)
    found = {"cut_off": not finished or response.rstrip()[-1] in ",:;-",
             "repetitive": parts["non_repetitive"] < 0.8,
             "too_long": parts["concise"] < 0.8 and len(words(response)) > scorer.target_words,
             "off_topic": parts["relevance"] < 0.5,
             "impolite": parts["tone"] < (1 + scorer.hostile) / 2,
             "placeholder": parts["no_placeholder"] < 1.0}
    return [c for c in FLAW_CATEGORIES if found[c]]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass
class SimulatedLabeler:
    """One simulated labeler (see the module docstring for the noise model).

    temperature: Bradley-Terry noise on the [0, 1] gold scale (careful ~0.04, noisy ~0.15).
    tie_margin / tie_rate: below the margin, "tie" with probability tie_rate. cant_tell_rate:
    share of "cant_tell" answers. length_bias: utility per 100 words. flip: answer the opposite.
    flaw_error: chance to miss a true flaw (and a quarter of it to invent one). median_ms,
    time_sigma: lognormal answer time. groups: free-form metadata ({"pool": "crowd", ...}).
    """
    name: str
    kind: Kind = "careful"
    temperature: float = 0.04
    tie_margin: float = 0.02
    length_bias: float = 0.0
    flip: bool = False
    seed: int = 0
    median_ms: float = 5000.0
    groups: dict[str, str] = field(default_factory=dict)
    scorer: GoldScorer = DEFAULT_SCORER
    tie_rate: float = 0.5
    cant_tell_rate: float = 0.02
    flaw_error: float = 0.0
    time_sigma: float = 0.35
    rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.temperature <= 0 or self.median_ms <= 0:
            raise ValueError("temperature and median_ms must be positive")
        for name in ("tie_rate", "cant_tell_rate", "flaw_error"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        self.rng = np.random.default_rng(self.seed)

    def utility(self, prompt: str, response: str, finished: bool = True) -> float:
        """Gold score plus this labeler's length bias (before noise and flip)."""
        bias = self.length_bias * len(words(response)) / 100 if self.length_bias else 0.0
        return self.scorer(prompt, response, finished) + bias

    def _ms(self, factor: float) -> float:
        return float(self.median_ms * factor * math.exp(self.rng.normal(0.0, self.time_sigma)))

    def _noisy(self, prompt: str, response: str, finished: bool) -> float:
        return self.utility(prompt, response, finished) + self.rng.logistic(0.0, self.temperature)

    def compare(self, prompt: str, a: str, b: str, a_finished: bool = True,
                b_finished: bool = True) -> tuple[str, float]:
        """("a" | "b" | "tie" | "cant_tell", duration_ms) for the better of two responses.

        A "random" labeler answers "a" or "b" with probability 1/2 each, never tie/cant_tell."""
        if self.kind == "random":
            choice = "a" if self.rng.random() < 0.5 else "b"
        else:
            diff = self.utility(prompt, a, a_finished) - self.utility(prompt, b, b_finished)
            diff = -diff if self.flip else diff
            if self.rng.random() < self.cant_tell_rate:
                choice = "cant_tell"
            elif abs(diff) < self.tie_margin and self.rng.random() < self.tie_rate:
                choice = "tie"
            else:
                choice = "a" if self.rng.random() < _sigmoid(diff / self.temperature) else "b"
        return choice, self._ms(TASK_TIME["compare"])

    def rank(self, prompt: str, responses: Sequence[str],
             finished: Sequence[bool] | None = None) -> tuple[list[int], float]:
        """(indices of `responses` best to worst, duration_ms): a Plackett-Luce sample."""
        if not responses:
            raise ValueError("rank needs at least one response")
        finished = [True] * len(responses) if finished is None else list(finished)
        if len(finished) != len(responses):
            raise ValueError(f"{len(responses)} responses but {len(finished)} finished flags")
        if self.kind == "random":
            order = [int(i) for i in self.rng.permutation(len(responses))]
        else:
            u = np.array([self.utility(prompt, r, f) for r, f in zip(responses, finished)])
            keys = (-u if self.flip else u) / self.temperature + self.rng.gumbel(size=len(u))
            order = [int(i) for i in np.argsort(-keys, kind="stable")]
        return order, self._ms(TASK_TIME["rank_per_response"] * len(responses))

    def rate(self, prompt: str, response: str, finished: bool = True) -> tuple[int, float]:
        """(score 1..5, duration_ms): noisy utility in five equal bins of [0, 1]."""
        if self.kind == "random":
            score = int(self.rng.integers(1, 6))
        else:
            x = self._noisy(prompt, response, finished)
            if self.length_bias:  # centre the bias on the target length so ratings stay on scale
                x -= self.length_bias * self.scorer.target_words / 100
            score = 1 + min(4, max(0, int(math.floor(x * 5))))
            score = 6 - score if self.flip else score
        return score, self._ms(TASK_TIME["rate"])

    def thumb(self, prompt: str, response: str, finished: bool = True,
              threshold: float = 0.7) -> tuple[bool, float]:
        """(thumbs up?, duration_ms): up when the noisy utility reaches `threshold`."""
        if self.kind == "random":
            up = bool(self.rng.random() < 0.5)
        else:
            up = bool(self._noisy(prompt, response, finished) >= threshold) != self.flip
        return up, self._ms(TASK_TIME["thumb"])

    def _flaws(self, prompt: str, response: str, finished: bool,
               categories: Sequence[str]) -> list[str]:
        unknown = [c for c in categories if c not in FLAW_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown flaw categories {unknown}; expected {FLAW_CATEGORIES}")
        if self.kind == "random":
            return [c for c in categories if self.rng.random() < 0.3]
        true = set(detect_flaws(prompt, response, finished, self.scorer))
        if self.flip:
            true = set(categories) - true
        reported = []
        for c in categories:
            draw = self.rng.random()
            keep = draw >= self.flaw_error if c in true else draw < self.flaw_error / 4
            if keep:
                reported.append(c)
        return reported

    def flaws(self, prompt: str, response: str, finished: bool = True,
              categories: Sequence[str] = FLAW_CATEGORIES) -> tuple[list[str], float]:
        """(flaw categories this labeler reports, in `categories` order, duration_ms)."""
        found = self._flaws(prompt, response, finished, categories)
        return found, self._ms(TASK_TIME["flaws"])

    def critique(self, prompt: str, response: str, finished: bool = True) -> tuple[str, float]:
        """(a short templated critique naming up to three of the reported flaws, duration_ms)."""
        found = self._flaws(prompt, response, finished, FLAW_CATEGORIES)
        if not found:
            text = "Good answer: complete, clear and on topic."
        else:
            text = "Main problems: " + "; ".join(_PHRASES[c] for c in found[:3]) + "."
        return text, self._ms(TASK_TIME["critique"])

    def rewrite(self, prompt: str, response: str, finished: bool = True) -> tuple[None, float]:
        """Simulated labelers do not write rewrites: always (None, 0.0)."""
        return None, 0.0


# kind -> (temperature, tie_margin, length_bias, flip, flaw_error, median_ms range, pool)
_PROFILES = {
    "careful": (0.04, 0.02, 0.0, False, 0.0, (4000, 9000), "in-house"),
    "noisy": (0.15, 0.05, 0.0, False, 0.25, (2000, 3500), "crowd"),
    "biased": (0.05, 0.02, 0.3, False, 0.05, (3500, 6000), "vendor-b"),
    "adversarial": (0.04, 0.02, 0.0, True, 0.0, (4000, 7000), "crowd"),
    "random": (1.0, 0.0, 0.0, False, 0.0, (400, 700), "crowd"),
}
_COUNTRIES = ("UK", "US", "IN", "KE", "PH", "DE", "BR")


def labeler_pool(n: int = 20, n_adversarial: int = 3, n_random: int = 2,
                 n_noisy: int | None = None, n_biased: int | None = None, seed: int = 0,
                 scorer: GoldScorer | None = None) -> list[SimulatedLabeler]:
    """A pool of `n` simulated labelers: careful ones fill what the other kinds leave.

    Defaults: n_noisy = round(0.2 n), n_biased = round(0.15 n) (20 -> 8 careful, 4 noisy,
    3 biased, 3 adversarial, 2 random). Careful: temperature 0.04, 4-9 s per comparison; noisy:
    0.15, 2-3.5 s, miss 25 % of flaws; biased: 0.05 with length_bias 0.3, all in
    groups["pool"] == "vendor-b"; adversarial: careful but flipped; random: 0.4-0.7 s. Names are
    "sim-<kind>-NN"; groups hold "pool" and "country". Seeds derive from `seed`.
    """
    n_noisy = round(0.2 * n) if n_noisy is None else n_noisy
    n_biased = round(0.15 * n) if n_biased is None else n_biased
    counts = {"noisy": n_noisy, "biased": n_biased, "adversarial": n_adversarial,
              "random": n_random}
    if min(counts.values()) < 0 or sum(counts.values()) > n:
        raise ValueError(f"kind counts {counts} must be >= 0 and sum to at most n={n}")
    counts = {"careful": n - sum(counts.values()), **counts}
    rng = np.random.default_rng(seed)
    seeds = np.random.SeedSequence(seed).generate_state(n)
    pool = []
    for kind, count in counts.items():
        temp, margin, bias, flip, flaw_error, (lo, hi), group = _PROFILES[kind]
        for k in range(count):
            i = len(pool)
            pool.append(SimulatedLabeler(
                name=f"sim-{kind}-{k + 1:02d}", kind=kind, temperature=temp, tie_margin=margin,
                length_bias=bias, flip=flip, seed=int(seeds[i]),
                median_ms=float(rng.uniform(lo, hi)), flaw_error=flaw_error,
                groups={"pool": group, "country": _COUNTRIES[i % len(_COUNTRIES)]},
                scorer=scorer or DEFAULT_SCORER))
    return pool


__all__ = ["FLAW_CATEGORIES", "KINDS", "TASK_TIME", "Kind", "SimulatedLabeler", "detect_flaws",
           "labeler_pool"]
