"""The admin dashboard in a real headless Chromium, after two labelers have answered pairwise and
blind A/B tasks: it renders its tables (counts, agreement, leaderboard, A/B win rate) without a
failed request or a console error, and its screenshot is kept (docs/screenshots/admin.png).

Skipped when Chromium or Playwright is missing, except on CI (CI=true), where that fails.
"""

from __future__ import annotations

import re

from websupport import PASSWORD, make_tasks


def test_admin_dashboard_renders(page, client_for, web_ws, screenshot):
    _, store = web_ws
    make_tasks(store, "pairwise", labels_needed=2, per_prompt=2)
    make_tasks(store, "ab_eval", labels_needed=2, policies=("policy-a", "policy-b"))
    for name in ("alice", "bob"):
        c, csrf = client_for(name)
        task = c.get("/api/tasks/next").json()["task"]
        n = 0
        while task:  # alice prefers the first response shown, bob mostly the second
            choice = "a" if name == "alice" or n % 3 == 0 else "b"
            r = c.post(f"/api/tasks/{task['id']}/label?next=true", json={"choice": choice, "duration_ms": 1500 + 100 * n},
                       headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            task, n = r.json()["next"], n + 1
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto("/login")
    page.locator("input[name=name]").fill("root")
    page.locator("input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/admin$"))
    page.wait_for_selector("#task-counts")
    assert page.locator("#task-counts tr").count() == 3  # header, pairwise, ab_eval
    assert "alice" in page.locator("#labeler-counts").inner_text()
    assert page.locator("#raw-agreement").inner_text() != "–"
    assert page.locator("#ab").count() == 1
    assert screenshot(page, "admin").stat().st_size > 5000
    assert not problems, problems
