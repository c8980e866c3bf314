"""The pieces PPO and RLOO/GRPO share (tether.recipes.rl), worked by hand."""

import dataclasses

import pytest
import torch

from tether.errors import TetherError
from tether.recipes import rl
from tether.rollout import Generation


def test_trim_drops_columns_that_are_padding_in_every_row_kept():
    # 3 rows, prompt width 4 (left-padded), response width 3 (right-padded)
    input_ids = torch.tensor([[0, 0, 5, 6, 7, 8, 0],
                              [0, 4, 5, 6, 7, 0, 0],
                              [3, 4, 5, 6, 7, 8, 9]])
    attention = (input_ids != 0).long()
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    x, a, width, t = rl.trim(input_ids, attention, mask, torch.tensor([0, 1]))
    # rows 0 and 1: prompt columns from 1 on (row 1 starts there), responses up to 2 tokens
    assert width == 3 and t == 2
    assert x.tolist() == [[0, 5, 6, 7, 8], [4, 5, 6, 7, 0]]
    assert a.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    x, a, width, t = rl.trim(input_ids, attention, mask, torch.tensor([2]))
    assert (width, t) == (4, 3) and x.tolist() == [[3, 4, 5, 6, 7, 8, 9]]


def test_engine_logprobs_fall_back_to_the_trainers_where_the_engine_gave_none():
    gens = [Generation(0, "a b", [1, 2], 2, False, 0, logprobs=torch.tensor([-1.0, float("nan")])),
            Generation(1, "c", [3], 1, False, 0, logprobs=torch.tensor([-3.0]))]
    trainer = torch.tensor([[-0.5, -0.6, 0.0], [-0.7, 0.0, 0.0]])  # (B, T), T = 3
    got = rl.engine_logprobs(gens, trainer)
    torch.testing.assert_close(got, torch.tensor([[-1.0, -0.6, 0.0], [-3.0, 0.0, 0.0]]), rtol=0, atol=0)


def test_fingerprint_ignores_free_settings_and_counts_the_global_batch():
    @dataclasses.dataclass
    class Cfg:
        lr: float = 1e-5
        batch_size: int = 8
        threads: int | None = None
        out_dir: str = "a"

    ids = [[1, 2, 3]]
    base = rl.fingerprint(Cfg(), ids, None, (), {"batch_size": 8})
    assert rl.fingerprint(Cfg(threads=2, out_dir="b"), ids, None, (), {"batch_size": 8}) == base
    assert rl.fingerprint(Cfg(batch_size=4), ids, None, (), {"batch_size": 8}) == base  # 4 x 2 processes
    assert rl.fingerprint(Cfg(), ids, None, (), {"batch_size": 16}) != base
    assert rl.fingerprint(Cfg(lr=2e-5), ids, None, (), {"batch_size": 8}) != base
    assert rl.fingerprint(Cfg(), [[1, 2]], None, (), {"batch_size": 8}) != base
    assert rl.fingerprint(Cfg(lr=2e-5), ids, None, ("lr",), {"batch_size": 8}) == \
        rl.fingerprint(Cfg(), ids, None, ("lr",), {"batch_size": 8})


def test_a_reward_function_must_give_one_finite_number_per_response():
    ms = rl.Models(None, None, None, None, None, 0, None)
    scores, spread = rl.score(ms, lambda ps, ts, fs: [len(t) for t in ts], None, ["p", "p"], ["ab", "abc"],
                              [True, True], 8, 512, "grpo")
    assert scores.tolist() == [2.0, 3.0] and spread.tolist() == [0.0, 0.0]
    for bad in ([1.0], [1.0, float("nan")]):
        with pytest.raises(TetherError, match="grpo: the reward function must return 2 finite numbers"):
            rl.score(ms, lambda ps, ts, fs, bad=bad: bad, None, ["p", "p"], ["a", "b"], [True, True], 8, 512, "grpo")
