"""Labeler agreement and quality checks, database-free.

Input is `labels_by_item`: item -> {labeler: label}. A label of None means "no label" and is
ignored. Every other label is a category: "tie" and "cant_tell" are ordinary categories here (two
labelers who both answer "tie" agree), so filter them out first to measure agreement on decisive
answers only. Nothing else is dropped unless a function says so.

Methods: Cohen's kappa (Cohen 1960), Fleiss' kappa (Fleiss 1971), Krippendorff's alpha via the
coincidence matrix (Krippendorff 2011, "Computing Krippendorff's alpha-reliability").
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np

Labels = Mapping[Hashable, Mapping[Hashable, Any]]
NEUTRAL_LABELS = ("tie", "cant_tell")


@dataclass(frozen=True)
class LabelerFlag:
    """Why a labeler looks unreliable. reason: "systematic_flip", "low_agreement", "too_fast" or
    "gold_accuracy"; value: agreement, median duration (ms) or gold accuracy; n: items behind it."""
    labeler: Hashable
    reason: str
    value: float
    n: int


def _clean(labels_by_item: Labels) -> dict[Hashable, dict[Hashable, Any]]:
    return {item: {lab: v for lab, v in labels.items() if v is not None}
            for item, labels in labels_by_item.items()}


def raw_agreement(labels_by_item: Labels) -> float:
    """Share of agreeing labeler pairs on an item, averaged over items with >= 2 labels.

    Items with fewer than two labels are skipped; if none is left, ValueError.
    """
    shares = []
    for labels in _clean(labels_by_item).values():
        values = list(labels.values())
        if len(values) >= 2:
            pairs = list(combinations(values, 2))
            shares.append(sum(x == y for x, y in pairs) / len(pairs))
    if not shares:
        raise ValueError("no item has labels from two or more labelers")
    return statistics.fmean(shares)


def cohens_kappa(labels_a: Sequence[Any], labels_b: Sequence[Any]) -> float:
    """Cohen's (1960) kappa for two labelers on the same items (lists in the same item order).

    kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e = sum_c p_a(c) p_b(c) the
    agreement expected from each labeler's own category frequencies. Positions where either label
    is None are skipped. Returns nan when p_e = 1 (both always gave the same single category).
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"label lists differ in length: {len(labels_a)} != {len(labels_b)}")
    pairs = [(a, b) for a, b in zip(labels_a, labels_b) if a is not None and b is not None]
    if not pairs:
        raise ValueError("no item has labels from both labelers")
    n = len(pairs)
    count_a, count_b = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(count_a[c] * count_b[c] for c in count_a)
    if expected == n * n:
        return math.nan
    p_o, p_e = sum(a == b for a, b in pairs) / n, expected / (n * n)
    return (p_o - p_e) / (1 - p_e)


def fleiss_kappa(labels_by_item: Labels, categories: Iterable[Any] | None = None,
                 unequal: Literal["raise", "modal"] = "raise") -> float:
    """Fleiss' (1971) kappa for items that each have the same number n >= 2 of ratings.

    P_i = (sum_j n_ij^2 - n) / (n (n - 1)) per item, P_bar their mean, p_j the share of all
    ratings in category j, P_e = sum_j p_j^2; kappa = (P_bar - P_e) / (1 - P_e).
    Fleiss needs equal counts: with unequal="raise" (default) differing counts raise ValueError
    (use `krippendorff_alpha`, which allows missing data); with unequal="modal" only items with
    the most common count (the larger on a tie) are used. Items with no label are ignored.
    `categories`, if given, must contain every label. Returns nan when P_e = 1.
    """
    items = [Counter(labels.values()) for labels in _clean(labels_by_item).values() if labels]
    if not items:
        raise ValueError("no labels")
    sizes = Counter(sum(c.values()) for c in items)
    if len(sizes) > 1:
        if unequal != "modal":
            detail = ", ".join(f"{k} ratings: {v} items" for k, v in sorted(sizes.items()))
            raise ValueError(f"Fleiss' kappa needs the same number of ratings per item ({detail});"
                             " use krippendorff_alpha for missing data, or unequal='modal'")
        mode = max(sizes, key=lambda k: (sizes[k], k))
        items = [c for c in items if sum(c.values()) == mode]
    n = sum(items[0].values())
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least two ratings per item")
    used = list(dict.fromkeys(label for c in items for label in c))
    cats = used if categories is None else list(categories)
    unknown = [label for label in used if label not in cats]
    if unknown:
        raise ValueError(f"labels {unknown!r} are not in categories {cats!r}")
    counts = np.array([[c[cat] for cat in cats] for c in items], dtype=float)
    p_bar = ((counts**2).sum(axis=1) - n).mean() / (n * (n - 1))
    p_e = float(((counts.sum(axis=0) / counts.sum()) ** 2).sum())
    return math.nan if math.isclose(p_e, 1.0) else float((p_bar - p_e) / (1 - p_e))


def krippendorff_alpha(labels_by_item: Labels,
                       level: Literal["interval", "ordinal", "nominal"] = "interval") -> float:
    """Krippendorff's alpha (Krippendorff 2011) via the coincidence matrix; missing data allowed.

    Each item may be labelled by any subset of labelers; items with fewer than two labels hold
    no pairable values and are skipped. A unit with m values adds 1/(m-1) to o[c, k] for every
    ordered pair of values (c, k) from different labelers; n_c = sum_k o[c, k], n = sum_c n_c.
    alpha = 1 - D_o / D_e with D_o = sum o[c,k] d2(c,k) / n and
    D_e = sum n_c n_k d2(c,k) / (n (n-1)). d2: nominal 1 if c != k; interval (c - k)^2 (numeric
    labels); ordinal (sum_{g=c..k} n_g - (n_c + n_k)/2)^2 over the sorted values. Returns nan when
    D_e = 0 (one value only).
    """
    if level not in ("interval", "ordinal", "nominal"):
        raise ValueError(f"level must be 'interval', 'ordinal' or 'nominal', got {level!r}")
    units = [list(v.values()) for v in _clean(labels_by_item).values() if len(v) > 1]
    if not units:
        raise ValueError("no item has labels from two or more labelers")
    values = list(dict.fromkeys(v for unit in units for v in unit))
    if level != "nominal":
        try:
            values.sort()
        except TypeError as exc:
            raise ValueError(f"{level} alpha needs labels that can be ordered: {exc}") from None
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in units:
        count = np.bincount([index[v] for v in unit], minlength=len(values)).astype(float)
        coincidence += (np.outer(count, count) - np.diag(count)) / (len(unit) - 1)
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    if level == "nominal":
        d2 = 1.0 - np.eye(len(values))
    elif level == "interval":
        x = np.array(values, dtype=float)
        d2 = (x[:, None] - x[None, :]) ** 2
    else:  # the same expression gives (c, k) and (k, c), so no need to order them
        cum = np.cumsum(n_c)
        d2 = (cum[None, :] - cum[:, None] + (n_c[:, None] - n_c[None, :]) / 2) ** 2
    expected = (np.outer(n_c, n_c) * d2).sum() / (n * (n - 1))
    if expected <= 1e-12:
        return math.nan
    return float(1.0 - (coincidence * d2).sum() / n / expected)


def _majority(counts: Counter) -> Any:
    """The most common label, or None when there is none or the top is tied."""
    top = counts.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def _loo_counts(labels_by_item: Labels) -> dict[Hashable, tuple[int, int]]:
    hits: dict[Hashable, int] = defaultdict(int)
    n: dict[Hashable, int] = defaultdict(int)
    for labels in _clean(labels_by_item).values():
        for labeler, label in labels.items():
            n[labeler] += 0  # record the labeler even if every item is skipped
            majority = _majority(Counter(v for o, v in labels.items() if o != labeler))
            if majority is not None:
                n[labeler] += 1
                hits[labeler] += label == majority
    return {labeler: (hits[labeler], count) for labeler, count in n.items()}


def leave_one_out_agreement(labels_by_item: Labels) -> dict[Hashable, tuple[float, int]]:
    """Per labeler: (share of their labels equal to the majority of the OTHER labelers, n).

    Items where the other labelers are absent or tie for the top label are skipped (not in n); a
    labeler with no scorable item gets (nan, 0).
    """
    counts = _loo_counts(labels_by_item)
    return {lab: (h / n if n else math.nan, n) for lab, (h, n) in counts.items()}


def flag_labelers(labels_by_item: Labels,
                  durations_ms: Mapping[Hashable, Iterable[float]] | None = None,
                  chance: float = 0.5, min_items: int = 10, min_ms: float = 1500,
                  gold: Mapping[Hashable, Any] | None = None, *, flip_margin: float = 0.2,
                  gold_min_accuracy: float = 0.8, min_gold: int = 5) -> list[LabelerFlag]:
    """Labelers who look careless or adversarial, as `LabelerFlag`s.

    - "systematic_flip": on a binary task (at most two labels in the data besides "tie" and
      "cant_tell"), leave-one-out agreement below 1 - chance - flip_margin (0.3 by default): the
      labeler tends to give the opposite answer, e.g. a flipped preference.
    - "low_agreement": otherwise, leave-one-out agreement below `chance`.
    Both need at least `min_items` scored items. value = agreement.
    - "too_fast": median of `durations_ms[labeler]` below `min_ms`, over >= `min_items` answers.
    - "gold_accuracy": with `gold` (item -> correct label), accuracy on the gold items the labeler
      answered below `gold_min_accuracy`, over >= `min_gold` of them.
    Flags come in labeler order, then in the order above.
    """
    clean, loo = _clean(labels_by_item), _loo_counts(labels_by_item)
    durations_ms = durations_ms or {}
    seen = {v for labels in clean.values() for v in labels.values()}
    binary = len(seen - set(NEUTRAL_LABELS)) <= 2
    correct: dict[Hashable, list[bool]] = defaultdict(list)
    for item, answer in (gold or {}).items():
        for labeler, label in clean.get(item, {}).items():
            correct[labeler].append(label == answer)
    flags = []
    for labeler in dict.fromkeys([*loo, *durations_ms, *correct]):
        hits, n = loo.get(labeler, (0, 0))
        if n >= min_items:
            if binary and hits / n < 1 - chance - flip_margin:
                flags.append(LabelerFlag(labeler, "systematic_flip", hits / n, n))
            elif hits / n < chance:
                flags.append(LabelerFlag(labeler, "low_agreement", hits / n, n))
        times = list(durations_ms.get(labeler, ()))
        if len(times) >= min_items and statistics.median(times) < min_ms:
            median = float(statistics.median(times))
            flags.append(LabelerFlag(labeler, "too_fast", median, len(times)))
        right = correct.get(labeler, [])
        if len(right) >= min_gold and sum(right) / len(right) < gold_min_accuracy:
            accuracy = sum(right) / len(right)
            flags.append(LabelerFlag(labeler, "gold_accuracy", accuracy, len(right)))
    return flags


def agreement_by_group(labels_by_item: Labels, groups: Mapping[Hashable, Mapping[str, str]],
                       key: str) -> dict[Any, tuple[float, int, int]]:
    """Leave-one-out agreement broken down by labeler metadata `groups[labeler][key]`.

    Returns group value -> (agreement pooled over the group's scored labels, n_labelers,
    n_labels). The majority is taken over all other labelers, whatever their group, so a narrow
    pool that disagrees with the rest shows up. Labelers without that key go under None.
    """
    totals: dict[Any, list[int]] = {}
    for labeler, (hits, n) in _loo_counts(labels_by_item).items():
        total = totals.setdefault(groups.get(labeler, {}).get(key), [0, 0, 0])
        total[0] += hits
        total[1] += 1
        total[2] += n
    return {g: (h / n if n else math.nan, k, n) for g, (h, k, n) in totals.items()}


def labeler_weights(flags: Iterable[LabelerFlag],
                    policy: Literal["downweight", "exclude"] = "downweight", factor: float = 0.5,
                    labelers: Iterable[Hashable] | None = None) -> dict[Hashable, float]:
    """Weight per labeler from flags: 0.0 ("exclude") or `factor` ("downweight") for a flagged
    labeler, however many flags; labelers listed in `labelers` without a flag get 1.0."""
    if policy not in ("downweight", "exclude"):
        raise ValueError(f"policy must be 'downweight' or 'exclude', got {policy!r}")
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"factor must be in [0, 1], got {factor!r}")
    weights = dict.fromkeys(labelers or (), 1.0)
    for flag in flags:
        weights[flag.labeler] = 0.0 if policy == "exclude" else float(factor)
    return weights
