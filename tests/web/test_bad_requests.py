"""Malformed and oversized requests get a 4xx whose message names the field (or header), never a
500, and store nothing: invalid JSON, wrong types, missing and unknown fields, text over the limit,
a body over 1 MiB (declared or streamed), the wrong content type, ids too big for the database,
and forms without their CSRF token."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from websupport import make_tasks

KINDS = {"pairwise": {}, "rank": {"k": 3}, "rating": {}, "thumbs": {}, "flaws": {}, "critique": {}}
BIG = "x" * 20_001  # one over forms.MAX_TEXT

# (task kind, JSON body, expected status, text the message must contain)
JSON_CASES = [
    ("pairwise", {"choice": 5}, 422, "choice"),
    ("pairwise", {}, 422, "choice"),
    ("pairwise", {"choice": "a", "score": 3}, 422, "'score': unknown field"),
    ("pairwise", {"choice": "a", "reason": BIG}, 422, "reason"),
    ("pairwise", {"choice": "a", "duration_ms": "soon"}, 422, "duration_ms"),
    ("pairwise", {"choice": "a", "duration_ms": 10**30}, 422, "duration_ms"),
    ("rank", {"order": "1,x"}, 422, "order"),
    ("rank", {"order": [[1], [2]]}, 422, "order"),
    ("rank", {"order": list(range(5000))}, 422, "order"),
    ("rank", {"order": [10**30, 1]}, 422, "order"),
    ("rating", {"score": "five"}, 422, "score"),
    ("rating", {"score": 3.5}, 422, "score"),
    ("rating", {"score": 9}, 422, "score"),
    ("thumbs", {"up": "maybe"}, 422, "'up'"),
    ("flaws", {"categories": "cut_off"}, 422, "categories"),
    ("flaws", {"categories": [{}]}, 422, "categories"),
    ("flaws", {"categories": ["x" * 100_000]}, 422, "categories"),
    ("flaws", {"categories": ["nope"]}, 422, "categories"),
    ("critique", {"text": BIG}, 422, "'text'"),
    ("critique", {"rewrite": BIG}, 422, "'rewrite'"),
    ("critique", {"text": 5}, 422, "'text'"),
    ("critique", {"text": "nul \x00 inside"}, 422, "'text'"),
    ("critique", {}, 422, "text"),
]


def _feedback_rows(store) -> int:
    from tether.data import schema as S

    with store.session() as s:
        return sum(s.scalar(select(func.count()).select_from(m))
                   for m in (S.Comparison, S.Ranking, S.Rating, S.Thumb, S.FlawReport, S.Critique))


@pytest.fixture
def held(client_for, web_ws):
    """held(kind) -> (client, csrf, task id) of a task of that kind alice holds."""
    _, store = web_ws
    alice, csrf = client_for("alice")

    def get(kind: str):
        make_tasks(store, kind, limit=1, **KINDS[kind])
        task = alice.get("/api/tasks/next").json()["task"]
        assert task["kind"] == kind
        return alice, csrf, task["id"]

    return get


def _is_4xx(r, status: int, needle: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert needle in r.text, r.text[:300]


@pytest.mark.parametrize("kind,body,status,needle", JSON_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(JSON_CASES)])
def test_bad_json_labels_name_the_field(held, web_ws, kind, body, status, needle):
    alice, csrf, task = held(kind)
    r = alice.post(f"/api/tasks/{task}/label", json=body, headers={"X-CSRF-Token": csrf})
    _is_4xx(r, status, needle)
    detail = r.json()
    assert detail["field"] and detail["field"].split(".")[0] in needle + detail["detail"]
    assert len(r.text) < 2000  # the offending input is not echoed back in full
    assert _feedback_rows(web_ws[1]) == 0


def test_malformed_json_bodies(held, web_ws):
    alice, csrf, task = held("pairwise")
    url, h = f"/api/tasks/{task}/label", {"X-CSRF-Token": csrf, "content-type": "application/json"}
    for raw, status, needle in [(b"{not json", 400, "not valid JSON"), (b'{"choice": "\xff"}', 400, "not valid JSON"),
                                (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
                                (b"[1, 2]", 422, "got an array"), (b"null", 422, "got null"),
                                (b'"a"', 422, "got a string"), (b"", 400, "not valid JSON")]:
        r = alice.post(url, content=raw, headers=h)
        _is_4xx(r, status, needle)
        assert r.json()["field"] == "body"
    # the wrong content type: 415 naming the header, whatever the body
    for ctype, raw in [("application/x-www-form-urlencoded", b"choice=a"), ("text/plain", b'{"choice": "a"}'),
                       (None, b'{"choice": "a"}')]:
        headers = {"X-CSRF-Token": csrf, **({"content-type": ctype} if ctype else {})}
        r = alice.post(url, content=raw, headers=headers)
        _is_4xx(r, 415, "application/json")
        assert r.json()["field"] == "content-type"
    ok = alice.post(url, content=b'{"choice": "a"}', headers={**h, "content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 201
    assert _feedback_rows(web_ws[1]) == 1


def test_oversized_bodies_get_413(held, web_ws):
    alice, csrf, task = held("critique")
    huge = "x" * (1024 * 1024 + 1)
    r = alice.post(f"/api/tasks/{task}/label", json={"text": huge}, headers={"X-CSRF-Token": csrf})
    _is_4xx(r, 413, "too large")
    assert r.json()["field"] == "body"
    r = alice.post(f"/task/{task}", data={"text": huge, "csrf_token": csrf})
    _is_4xx(r, 413, "too large")

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(40):
            yield b"x" * 65536

    for url, ctype in [(f"/api/tasks/{task}/label", "application/json"),
                       (f"/task/{task}", "application/x-www-form-urlencoded"), ("/api/login", "application/json")]:
        r = alice.post(url, content=chunks(), headers={"X-CSRF-Token": csrf, "content-type": ctype})
        _is_4xx(r, 413, "too large")
    # just under the limits still works
    r = alice.post(f"/api/tasks/{task}/label", json={"text": "y" * 20_000, "rewrite": "z" * 20_000},
                   headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    assert _feedback_rows(web_ws[1]) == 1


def test_bad_forms_show_the_problem(held, client_for, web_ws):
    alice, csrf, task = held("critique")
    r = alice.post(f"/task/{task}", data={"text": BIG, "csrf_token": csrf})
    _is_4xx(r, 422, "text")
    assert "at most 20000 characters" in r.text
    for data in ({"text": "fine"}, {"text": "fine", "csrf_token": ""}, {}):  # no CSRF token
        _is_4xx(alice.post(f"/task/{task}", data=data), 403, "CSRF")
    _is_4xx(alice.post(f"/task/{task}", json={"text": "fine", "csrf_token": csrf}), 403, "CSRF")
    r = alice.post(f"/task/{task}", content=b"garbage", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400
    assert _feedback_rows(web_ws[1]) == 0
    make_tasks(web_ws[1], "rating", limit=1)
    bob, bob_csrf = client_for("bob")
    rating = bob.get("/api/tasks/next").json()["task"]["id"]
    _is_4xx(bob.post(f"/task/{rating}", data={"score": "x", "csrf_token": bob_csrf}), 422, "score")


def test_ids_and_numbers_out_of_range(client_for, held):
    alice, csrf, task = held("pairwise")
    big = 10**30
    r = alice.post(f"/api/tasks/{big}/label", json={"choice": "a"}, headers={"X-CSRF-Token": csrf})
    _is_4xx(r, 422, "task_id")
    assert r.json()["field"] == "task_id"
    _is_4xx(alice.get(f"/api/tasks/{big}"), 422, "task_id")
    _is_4xx(alice.get(f"/task/{big}"), 422, "task_id")
    _is_4xx(alice.get(f"/clip/{big}/0.gif"), 422, "task_id")
    _is_4xx(alice.get(f"/api/tasks/{task}?next=maybe"), 200, "")  # an unused query parameter is ignored
    r = alice.post(f"/api/tasks/{task}/label?next=maybe", json={"choice": "a"}, headers={"X-CSRF-Token": csrf})
    _is_4xx(r, 422, "next")
    root, rc = client_for("root")
    for path in (f"/admin/labelers/{big}/active", f"/admin/labelers/{big}/invite"):
        _is_4xx(root.post(path, data={"active": "true", "csrf_token": rc}), 422, "labeler_id")
    _is_4xx(root.get(f"/admin/export.jsonl?round={big}"), 422, "round")
    cases = [({"kind": "rating", "priority": "nan"}, "priority"), ({"kind": "rating", "priority": "inf"}, "priority"),
             ({"kind": "rating", "round": str(big)}, "round"), ({"kind": "rating", "limit": str(big)}, "limit"),
             ({"kind": "rating", "labels_needed": "many"}, "labels_needed"), ({}, "kind"),
             ({"kind": "nope"}, "kind")]
    for data, needle in cases:
        _is_4xx(root.post("/admin/tasks", data={**data, "csrf_token": rc}), 422, needle)


def test_bad_logins_and_admin_forms(client_for):
    anon, _ = client_for(None)
    for raw, needle in [(b"{x", "body"), (b"[1]", "body"), (json.dumps({"name": "a" * 300, "password": "x"}).encode(),
                                                             "name"),
                        (json.dumps({"name": "a\x00b", "password": "x"}).encode(), "name")]:
        _is_4xx(anon.post("/api/login", content=raw, headers={"content-type": "application/json"}), 422, needle)
    _is_4xx(anon.post("/api/login", data={"name": "alice", "password": "x"}), 415, "application/json")
    anon.get("/login")
    _is_4xx(anon.post("/login", data={"name": "alice", "password": "x"}), 403, "CSRF")
    root, rc = client_for("root")
    for data, needle in [({"name": "z" * 300}, "name"), ({"name": "a\x00b"}, "name"), ({"name": ""}, "name"),
                         ({"name": "zed", "role": "god"}, "role"), ({"name": "yy", "password": "x"}, "password")]:
        _is_4xx(root.post("/admin/labelers", data={**data, "csrf_token": rc}), 422, needle)
    _is_4xx(root.post("/admin/labelers/2/active", data={"active": "maybe", "csrf_token": rc}), 422, "active")
    _is_4xx(root.post("/admin/labelers", data={"name": "eve"}), 403, "CSRF")
