"""Batching of preference pairs (tether.recipes.batching): groups, prompts, held-out splits, distinct rows."""

import random

import torch

from tether.recipes import batching
from tether.recipes.rm import PreferenceExample


def test_batches_keep_groups_together():
    groups = [7, None, 7, 3, 3, 3, None, 9, 9, 9, 9, 9]  # group 9 (5 pairs) is larger than a batch
    batches = batching.batches_keeping_groups(groups, 4, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))  # every pair once
    for g in (7, 3, 9):
        members = {i for i, x in enumerate(groups) if x == g}
        assert sum(bool(members & set(b)) for b in batches) == 1  # the whole group in one batch
    assert all(len(b) <= 4 for b in batches if 9 not in [groups[i] for i in b])
    assert batches != batching.batches_keeping_groups(groups, 4, random.Random(2))  # shuffled
    assert batches == batching.batches_keeping_groups(groups, 4, random.Random(1))  # reproducible
    assert batching.batches_keeping_groups([None] * 5, 2, random.Random(0)).__len__() == 3


def test_bootstrap_weights():
    w = batching.bootstrap_weights(50, 3, seed=0)
    assert w.shape == (50, 3) and torch.all(w.sum(0) == 50) and torch.all(w == w.round())
    assert not torch.equal(w[:, 0], w[:, 1])  # each head has its own resample
    assert (w == 0).any()  # ~37% of pairs are left out of each resample
    torch.testing.assert_close(w, batching.bootstrap_weights(50, 3, seed=0))
    torch.testing.assert_close(batching.bootstrap_weights(4, 1, seed=0), torch.ones(4, 1))


def test_split_eval_holds_out_whole_groups():
    pairs = [PreferenceExample("p", "a", "b", group=i // 3) for i in range(30)]
    train, held = batching.split_eval(pairs, 0.2, seed=0)
    assert len(train) + len(held) == 30 and len(held) == 6
    assert not {p.group for p in train} & {p.group for p in held}


def test_split_eval_by_prompt_holds_out_whole_prompts():
    pairs = [PreferenceExample([{"role": "user", "content": f"q{i % 5}"}], f"a{i}", f"b{i}", group=i)
             for i in range(30)]  # 5 prompts x 6 pairs, each pair its own group
    train, held = batching.split_eval(pairs, 0.2, seed=0, by_prompt=True)
    assert len(train) + len(held) == 30 and len(held) == 6  # one whole prompt
    assert len({p.prompt[0]["content"] for p in held}) == 1
    assert not {p.prompt[0]["content"] for p in train} & {p.prompt[0]["content"] for p in held}


def test_distinct_rows():
    rows, c, r = batching.distinct_rows([[1, 2], [1, 2], [3]], [[3], [4, 5], [1, 2]])
    assert rows == [[1, 2], [3], [4, 5]]
    assert c == [0, 0, 1] and r == [1, 2, 0]
    assert [rows[i] for i in c] == [[1, 2], [1, 2], [3]] and [rows[i] for i in r] == [[3], [4, 5], [1, 2]]
