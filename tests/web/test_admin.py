"""Admin pages and commands: accounts and invite links, tasks from samples, the dashboard's
figures (counts, agreement, flags, leaderboard, A/B win rate), the TRL export, `tether labelers`
and `tether tasks`."""

from __future__ import annotations

import json
import re
from collections import Counter

from sqlalchemy import select
from typer.testing import CliRunner

from tether.data import schema as S
from websupport import PASSWORD, make_tasks


def test_invite_link_sets_a_password_once(client_for):
    root, csrf = client_for("root")
    r = root.post("/admin/labelers", data={"name": "dana", "role": "labeler", "csrf_token": csrf})
    assert r.status_code == 200
    link = re.search(r'id="invite-link">([^<]+)<', r.text).group(1)
    path = link.split("://", 1)[1].split("/", 1)[1]
    guest, _ = client_for(None)
    page = guest.get("/" + path)
    assert page.status_code == 200 and "Welcome, dana" in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = guest.post("/" + path, data={"password": "short", "password2": "short", "csrf_token": token})
    assert r.status_code == 422 and "at least 8" in r.text
    r = guest.post("/" + path, data={"password": "a good password", "password2": "a good password", "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert guest.get("/api/progress").status_code == 200  # logged in
    assert guest.get("/" + path).status_code == 404  # used up
    other, _ = client_for(None)
    assert other.post("/api/login", json={"name": "dana", "password": "a good password"}).status_code == 200


def test_make_tasks_in_the_admin_page(client_for, web_ws):
    _, store = web_ws
    root, csrf = client_for("root")
    r = root.post("/admin/tasks", data={"kind": "rank", "labels_needed": "3", "k": "3", "csrf_token": csrf})
    assert r.status_code == 200 and "Made 6 rank tasks, 3 labels each" in r.text
    r = root.post("/admin/tasks", data={"kind": "rank", "labels_needed": "3", "k": "3", "csrf_token": csrf})
    assert "Made 0 rank tasks" in r.text  # the same items are not made twice
    r = root.post("/admin/tasks", data={"kind": "ab_eval", "policy_a": "policy-a", "policy_b": "policy-a",
                                        "csrf_token": csrf})
    assert r.status_code == 422 and "two different policies" in r.text
    r = root.post("/admin/tasks", data={"kind": "ab_eval", "policy_a": "policy-a", "policy_b": "policy-b",
                                        "round": "", "limit": "4", "csrf_token": csrf})
    assert "Made 4 ab_eval tasks" in r.text
    r = root.post("/admin/tasks", data={"kind": "rating", "round": "one", "csrf_token": csrf})
    assert r.status_code == 422 and "round" in r.text
    with store.session() as s:
        tasks = list(s.scalars(select(S.Task)))
    assert Counter(t.kind for t in tasks) == {"rank": 6, "ab_eval": 4}
    for t in tasks:
        if t.kind == "ab_eval":
            assert sorted(t.options["policies"]) == ["policy-a", "policy-b"]


def test_dashboard_figures_and_export(client_for, web_ws):
    _, store = web_ws
    make_tasks(store, "pairwise", labels_needed=2, per_prompt=3)
    make_tasks(store, "ab_eval", labels_needed=2, policies=("policy-a", "policy-b"))
    clients = {n: client_for(n) for n in ("alice", "bob")}
    for name, (c, csrf) in clients.items():
        task = c.get("/api/tasks/next").json()["task"]
        while task:
            # both pick the response shown first, except bob on A/B tasks, who picks B
            choice = "b" if name == "bob" and task["kind"] == "ab_eval" else "a"
            r = c.post(f"/api/tasks/{task['id']}/label?next=true", json={"choice": choice, "duration_ms": 2000},
                       headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201
            task = r.json()["next"]
    root, _ = client_for("root")
    stats = root.get("/admin/api/stats").json()
    kinds = {t["kind"]: t for t in stats["tasks"]}
    assert kinds["pairwise"]["done"] == 18 and kinds["pairwise"]["labels"] == 36
    assert kinds["ab_eval"]["done"] == 6 and kinds["ab_eval"]["labels"] == 12
    labs = {l["name"]: l for l in stats["labelers"]}
    assert labs["alice"]["counts"] == {"comparison": 24} and labs["alice"]["median_s"] == 2.0
    agreement = stats["agreement"]
    with store.session() as s:  # items are response pairs; an A/B task may pair the same two as a pairwise one
        pairs = {frozenset(t.response_ids) for t in s.scalars(select(S.Task))}
    assert agreement["multi"] == len(pairs) and 0.0 < agreement["raw"] < 1.0  # they disagree on A/B items
    assert {r["name"] for r in stats["leaderboard"]} >= {"policy-a (round 0)", "policy-b (round 1)"}
    (ab,) = stats["ab"]
    assert ab["first"] + ab["second"] == 12 and ab["win_rate_a"] == ab["first"] / 12
    html = root.get("/admin").text
    assert "Krippendorff" in html and "policy-a (round 0)" in html and 'id="ab"' in html
    r = root.get("/admin/export.jsonl")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 48 and set(rows[0]) == {"prompt", "chosen", "rejected"}


def test_labelers_and_tasks_commands(web_ws):
    import typer

    from tether.commands.serve import labelers_app, tasks_app

    ws, store = web_ws
    app = typer.Typer()
    app.add_typer(labelers_app, name="labelers")
    app.add_typer(tasks_app, name="tasks")
    runner = CliRunner()
    r = runner.invoke(app, ["labelers", "add", "erin", "--url", "https://label.example", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert re.search(r"https://label\.example/invite/\S+", r.output)
    r = runner.invoke(app, ["labelers", "add", "frank", "--admin", "--password", "-w", str(ws.root)],
                      input="frank's password\nfrank's password\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["labelers", "add", "frank", "-w", str(ws.root)])
    assert r.exit_code == 1 and "already has a login" in r.output
    r = runner.invoke(app, ["labelers", "list", "-w", str(ws.root)])
    assert "erin" in r.output and "invited" in r.output
    r = runner.invoke(app, ["tasks", "create", "--kind", "flaws", "--overlap", "2", "--categories", "wrong,rude",
                            "-w", str(ws.root)])
    assert r.exit_code == 0 and "6 flaws tasks made, 2 label(s) each" in r.output
    r = runner.invoke(app, ["tasks", "create", "--kind", "nonsense", "-w", str(ws.root)])
    assert r.exit_code == 1 and "kind: expected one of" in r.output
    r = runner.invoke(app, ["labelers", "deactivate", "erin", "-w", str(ws.root)])
    assert r.exit_code == 0
    with store.session() as s:
        frank = s.scalar(select(S.Labeler).where(S.Labeler.name == "frank"))
        assert frank.role == "admin" and frank.password_hash.startswith("scrypt$")
        assert not s.scalar(select(S.Labeler).where(S.Labeler.name == "erin")).active
        assert {tuple(t.options["categories"]) for t in s.scalars(select(S.Task))} == {("wrong", "rude")}


def test_password_hashing():
    from tether.web.security import hash_password, verify_password

    h = hash_password(PASSWORD)
    assert h.startswith("scrypt$") and PASSWORD not in h
    assert verify_password(PASSWORD, h) and not verify_password(PASSWORD + "!", h)
    assert not verify_password(PASSWORD, None) and not verify_password(PASSWORD, "garbage")
    assert hash_password(PASSWORD) != h  # salted
