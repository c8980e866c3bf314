"""Clip comparisons in the web app (`tether control --labeler web`): a labeler sees two looping GIFs,
Left and Right, drawn from the run's clips.npz, answers with the mouse and the keyboard, and the
database holds exactly those comparisons. The GIF route serves only a labeler holding the task, or
an admin.

The browser test is skipped when Chromium or Playwright is missing, except on CI (CI=true).
"""

from __future__ import annotations

import re

from sqlalchemy import select

from clipsupport import make_clip_tasks
from websupport import PASSWORD


def login(page, name: str = "alice") -> None:
    page.goto("/login")
    page.locator("input[name=name]").fill(name)
    page.locator("input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def current_task(page) -> int:
    page.wait_for_selector("#task-form")
    return int(page.locator("#task-form").get_attribute("action").rsplit("/", 1)[1])


def loaded_images(page) -> list[dict]:
    """The clip images once the browser has finished loading them: src and decoded size."""
    page.wait_for_function("() => [...document.querySelectorAll('img[data-testid=clip]')].every(i => i.complete)")
    return page.locator("img[data-testid=clip]").evaluate_all(
        "els => els.map(e => ({src: e.getAttribute('src'), w: e.naturalWidth, h: e.naturalHeight}))")


def test_labeler_compares_clips_with_mouse_and_keyboard(page, web_ws, screenshot):
    from tether.data import schema as S

    ws, store = web_ws
    made = make_clip_tasks(ws.root, store, n_pairs=4)
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    login(page)
    page.goto("/label")
    # (how, expected choice) per task, in the order they come: mouse, keys, keys, mouse
    steps = [("click", "Left is better", "a"), ("key", "b", "b"), ("key", "t", "tie"),
             ("click", "Can't tell", "cant_tell")]
    expected = {}
    for how, what, choice in steps:
        task_id = current_task(page)
        assert page.locator(".clips h3").all_inner_texts() == ["Left", "Right"]
        assert page.locator("#task-form .text").count() == 0  # no text responses on a clip task
        images = loaded_images(page)
        assert [i["src"] for i in images] == [f"/clip/{task_id}/0.gif", f"/clip/{task_id}/1.gif"]
        assert all(i["w"] == 256 and i["h"] > 0 for i in images), images  # decoded: the GIFs really load
        if not expected:  # the first clip task, its GIFs loaded (docs/screenshots/clips.png)
            assert screenshot(page, "clips").stat().st_size > 5000
        if how == "click":
            page.get_by_role("button", name=re.compile(re.escape(what))).click()
        else:
            page.keyboard.press(what)
        expected[task_id] = choice
        page.wait_for_url(lambda url, t=task_id: not url.endswith(f"/task/{t}"))
        page.wait_for_load_state()
    page.wait_for_selector("#queue-empty")
    assert sorted(expected) == sorted(made)
    assert not problems, problems  # no CSP violation, no failed request
    with store.session() as s:
        tasks = {t.id: t for t in s.scalars(select(S.Task))}
        rows = s.scalars(select(S.Comparison)).all()
        assert {c.task_id: c.choice for c in rows} == expected and len(rows) == len(expected)
        for c in rows:
            assert [c.response_a_id, c.response_b_id] == tasks[c.task_id].response_ids  # a = Left
            assert s.get(S.Labeler, c.labeler_id).name == "alice" and c.duration_ms > 0
            assert s.get(S.Response, c.response_a_id).source == "clip"
        assert {t.status for t in tasks.values()} == {"done"}
    # drawn once, cached beside the clips file
    assert len(list((ws.root / "runs" / "control-1" / "gifs").glob("clip-*.gif"))) == 8


def test_gif_route_serves_only_the_labeler_holding_the_task(client_for, web_ws):
    ws, store = web_ws
    (task,) = make_clip_tasks(ws.root, store, n_pairs=1)
    anon, _ = client_for(None)
    r = anon.get(f"/clip/{task}/0.gif")
    assert r.status_code == 401 and "log in" in r.text and r.headers["content-type"].startswith("text/plain")
    bob, _ = client_for("bob")
    assert bob.get(f"/clip/{task}/0.gif").status_code == 404  # exists, but not bob's
    assert bob.get("/clip/999/0.gif").status_code == 404  # no such task: the same answer
    alice, _ = client_for("alice")
    assert alice.get(f"/clip/{task}/0.gif").status_code == 404  # not claimed yet
    assert alice.get("/api/tasks/next").json()["task"]["id"] == task
    assert bob.get("/api/tasks/next").json()["task"] is None  # its one slot is alice's
    r = alice.get(f"/clip/{task}/1.gif")
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and r.content[:6] == b"GIF89a"
    assert "private" in r.headers["cache-control"]
    assert alice.get(f"/clip/{task}/2.gif").status_code == 404  # slots 0 and 1 only
    assert bob.get(f"/clip/{task}/1.gif").status_code == 404
    root, _ = client_for("root")  # an admin may look at any clip
    assert root.get(f"/clip/{task}/0.gif").content[:6] == b"GIF89a"
    # a pairwise task over text responses has no clips, even for an admin
    from websupport import make_tasks

    (text_task,) = make_tasks(store, "pairwise", limit=1)
    assert root.get(f"/clip/{text_task}/0.gif").status_code == 404
    # the clip file gone: 404 naming it (the path comes from the database row)
    (ws.root / "runs" / "control-1" / "clips.npz").unlink()
    for p in (ws.root / "runs" / "control-1" / "gifs").glob("*.gif"):
        p.unlink()
    r = alice.get(f"/clip/{task}/0.gif")
    assert r.status_code == 404 and "runs/control-1/clips.npz is missing" in r.text
