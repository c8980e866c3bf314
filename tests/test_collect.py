"""Stored feedback of every kind -> weighted preference pairs, with flagged labelers down-weighted."""

import pytest

from tether.data import feedback as F
from tether.data import schema as S
from tether.feedback.collect import collect_pairs


@pytest.fixture
def three_answers(tmp_path):
    from tether.data.store import Store

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    with store.session() as s:
        p, _ = store.get_or_add_prompt(s, "Q", [{"role": "user", "content": "Q"}])
        rs = [S.Response(prompt_id=p.id, text=t, policy="pi") for t in ("best", "middle", "worst")]
        s.add_all(rs)
        s.flush()
        ids = [r.id for r in rs]
    return store, ids


def test_each_kind_becomes_pairs(three_answers):
    """Hand-counted: ranking of 3 -> 3 pairs (one group); comparison a -> 1 pair, tie -> counted;
    ann's ratings 5,3,3 -> 2 pairs + 1 tie; thumbs up/down/down -> 2 pairs."""
    store, (best, mid, worst) = three_answers
    with store.session() as s:
        ann, bob = store.labeler(s, "ann"), store.labeler(s, "bob")
        F.record_ranking(s, ann, [best, mid, worst])
        F.record_comparison(s, bob, worst, best, "b")
        F.record_comparison(s, bob, mid, worst, "tie")
        for r, score in ((best, 5), (mid, 3), (worst, 3)):
            F.record_rating(s, ann, r, score)
        for r, up in ((best, True), (mid, False), (worst, False)):
            F.record_thumb(s, bob, r, up)
    got = collect_pairs(store, labeler_policy="keep")
    assert got.by_kind == {"comparison": 1, "ranking": 3, "rating": 2, "thumb": 2}
    assert (got.n_ties, got.n_cant_tell) == (2, 0)
    assert {(p.chosen, p.rejected) for p in got.pairs} == {(best, mid), (best, worst), (mid, worst)}
    ranking_pairs = [p for p in got.pairs if p.group is not None]
    assert len(ranking_pairs) == 3 and len({p.group for p in ranking_pairs}) == 1
    assert all(p.weight == 1.0 for p in got.pairs)
    # only rating pairs carry a margin: (5 - 3) / 4 for ann's two rating pairs
    assert sorted((p.margin or 0) for p in got.pairs) == [0] * 6 + [0.5, 0.5]
    from tether.feedback.collect import preference_examples

    assert sorted((e.margin or 0) for e in preference_examples(store, got)) == [0] * 6 + [0.5, 0.5]


def test_ai_judge_labels_carry_the_judge_weight(three_answers):
    store, (best, mid, worst) = three_answers
    with store.session() as s:
        ann, judge = store.labeler(s, "ann"), store.labeler(s, "judge", role="ai_judge")
        F.record_comparison(s, ann, best, mid, "a")
        F.record_comparison(s, judge, mid, worst, "a")
    weights = lambda got: sorted((p.chosen, p.weight) for p in got.pairs)  # noqa: E731
    assert weights(collect_pairs(store, labeler_policy="keep")) == [(best, 1.0), (mid, 1.0)]
    assert weights(collect_pairs(store, labeler_policy="keep", judge_weight=0.25)) == [(best, 1.0), (mid, 0.25)]
    assert weights(collect_pairs(store, labeler_policy="keep", judge_weight=0)) == [(best, 1.0)]
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="judge_weight"):
        collect_pairs(store, judge_weight=-1)


def test_flipping_labeler_is_downweighted_or_excluded(tmp_path):
    """4 honest labelers and 1 who always flips judge the same 15 pairs (6 answers of known order):
    the flipper's pairs weigh less (downweight) or vanish (exclude); the honest ones keep weight 1."""
    from itertools import combinations

    from tether.data.store import Store

    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    with store.session() as s:
        p, _ = store.get_or_add_prompt(s, "Q", [{"role": "user", "content": "Q"}])
        rs = [S.Response(prompt_id=p.id, text=f"answer {i}", policy="pi") for i in range(6)]  # 0 is best
        s.add_all(rs)
        s.flush()
        honest = [store.labeler(s, f"h{i}") for i in range(4)]
        flipper = store.labeler(s, "flipper")
        for a, b in combinations([r.id for r in rs], 2):
            for lab in honest:
                F.record_comparison(s, lab, a, b, "a", duration_ms=5000)
            F.record_comparison(s, flipper, a, b, "b", duration_ms=5000)
        flipper_id = flipper.id
    down = collect_pairs(store, downweight=0.25)
    assert [(f.labeler, f.reason) for f in down.flags] == [(flipper_id, "systematic_flip")]
    assert {p.weight for p in down.pairs if p.labeler == flipper_id} == {0.25}
    assert {p.weight for p in down.pairs if p.labeler != flipper_id} == {1.0}
    out = collect_pairs(store, labeler_policy="exclude")
    assert all(p.labeler != flipper_id for p in out.pairs) and len(out.pairs) == 4 * 15
    kept = collect_pairs(store, labeler_policy="keep")
    assert len(kept.pairs) == 5 * 15 and not kept.flags
