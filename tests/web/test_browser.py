"""Browser tests in a real headless Chromium: log in as a labeler, complete every task type with
the mouse and with the keyboard, then check that the database holds exactly those labels.

Skipped when Chromium or Playwright is missing, except on CI (CI=true), where that fails.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from websupport import PASSWORD, XSS, make_tasks

def login(page, name: str = "alice", keyboard: bool = False) -> None:
    page.goto("/login")
    if keyboard:
        page.locator("input[name=name]").focus()
        page.keyboard.type(name)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
    else:
        page.locator("input[name=name]").click()
        page.locator("input[name=name]").fill(name)
        page.locator("input[name=password]").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def current_task(page) -> int:
    page.wait_for_selector("#task-form")
    return int(page.locator("#task-form").get_attribute("action").rsplit("/", 1)[1])


def shown_ids(page) -> list[int]:
    return [int(x) for x in page.locator(".rank-item").evaluate_all("els => els.map(e => e.dataset.id)")]


# --- one scenario per task kind: (how, action, expected label) per task ----------------------------
def pairwise_steps(page, n):
    if n == 0:  # mouse: a reason, then click B
        page.locator("textarea[name=reason]").click()
        page.locator("textarea[name=reason]").fill("B names a colour")
        page.get_by_role("button", name=re.compile("B is better")).click()
        return {"choice": "b", "reason": "B names a colour"}
    if n == 1:  # keyboard: r focuses the reason, Esc leaves it, a answers
        page.keyboard.press("r")
        page.keyboard.type("typed reason")
        page.keyboard.press("Escape")
        page.keyboard.press("a")
        return {"choice": "a", "reason": "typed reason"}
    if n == 2:
        page.keyboard.press("t")
        return {"choice": "tie", "reason": None}
    page.get_by_role("button", name=re.compile("Can't tell")).click()
    return {"choice": "cant_tell", "reason": None}


def rank_steps(page, n):
    ids = shown_ids(page)
    if n == 0:  # mouse: drag the third onto the first, then the (now) second down one
        page.locator(".rank-item").nth(2).drag_to(page.locator(".rank-item").nth(0))
        assert shown_ids(page) == [ids[2], ids[0], ids[1]]
        page.locator(f'.rank-item[data-id="{ids[0]}"] .down').click()
        page.get_by_role("button", name=re.compile("Submit ranking")).click()
        return {"order": [ids[2], ids[1], ids[0]]}
    # keyboard: 2 then up, 3 then up, Enter
    for key in ("2", "ArrowUp", "3", "ArrowUp", "Enter"):
        page.keyboard.press(key)
    return {"order": [ids[1], ids[2], ids[0]]}


def rating_steps(page, n):
    if n == 0:
        page.get_by_role("button", name=re.compile("^4")).click()
        return {"score": 4}
    page.keyboard.press("2")
    return {"score": 2}


def thumbs_steps(page, n):
    if n == 0:
        page.get_by_role("button", name="Thumbs down").click()
        return {"up": False}
    page.keyboard.press("u")
    return {"up": True}


def flaws_steps(page, n):
    if n == 0:
        page.get_by_label("repetitive").check()
        page.get_by_label("too long").check()
        page.get_by_role("button", name=re.compile("Submit flaws")).click()
        return {"categories": ["repetitive", "too_long"]}
    if n == 1:
        for key in ("1", "3", "Enter"):
            page.keyboard.press(key)
        return {"categories": ["cut_off", "too_long"]}
    page.keyboard.press("1")
    page.keyboard.press("n")  # "No flaws" clears the ticked box
    return {"categories": []}


def critique_steps(page, n):
    original = page.locator('[data-testid="response-text"]').inner_text()
    if n == 0:
        page.locator("textarea[name=text]").click()
        page.locator("textarea[name=text]").fill("Too vague.")
        page.get_by_role("button", name="Start the rewrite from the response").click()
        page.locator("#rewrite").press("End")
        page.locator("#rewrite").press_sequentially(" Edited.")
        page.get_by_role("button", name=re.compile("^Submit")).click()
        return {"text": "Too vague.", "rewrite": original + " Edited."}
    page.keyboard.press("e")
    page.keyboard.type("keyboard critique")
    page.keyboard.press("Escape")
    page.keyboard.press("w")
    page.keyboard.type("A better answer.")
    page.keyboard.press("Control+Enter")
    return {"text": "keyboard critique", "rewrite": "A better answer."}


SCENARIOS = {"pairwise": (pairwise_steps, 4, {}), "ab_eval": (pairwise_steps, 2, {"policies": ("policy-a", "policy-b")}),
             "rank": (rank_steps, 2, {"k": 3}), "rating": (rating_steps, 2, {}), "thumbs": (thumbs_steps, 2, {}),
             "flaws": (flaws_steps, 3, {}), "critique": (critique_steps, 2, {})}


TABLE = {"pairwise": "comparisons", "ab_eval": "comparisons", "rank": "rankings", "rating": "ratings",
         "thumbs": "thumbs", "flaws": "flaw_reports", "critique": "critiques"}


def stored_labels(store, kind: str) -> dict[int, dict]:
    """task id -> the label stored for it, in the scenario's terms; also checks no other feedback."""
    from tether.data import schema as S

    with store.session() as s:
        counts = {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                  for m in (S.Comparison, S.Ranking, S.Rating, S.Thumb, S.FlawReport, S.Critique)}
        out = {}
        if kind in ("pairwise", "ab_eval"):
            rows = s.scalars(select(S.Comparison))
            out = {c.task_id: ({"choice": c.choice, "reason": c.reason}, c) for c in rows}
        elif kind == "rank":
            out = {r.task_id: ({"order": r.response_ids}, r) for r in s.scalars(select(S.Ranking))}
        elif kind == "rating":
            out = {r.task_id: ({"score": r.score}, r) for r in s.scalars(select(S.Rating))}
        elif kind == "thumbs":
            out = {r.task_id: ({"up": r.up}, r) for r in s.scalars(select(S.Thumb))}
        elif kind == "flaws":
            out = {r.task_id: ({"categories": list(r.categories)}, r) for r in s.scalars(select(S.FlawReport))}
        elif kind == "critique":
            for c in s.scalars(select(S.Critique)):
                rw = s.get(S.Response, c.rewrite_response_id) if c.rewrite_response_id else None
                assert rw is not None and rw.source == "rewrite" and rw.labeler_id is not None
                out[c.task_id] = ({"text": c.text, "rewrite": rw.text}, c)
    for task_id, (_, row) in out.items():
        assert row.duration_ms is not None and row.duration_ms > 0, f"task {task_id}: no time recorded"
    others = {k: v for k, v in counts.items() if v and k != TABLE[kind]}
    assert not others, f"unexpected feedback rows: {others}"
    return {t: label for t, (label, _) in out.items()}


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_every_task_kind_with_mouse_and_keyboard(kind, page, web_ws, screenshot):
    _, store = web_ws
    steps, n_tasks, extra = SCENARIOS[kind]
    made = make_tasks(store, kind, labels_needed=1, limit=n_tasks, **extra)
    assert len(made) == n_tasks
    login(page, keyboard=kind in ("rating", "flaws"))
    page.keyboard.press("Enter")  # "Start labeling"
    expected = {}
    for n in range(n_tasks):
        task_id = current_task(page)
        if kind == "ab_eval":
            assert "policy-a" not in page.content() and "policy-b" not in page.content()  # blind
        if n == 0:  # the task page as a labeler first sees it (docs/screenshots/<kind>.png)
            assert screenshot(page, kind).stat().st_size > 5000
        expected[task_id] = steps(page, n)
        page.wait_for_url(lambda url, t=task_id: not url.endswith(f"/task/{t}"))
        page.wait_for_load_state()
    page.wait_for_selector("#queue-empty")
    assert page.locator("#progress").inner_text().startswith(f"{n_tasks} done")
    assert stored_labels(store, kind) == expected


def test_untrusted_response_renders_inert(page, browser, live_server, web_ws):
    """<script> and <img onerror> in a model output show as text, even with the CSP bypassed."""
    from tether.data import schema as S

    _, store = web_ws
    with store.session() as s:
        xss = s.scalar(select(S.Response).where(S.Response.text == XSS))
        s.add(S.Task(kind="rating", prompt_id=xss.prompt_id, response_ids=[xss.id], labels_needed=1))
    ctx = browser.new_context(base_url=live_server, bypass_csp=True)
    p = ctx.new_page()
    dialogs = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        login(p)
        p.goto("/label")
        p.wait_for_selector('[data-testid="response-text"]')
        p.wait_for_timeout(300)  # time for an <img onerror> to fire, were there one
        assert p.locator('[data-testid="response-text"]').inner_text() == XSS
        assert p.evaluate("window.__pwned") is None
        assert p.locator("main img").count() == 0
        assert p.locator("main script").count() == 0
        assert not dialogs
        assert "&lt;script&gt;" in p.content()
    finally:
        ctx.close()


def test_phone_layout_and_tap(browser, live_server, web_ws):
    """On a phone-sized screen the task fits the width and a tap answers it."""
    from tether.data import schema as S

    _, store = web_ws
    make_tasks(store, "pairwise", limit=1)
    ctx = browser.new_context(base_url=live_server, viewport={"width": 390, "height": 844}, has_touch=True,
                              is_mobile=True)
    p = ctx.new_page()
    try:
        login(p)
        p.goto("/label")
        current_task(p)
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        p.get_by_role("button", name=re.compile("A is better")).tap()
        p.wait_for_selector("#queue-empty")
    finally:
        ctx.close()
    with store.session() as s:
        assert [c.choice for c in s.scalars(select(S.Comparison))] == ["a"]
