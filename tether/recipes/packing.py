"""Prefix-sharing packing for SFT (and anything that trains on many sequences with common prefixes).

The sequences of a micro-batch are sorted and packed into rows as a token trie: a prefix shared by
several of them (the chat template's system prompt, a prompt answered twice) is computed once, and
each token attends only to its own prefix through a block (tree) mask, with position ids = depth.
It is RadixAttention's prefix sharing (SGLang, Zheng et al. 2024) applied to training; each token sees
exactly what it would see alone (tests/test_sft.py checks the loss against separate forwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def shared_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L) depth of each token in its demonstration(s)
    mask: torch.Tensor  # (R, 1, L, L) bool: query token may attend to key token
    rows: torch.Tensor  # (M,) row of the hidden state that predicts each answer token
    cols: torch.Tensor  # (M,) its column
    targets: torch.Tensor  # (M,) the answer tokens
    owners: torch.Tensor  # (M,) which of the packed pairs each target belongs to
    tokens: int  # tokens of the demonstrations as given (before sharing)

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.input_ids, self.position_ids, self.mask, self.rows, self.cols, self.targets


def pack(encoded: list[tuple[list[int], list[int]]], pad_id: int, capacity: int | None = 1024) -> Packed:
    """Pack (ids, labels) pairs into rows of at most ~`capacity` tokens, sharing common prefixes.

    The pairs are sorted so that shared prefixes are adjacent, split into contiguous runs of about
    equal cost (tokens not shared with the previous pair), and each run becomes one row: a trie whose
    nodes are tokens, laid out parents first. Token i attends to token j iff j is on i's path from the
    root; its position id is its depth. Answer token t of a pair is predicted by the node of its
    token t-1, so a shared node can predict different targets for different pairs. `capacity=None`:
    one pair per row, right-padded (plain batching). Pads attend only to themselves.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i][0])
    runs = [[i] for i in order]
    if capacity is not None:
        cost = [len(encoded[i][0]) - shared_prefix(encoded[j][0], encoded[i][0]) if j is not None else len(encoded[i][0])
                for j, i in zip([None] + order, order)]
        n_rows = math.ceil(sum(cost) / max(capacity, max(len(ids) for ids, _ in encoded)))
        runs, done = [[] for _ in range(n_rows)], 0
        for i, c in zip(order, cost):  # a pair goes to the row its middle falls in
            runs[min(n_rows - 1, int((done + c / 2) * n_rows / sum(cost)))].append(i)
            done += c
        runs = [r for r in runs if r]
    tries = []  # per row: (tokens, depths, [(pair, path of node indices)])
    for run in runs:
        toks, depth, children, paths = [], [], {}, []
        for i in run:
            path = []
            for d, t in enumerate(encoded[i][0]):
                node = children.setdefault((path[-1] if path else -1, t), len(toks))
                if node == len(toks):  # a new node
                    toks.append(t)
                    depth.append(d)
                path.append(node)
            paths.append((i, path))
        tries.append((toks, depth, paths))
    width = max(len(toks) for toks, _, _ in tries)
    input_ids = torch.full((len(runs), width), pad_id, dtype=torch.long)  # (R, L)
    position_ids = torch.zeros((len(runs), width), dtype=torch.long)  # (R, L)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(runs), 1, 1, 1)  # (R, 1, L, L)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    found = []  # (row, column, target, pair)
    for r, (toks, depth, paths) in enumerate(tries):
        input_ids[r, :len(toks)] = torch.tensor(toks)
        position_ids[r, :len(toks)] = torch.tensor(depth)
        for i, path in paths:
            p = torch.tensor(path)
            mask[r, 0, p[:, None], p[None, :]] |= causal[:len(p), :len(p)]
            found += [(r, path[t - 1], y, i) for t, y in enumerate(encoded[i][1]) if y != -100 and t > 0]
    rows, cols, targets, owners = torch.tensor(found, dtype=torch.long).reshape(-1, 4).unbind(1)  # (M,) each
    return Packed(input_ids, position_ids, mask, rows, cols, targets, owners, sum(len(ids) for ids, _ in encoded))
