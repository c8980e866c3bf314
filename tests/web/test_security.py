"""Security: labelers see only their own tasks, admin pages need admin, forged CSRF is refused,
untrusted text is escaped, cookies cannot be forged."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import func, select

from websupport import PASSWORD, XSS, make_tasks

ADMIN_GETS = ["/admin", "/admin/tasks", "/admin/labelers", "/admin/export.jsonl", "/admin/api/stats"]
ADMIN_POSTS = [("/admin/tasks", {"kind": "rating"}), ("/admin/labelers", {"name": "mallory"}),
               ("/admin/labelers/1/invite", {}), ("/admin/labelers/1/active", {"active": "false"})]


def _feedback_rows(store) -> int:
    from tether.data import schema as S

    with store.session() as s:
        return sum(s.scalar(select(func.count()).select_from(m))
                   for m in (S.Comparison, S.Ranking, S.Rating, S.Thumb, S.FlawReport, S.Critique))


def test_labeler_cannot_read_or_answer_another_labelers_task(client_for, web_ws):
    _, store = web_ws
    make_tasks(store, "rating", labels_needed=1, limit=2)
    bob, bob_csrf = client_for("bob")
    alice, alice_csrf = client_for("alice")
    bobs = bob.get("/api/tasks/next").json()["task"]["id"]
    for path in (f"/api/tasks/{bobs}", f"/task/{bobs}", "/api/tasks/99999"):
        r = alice.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "not in your queue" in r.text
    r = alice.post(f"/api/tasks/{bobs}/label", json={"score": 1}, headers={"X-CSRF-Token": alice_csrf})
    assert r.status_code == 404
    r = alice.post(f"/task/{bobs}", data={"score": "1", "csrf_token": alice_csrf})
    assert r.status_code == 404
    # alice's own queue does not include bob's task either (labels_needed=1 and bob holds it)
    alices = alice.get("/api/tasks/next").json()["task"]["id"]
    assert alices != bobs
    assert alice.get("/api/tasks/next").json()["task"]["id"] == alices  # still the one she holds
    assert _feedback_rows(store) == 0
    r = bob.post(f"/api/tasks/{bobs}/label", json={"score": 5}, headers={"X-CSRF-Token": bob_csrf})
    assert r.status_code == 201


def test_admin_routes_refuse_labelers_and_anonymous(client_for):
    alice, csrf = client_for("alice")
    anon, _ = client_for(None)
    root, root_csrf = client_for("root")
    for path in ADMIN_GETS:
        assert alice.get(path).status_code == 403, path
        r = anon.get(path)
        assert r.status_code in (401, 303), path
        assert root.get(path).status_code == 200, path
    for path, data in ADMIN_POSTS:
        assert alice.post(path, data={**data, "csrf_token": csrf}).status_code == 403, path
    assert "mallory" not in root.get("/admin/labelers").text
    assert anon.get("/").headers["location"] == "/login"
    assert anon.get("/api/tasks/next").status_code == 401


def test_forged_csrf_is_refused(client_for, web_ws):
    _, store = web_ws
    make_tasks(store, "pairwise", labels_needed=1, limit=1)
    alice, csrf = client_for("alice")
    task = alice.get("/api/tasks/next").json()["task"]["id"]
    forged = "x" * len(csrf)
    assert alice.post(f"/api/tasks/{task}/label", json={"choice": "a"}).status_code == 403
    assert alice.post(f"/api/tasks/{task}/label", json={"choice": "a"},
                      headers={"X-CSRF-Token": forged}).status_code == 403
    r = alice.post(f"/task/{task}", data={"choice": "a", "csrf_token": forged})
    assert r.status_code == 403 and "CSRF" in r.text
    assert alice.post(f"/task/{task}", data={"choice": "a"}).status_code == 403
    assert alice.post("/logout", data={"csrf_token": forged}).status_code == 403
    assert _feedback_rows(store) == 0
    # an attacker's page cannot borrow another session's token: tokens are per session
    bob, bob_csrf = client_for("bob")
    assert bob_csrf != csrf
    assert alice.post(f"/task/{task}", data={"choice": "a", "csrf_token": bob_csrf}).status_code == 403
    root, root_csrf = client_for("root")
    assert root.post("/admin/labelers", data={"name": "eve", "csrf_token": forged}).status_code == 403
    assert "eve" not in root.get("/admin/labelers").text
    # the right token works
    assert alice.post(f"/task/{task}", data={"choice": "a", "csrf_token": csrf}).status_code == 303
    assert _feedback_rows(store) == 1


def test_login_needs_csrf_and_json_login_needs_json(client_for):
    anon, _ = client_for(None)
    anon.get("/login")
    r = anon.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403
    r = anon.post("/api/login", data={"name": "alice", "password": PASSWORD})
    assert r.status_code == 415
    r = anon.post("/api/login", json={"name": "alice", "password": "wrong password"})
    assert r.status_code == 401
    r = anon.post("/api/login", json={"name": "alice"})
    assert r.status_code == 422 and "password" in r.json()["detail"]


def test_untrusted_text_is_escaped_in_html(client_for, web_ws):
    from tether.data import schema as S

    _, store = web_ws
    with store.session() as s:
        xss = s.scalar(select(S.Response).where(S.Response.text == XSS))
        s.add(S.Task(kind="pairwise", prompt_id=xss.prompt_id,
                     response_ids=[xss.id, xss.id + 1], labels_needed=1))
    alice, _ = client_for("alice")
    r = alice.get("/label", follow_redirects=True)
    assert r.status_code == 200
    assert "<script>window" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x onerror=" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    # names typed by admins are escaped too
    root, root_csrf = client_for("root")
    r = root.post("/admin/labelers", data={"name": "<b onmouseover=x>", "csrf_token": root_csrf})
    assert r.status_code == 200 and "<b onmouseover" not in r.text and "&lt;b onmouseover=x&gt;" in r.text


def test_tampered_or_foreign_session_cookie_is_anonymous(app, client_for):
    from tether.web.app import SESSION_COOKIE

    alice, _ = client_for("alice")
    cookie = alice.cookies.get(SESSION_COOKIE)
    payload, rest = cookie.split(".", 1)
    with TestClient(app, follow_redirects=False) as c:
        c.cookies.set(SESSION_COOKIE, payload[:-2] + ("AA" if not payload.endswith("AA") else "BB") + "." + rest)
        assert c.get("/api/tasks/next").status_code == 401
    forged = TimestampSigner("not the workspace secret").sign(
        base64.b64encode(json.dumps({"uid": 1, "role": "admin", "csrf": "x"}).encode())).decode()
    with TestClient(app, follow_redirects=False) as c:
        c.cookies.set(SESSION_COOKIE, forged)
        assert c.get("/admin/api/stats").status_code == 401


def test_inactive_labeler_is_logged_out(client_for, web_ws):
    from tether.data import schema as S

    _, store = web_ws
    alice, _ = client_for("alice")
    assert alice.get("/api/progress").status_code == 200
    with store.session() as s:
        s.scalar(select(S.Labeler).where(S.Labeler.name == "alice")).active = False
    assert alice.get("/api/progress").status_code == 401
    anon, _ = client_for(None)
    assert anon.post("/api/login", json={"name": "alice", "password": PASSWORD}).status_code == 401


def test_secret_file_is_private(web_ws, app):
    ws, _ = web_ws
    path = ws.root / "web_secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text()) >= 32
