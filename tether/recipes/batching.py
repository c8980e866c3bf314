"""Batching of preference pairs for the reward-model and DPO recipes: pure functions of indices and seeds.

Pairs that share a unit stay in one batch (and on one side of the held-out split): a ranking's pairs
(`group`), or all pairs of one prompt (`by_prompt`, InstructGPT's batch element; see `tether.recipes.rm`).
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tether.recipes.rm import PreferenceExample


def _units(groups: list) -> list[list[int]]:
    """Indices bundled by group (an ungrouped pair is its own unit), in order of first appearance."""
    units: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        units.setdefault(("i", i) if g is None else ("g", g), []).append(i)
    return list(units.values())


def pair_groups(pairs: list[PreferenceExample], by_prompt: bool) -> list:
    """The batching unit of each pair: its prompt (`by_prompt`; a ranking never spans two prompts) or
    its own `group`."""
    if not by_prompt:
        return [p.group for p in pairs]
    return [json.dumps(p.prompt, sort_keys=True) for p in pairs]


def distinct_rows(chosen: list[list[int]], rejected: list[list[int]]) -> tuple[list[list[int]], list[int], list[int]]:
    """(rows, chosen_index, rejected_index): each distinct token row once, and where each pair's two
    rows are in it, so a response shared by several pairs is forwarded once per micro-batch."""
    index: dict[tuple, int] = {}
    rows: list[list[int]] = []

    def at(ids: list[int]) -> int:
        key = tuple(ids)
        if key not in index:
            index[key] = len(rows)
            rows.append(ids)
        return index[key]

    return rows, [at(c) for c in chosen], [at(r) for r in rejected]


def batches_keeping_groups(groups: list[int | None], batch_size: int, rng: random.Random,
                           lengths: list[int] | None = None, window: int = 8) -> list[list[int]]:
    """One epoch of batches: shuffle the groups, then fill batches in order without splitting a group.

    A group that does not fit in the current batch starts the next one; a group larger than
    `batch_size` becomes one oversized batch of its own (its pairs are never split). With `lengths`
    (tokens per pair), the shuffled units are sorted by length within windows of `window` batches
    before filling, and the batches are shuffled again: each batch holds pairs of similar length,
    so less padding is computed, while the order of batches stays random."""
    units = _units(groups)
    rng.shuffle(units)
    if lengths is not None:
        def longest(unit: list[int]) -> int:
            return max(lengths[i] for i in unit)

        bucketed, chunk, count = [], [], 0
        for unit in units:
            chunk.append(unit)
            count += len(unit)
            if count >= window * batch_size:
                bucketed += sorted(chunk, key=longest)
                chunk, count = [], 0
        units = bucketed + sorted(chunk, key=longest)
    batches, current = [], []
    for unit in units:
        if current and len(current) + len(unit) > batch_size:
            batches.append(current)
            current = []
        current = current + unit
    if current:
        batches.append(current)
    if lengths is not None:
        rng.shuffle(batches)
    return batches


def bootstrap_weights(n: int, heads: int, seed: int) -> torch.Tensor:
    """(n, heads) bootstrap counts: column h counts how often each pair appears in a resample of n
    pairs with replacement (each column sums to n). One head: all ones (no resampling)."""
    if heads == 1:
        return torch.ones((n, 1))
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (heads, n), generator=gen)  # (H, n)
    return torch.stack([torch.bincount(d, minlength=n) for d in draws], dim=1).float()  # (n, H)


def split_eval(pairs: list[PreferenceExample], fraction: float, seed: int, by_prompt: bool = False):
    """(train, eval): about `fraction` of the pairs held out, whole groups (`by_prompt`: whole prompts,
    so no held-out response was trained on) at a time."""
    units = _units(pair_groups(pairs, by_prompt))
    random.Random(seed).shuffle(units)
    want, held = round(fraction * len(pairs)), set()
    for unit in units:
        if len(held) >= want or len(held) + len(unit) >= len(pairs):
            break
        held.update(unit)
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]
