"""The task queue and answers through the JSON API and forms: overlap, no repeats, priorities,
timeouts, exactly-once answers, clear 4xx errors, every kind stored through tether.data.feedback."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import select

from tether.data import schema as S
from websupport import make_tasks


def answer(client, csrf, task_id, body, next=False):
    return client.post(f"/api/tasks/{task_id}/label" + ("?next=true" if next else ""), json=body,
                       headers={"X-CSRF-Token": csrf})


def drain(client, csrf, body) -> list[int]:
    """Answer the labeler's whole queue; returns the task ids in the order they came."""
    seen = []
    task = client.get("/api/tasks/next").json()["task"]
    while task is not None:
        seen.append(task["id"])
        r = answer(client, csrf, task["id"], body, next=True)
        assert r.status_code == 201, r.text
        task = r.json()["next"]
    return seen


def test_overlap_no_repeats_and_done_status(client_for, web_ws):
    _, store = web_ws
    from tether.web.accounts import add_labeler

    with store.session() as s:
        add_labeler(s, "carol", password="correct horse battery")
    ids = make_tasks(store, "pairwise", labels_needed=2, per_prompt=2)
    assert len(ids) == 12
    got = {}
    for name in ("alice", "bob", "carol"):
        c, csrf = client_for(name)
        got[name] = drain(c, csrf, {"choice": "a"})
        assert len(got[name]) == len(set(got[name]))  # nobody gets a task twice
    per_task = Counter(t for seen in got.values() for t in seen)
    assert set(per_task) == set(ids) and set(per_task.values()) == {2}  # exactly the overlap
    with store.session() as s:
        assert {t.status for t in s.scalars(select(S.Task))} == {"done"}
        assert len(list(s.scalars(select(S.Comparison)))) == 24


def test_priority_first_and_reload_keeps_the_same_task(client_for, web_ws):
    _, store = web_ws
    low = make_tasks(store, "rating", limit=2, priority=0)
    high = make_tasks(store, "thumbs", limit=2, priority=5)
    alice, csrf = client_for("alice")
    first = alice.get("/api/tasks/next").json()["task"]
    assert first["id"] == high[0] and first["kind"] == "thumbs"
    assert alice.get("/api/tasks/next").json()["task"]["id"] == first["id"]
    assert alice.get("/label").headers["location"] == f"/task/{first['id']}"
    order = [first["id"]]
    r = answer(alice, csrf, first["id"], {"up": True}, next=True)
    while r.json()["next"]:
        nxt = r.json()["next"]
        order.append(nxt["id"])
        r = answer(alice, csrf, nxt["id"], {"up": False} if nxt["kind"] == "thumbs" else {"score": 3}, next=True)
    assert order == high + low


def test_abandoned_task_returns_to_the_queue(app, client_for, web_ws):
    _, store = web_ws
    (task,) = make_tasks(store, "rating", limit=1)
    alice, alice_csrf = client_for("alice")
    bob, bob_csrf = client_for("bob")
    assert alice.get("/api/tasks/next").json()["task"]["id"] == task
    assert bob.get("/api/tasks/next").json()["task"] is None  # its one slot is taken
    app.state.db.timeout_s, app.state.db.reclaim_every_s = 0.2, 0.0
    time.sleep(0.3)
    assert bob.get("/api/tasks/next").json()["task"]["id"] == task
    r = answer(alice, alice_csrf, task, {"score": 2})
    assert r.status_code == 409 and "timed out" in r.json()["detail"]
    app.state.db.timeout_s = 900
    assert answer(bob, bob_csrf, task, {"score": 4}).status_code == 201
    with store.session() as s:
        assert [(r.score, r.labeler_id) for r in s.scalars(select(S.Rating))] == [
            (4, s.scalar(select(S.Labeler.id).where(S.Labeler.name == "bob")))]
        assert s.get(S.Task, task).status == "done"


def test_a_labeler_who_abandoned_a_task_can_take_it_again(app, client_for, web_ws):
    """Her assignment row is revived (status, time and completion reset), not duplicated."""
    _, store = web_ws
    (task,) = make_tasks(store, "rating", limit=1)
    alice, csrf = client_for("alice")
    assert alice.get("/api/tasks/next").json()["task"]["id"] == task
    app.state.db.timeout_s, app.state.db.reclaim_every_s = 0.2, 0.0
    time.sleep(0.3)
    with store.session() as s:  # the claim below first reclaims: her row is abandoned, then revived
        first_at = s.scalar(select(S.Assignment.assigned_at))
    assert alice.get("/api/tasks/next").json()["task"]["id"] == task
    app.state.db.timeout_s = 900
    with store.session() as s:
        rows = s.execute(select(S.Assignment.status, S.Assignment.assigned_at)).all()
        assert len(rows) == 1 and rows[0][0] == "assigned" and rows[0][1] > first_at
    assert answer(alice, csrf, task, {"score": 5}).status_code == 201
    with store.session() as s:
        assert s.scalar(select(S.Assignment.status)) == "done" and s.get(S.Task, task).status == "done"


def test_double_submit_stores_one_label(client_for, web_ws):
    _, store = web_ws
    (task,) = make_tasks(store, "thumbs", limit=1)
    alice, csrf = client_for("alice")
    alice.get("/api/tasks/next")
    assert answer(alice, csrf, task, {"up": True}).status_code == 201
    r = answer(alice, csrf, task, {"up": False})
    assert r.status_code == 409 and "already answered" in r.json()["detail"]
    with store.session() as s:
        assert [t.up for t in s.scalars(select(S.Thumb))] == [True]


@pytest.mark.parametrize("kind, body, field", [
    ("rating", {"score": 7}, "score"), ("rating", {"score": "great"}, "score"), ("rating", {}, "score"),
    ("rating", {"score": 3, "stars": 2}, "stars"), ("rating", {"score": 3, "duration_ms": -5}, "duration_ms"),
    ("pairwise", {"choice": "both"}, "choice"), ("thumbs", {"up": "maybe"}, "up"),
    ("rank", {"order": [1, 2]}, "order"), ("flaws", {"categories": ["ugly"]}, "categories"),
    ("critique", {"text": "  "}, "text"),
])
def test_bad_answers_get_422_naming_the_field(client_for, web_ws, kind, body, field):
    _, store = web_ws
    make_tasks(store, kind, limit=1, **({"k": 3} if kind == "rank" else {}))
    alice, csrf = client_for("alice")
    task = alice.get("/api/tasks/next").json()["task"]["id"]
    r = answer(alice, csrf, task, body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"], r.json()
    # nothing was stored and the task is still hers to answer
    assert alice.get(f"/api/tasks/{task}").json()["status"] == "assigned"


def test_bad_form_answer_shows_the_task_again(client_for, web_ws):
    _, store = web_ws
    (task,) = make_tasks(store, "rating", limit=1)
    alice, csrf = client_for("alice")
    alice.get("/label")
    r = alice.post(f"/task/{task}", data={"score": "9", "csrf_token": csrf})
    assert r.status_code == 422 and "field &#39;score&#39;" in r.text and 'id="task-form"' in r.text
    assert alice.post(f"/task/{task}", data={"score": "5", "csrf_token": csrf}).status_code == 303


def test_every_kind_is_stored_through_feedback(client_for, web_ws):
    _, store = web_ws
    for kind, extra in [("rank", {"k": 3}), ("flaws", {"categories": ["wrong", "rude"]}), ("critique", {}),
                        ("ab_eval", {"policies": ("policy-a", "policy-b")})]:
        make_tasks(store, kind, limit=1, **extra)
    alice, csrf = client_for("alice")
    task = alice.get("/api/tasks/next").json()["task"]
    while task is not None:
        if task["kind"] == "rank":
            body = {"order": [r["id"] for r in reversed(task["responses"])], "duration_ms": 900}
        elif task["kind"] == "flaws":
            assert task["categories"] == ["wrong", "rude"]
            body = {"categories": ["rude"]}
        elif task["kind"] == "critique":
            body = {"text": "too short", "rewrite": "A longer, better answer."}
        else:
            assert "policy" not in str(task)  # blind: the view never names the policies
            body = {"choice": "b", "reason": "clearer"}
        r = answer(alice, csrf, task["id"], body, next=True)
        assert r.status_code == 201, r.text
        task = r.json()["next"]
    with store.session() as s:
        (rk,) = s.scalars(select(S.Ranking))
        assert rk.duration_ms == 900 and len(rk.response_ids) == 3
        assert [f.categories for f in s.scalars(select(S.FlawReport))] == [["rude"]]
        (cr,) = s.scalars(select(S.Critique))
        rw = s.get(S.Response, cr.rewrite_response_id)
        assert (cr.text, rw.text, rw.source, rw.policy) == ("too short", "A longer, better answer.", "rewrite", "human")
        (cmp,) = s.scalars(select(S.Comparison))
        assert cmp.choice == "b" and cmp.meta["kind"] == "ab_eval" and sorted(cmp.meta["policies"]) == [
            "policy-a", "policy-b"]
        assert all(x.duration_ms is not None for x in (rk, cr, cmp))
