"""Recording feedback through tether.data.feedback: every kind stored, bad feedback refused whole."""

import json

import pytest
from sqlalchemy import select

from tether.data import feedback as F
from tether.data import schema as S
from tether.errors import InputError


@pytest.fixture
def seeded(store):
    """Two prompts; responses 1-3 answer prompt 1, response 4 answers prompt 2 (ids returned)."""
    with store.session() as s:
        p1, _ = store.get_or_add_prompt(s, "Name a colour.", [{"role": "user", "content": "Name a colour."}])
        p2, _ = store.get_or_add_prompt(s, "Name a fruit.", [{"role": "user", "content": "Name a fruit."}])
        rs = [S.Response(prompt_id=p.id, text=t, policy="pi", round=2)
              for p, t in [(p1, "red"), (p1, "blue"), (p1, "sky blue"), (p2, "apple")]]
        s.add_all(rs)
        s.flush()
        return store, [r.id for r in rs]


def test_every_kind_is_recorded(seeded):
    store, (a, b, c, other) = seeded
    with store.session() as s:
        ann = store.labeler(s, "ann")
        F.record_comparison(s, ann, a, b, "tie", reason="both fine", duration_ms=1200)
        F.record_ranking(s, ann, [c, a, b])
        F.record_rating(s, ann, a, 4)
        F.record_thumb(s, ann, b, False)
        F.record_flaws(s, ann, c, ["too_long"])
        F.record_critique(s, ann, a, text="Too terse.", rewrite="Red, like a ripe tomato.")
    with store.session() as s:
        assert s.scalar(select(S.Ranking)).response_ids == [c, a, b]
        assert s.scalar(select(S.Comparison)).round == 2  # defaults to the responses' round
        crit = s.scalar(select(S.Critique))
        rewrite = s.get(S.Response, crit.rewrite_response_id)
        assert (rewrite.source, rewrite.text, rewrite.prompt_id) == ("rewrite", "Red, like a ripe tomato.",
                                                                   s.get(S.Response, a).prompt_id)
    counts = store.counts()
    assert [counts[k] for k in ("comparisons", "rankings", "ratings", "thumbs", "flaw_reports", "critiques",
                                "responses")] == [1, 1, 1, 1, 1, 1, 5]


@pytest.mark.parametrize("call, message", [
    (lambda s, lab, ids: F.record_ranking(s, lab, [ids[0], ids[1], ids[0]]), "names response {0} twice"),
    (lambda s, lab, ids: F.record_rating(s, lab, ids[0], 6), "rating 6 is outside 1-5"),
    (lambda s, lab, ids: F.record_rating(s, lab, ids[0], 0), "rating 0 is outside 1-5"),
    (lambda s, lab, ids: F.record_comparison(s, lab, ids[0], ids[3], "a"), "different prompts"),
    (lambda s, lab, ids: F.record_ranking(s, lab, [ids[0], ids[3]]), "different prompts"),
    (lambda s, lab, ids: F.record_comparison(s, lab, ids[0], ids[1], "maybe"), "choice 'maybe'"),
    (lambda s, lab, ids: F.record_comparison(s, lab, ids[0], ids[0], "a"), "compared with itself"),
    (lambda s, lab, ids: F.record_comparison(s, lab, ids[0], 999, "a"), "no response with id 999"),
    (lambda s, lab, ids: F.record_flaws(s, lab, ids[0], ["ugly"]), "unknown flaw categories"),
    (lambda s, lab, ids: F.record_critique(s, lab, ids[0], text="  "), "needs a text, a rewrite"),
])
def test_bad_feedback_is_refused_and_nothing_is_stored(seeded, call, message):
    store, ids = seeded
    before = store.counts()
    with pytest.raises(F.FeedbackError, match=message.format(*ids).replace("(", r"\(")):
        with store.session() as s:
            lab = store.labeler(s, "bob")
            F.record_rating(s, lab, ids[1], 3)  # a good label earlier in the same batch ...
            call(s, lab, ids)
    assert store.counts() == before  # ... is not stored either


def test_import_feedback_file_is_atomic_and_names_the_line(seeded, tmp_path):
    store, (a, b, c, other) = seeded
    good = [{"kind": "comparison", "labeler": "ann", "response_a": a, "response_b": b, "choice": "a"},
            {"kind": "ranking", "labeler": "ann", "response_ids": [a, b, c], "duration_ms": 3000},
            {"kind": "rating", "labeler": "cat", "response_id": c, "score": 5}]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good + [
        {"kind": "ranking", "labeler": "ann", "response_ids": [a, b, a]}]))
    before = store.counts()
    with pytest.raises(InputError, match=r"labels\.jsonl, line 4: the ranking names response"):
        F.import_feedback(store, path)
    assert store.counts() == before
    path.write_text("".join(json.dumps(r) + "\n" for r in good + [
        {"kind": "rating", "labeler": "ann", "response_id": a, "score": 2, "colour": "x"}]))
    with pytest.raises(InputError, match="line 4: unknown field 'colour'"):
        F.import_feedback(store, path)
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    assert F.import_feedback(store, path) == {"comparison": 1, "ranking": 1, "rating": 1}
    with store.session() as s:
        assert {lab.name for lab in s.scalars(select(S.Labeler))} == {"ann", "cat"}
