"""The labeler's pages and JSON API: their progress, the next task, a task, and the answer.

A labeler only ever sees tasks assigned to them: any other task id answers 404, whether it exists
or not. HTML forms and the JSON API share `queue.submit_label` and the pydantic checks behind it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tether.data import schema as S
from tether.data.feedback import FLAW_CATEGORIES
from tether.web.app import check_csrf, current_user, db, render
from tether.web.forms import LabelError, form_to_dict
from tether.web.limits import DbId, json_body
from tether.web.queue import assigned_task, claim_next, progress, submit_label

router = APIRouter()

INSTRUCTIONS = {
    "pairwise": "Which response is better? Pick A or B, a tie, or can't tell.",
    "ab_eval": "Which response is better? (The two come from different systems; you are not told which.)",
    "rank": "Order the responses from best (top) to worst: drag them, or use the arrows.",
    "rating": "How good is this response, from 1 (bad) to 5 (excellent)?",
    "thumbs": "Is this response good (thumbs up) or not (thumbs down)?",
    "flaws": "Tick every flaw this response has, or choose 'No flaws'.",
    "critique": "Say what is wrong with the response, and/or rewrite it as it should have been.",
    "clips": "Which clip shows the goal better? Watch both, then pick Left or Right, Equal, or Can't tell.",
}
SIDES = ("Left", "Right")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


_res, _pro = S.Response.__table__, S.Prompt.__table__
VIEW = (select(_res.c.id, _res.c.text, _res.c.finished, _pro.c.text, _pro.c.messages, _res.c.source, _res.c.sampling)
        .join(_pro, _pro.c.id == _res.c.prompt_id).where(_res.c.id.in_(bindparam("ids", expanding=True))))


def task_view(s: Session, task) -> dict[str, Any]:
    """What a labeler may see of a task (a `schema.Task` or a `queue.TASK_COLUMNS` row): the prompt
    and the responses, in the order shown. For a blind A/B evaluation the policies stay hidden
    (they are never part of the view)."""
    rows = s.connection().execute(VIEW, {"ids": list(task.response_ids)}).all()
    found = {r[0]: {"text": r[1], "finished": r[2]} for r in rows}
    prompt_text, prompt_messages = (rows[0][3], rows[0][4]) if rows else ("", None)
    pairwise = task.kind in ("pairwise", "ab_eval")
    # two clips of a control agent (`tether control --labeler web`): shown as GIFs, Left / Right
    clips = task.kind == "pairwise" and len(task.response_ids) == 2 and len(rows) == 2 and all(
        r[5] == "clip" and isinstance(r[6], dict) and r[6].get("kind") == "control_clip" for r in rows)
    responses = [{"id": rid, "label": SIDES[i] if clips else LETTERS[i] if pairwise else str(i + 1), **found[rid]}
                 for i, rid in enumerate(task.response_ids) if rid in found]
    if clips:
        for i, r in enumerate(responses):
            r["video"] = f"/clip/{task.id}/{i}.gif"
    messages = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
                for m in (prompt_messages or []) if isinstance(m, dict)]
    view = {"id": task.id, "kind": task.kind, "prompt": prompt_text, "messages": messages,
            "responses": responses, "instructions": INSTRUCTIONS["clips" if clips else task.kind], "clips": clips}
    if task.kind == "flaws":
        view["categories"] = list(task.options.get("categories") or FLAW_CATEGORIES)
    return view


# --- pages --------------------------------------------------------------------------------------
@router.get("/")
def home(request: Request) -> Response:
    with db(request).read() as s:
        lab = current_user(request, s)
        stats = progress(s, lab.id)
    return render(request, "home.html", {"progress": stats})


@router.get("/label")
def next_task(request: Request) -> Response:
    """Hand out the next task (or the one the labeler already holds) and show it."""
    d = db(request)
    with d.write() as s:
        lab = current_user(request, s)
        task = claim_next(d, s, lab.id)
        task_id = task.id if task is not None else None
    if task_id is None:
        with d.read() as s:
            stats = progress(s, lab.id)
        return render(request, "empty.html", {"progress": stats})
    return RedirectResponse(f"/task/{task_id}", status_code=303)


def _task_page(request: Request, task_id: int, error: str | None = None, status: int = 200) -> Response:
    with db(request).read() as s:
        lab = current_user(request, s)
        task = assigned_task(s, lab.id, task_id)
        if task.a_status != "assigned" and error is None:
            return RedirectResponse("/label", status_code=303)
        view = task_view(s, task)
        stats = progress(s, lab.id)
    return render(request, "task.html", {"task": view, "progress": stats, "error": error}, status)


@router.get("/task/{task_id}")
def show_task(request: Request, task_id: DbId) -> Response:
    return _task_page(request, task_id)


def _submit(request: Request, task_id: int, form) -> None:
    with db(request).write() as s:
        lab = current_user(request, s)
        task = assigned_task(s, lab.id, task_id)
        submit_label(s, lab, task_id, form_to_dict(task.kind, form))


@router.post("/task/{task_id}")
async def answer_task(request: Request, task_id: DbId) -> Response:
    """The task form: store the answer, then go to the next task. A bad answer shows the task again
    with the problem (422); someone else's task is 404."""
    form = await request.form()
    check_csrf(request, form.get("csrf_token"))
    try:
        await run_in_threadpool(_submit, request, task_id, form)
    except LabelError as e:
        if e.status == 404:
            raise
        return await run_in_threadpool(_task_page, request, task_id, str(e), e.status)
    return RedirectResponse("/label", status_code=303)


# --- JSON API (scripts, the bench) ---------------------------------------------------------------
@router.get("/api/tasks/next")
def api_next(request: Request) -> Response:
    d = db(request)
    with d.write() as s:
        lab = current_user(request, s)
        task = claim_next(d, s, lab.id)
        view = task_view(s, task) if task is not None else None
    return JSONResponse({"task": view})


@router.get("/api/tasks/{task_id}")
def api_task(request: Request, task_id: DbId) -> Response:
    with db(request).read() as s:
        lab = current_user(request, s)
        task = assigned_task(s, lab.id, task_id)
        return JSONResponse({"task": task_view(s, task), "status": task.a_status})


def _answer(request: Request, task_id: int, payload: dict[str, Any], next: bool) -> dict[str, Any]:
    d = db(request)
    with d.write() as s:
        lab = current_user(request, s)
        task, feedback_id = submit_label(s, lab, task_id, payload)
        out: dict[str, Any] = {"task_id": task_id, "kind": task.kind, "feedback_id": feedback_id}
        if next and d.sqlite:  # one transaction: SQLite writes one at a time anyway
            following = claim_next(d, s, lab.id)
            out["next"] = task_view(s, following) if following is not None else None
    if next and not d.sqlite:  # PostgreSQL: claim after the commit (see queue.claim_next)
        with d.write() as s:
            following = claim_next(d, s, lab.id)
            out["next"] = task_view(s, following) if following is not None else None
    return out


@router.post("/api/tasks/{task_id}/label")
async def api_answer(request: Request, task_id: DbId, payload: Annotated[dict[str, Any], Depends(json_body)],
                     next: bool = False) -> Response:
    """Store an answer (a JSON object; header X-CSRF-Token required). With ?next=true the reply also carries the
    labeler's next task, claimed in the same transaction: one round trip per item.

    On SQLite the transaction (~1-2 ms) runs on the event loop: SQLite takes one writer at a time
    anyway, and the hop to a worker thread cost a quarter of the request's CPU time (bench/RESULTS.md).
    The price: while another process holds SQLite's write lock (up to its 10 s busy timeout) the
    server waits. On PostgreSQL it runs in a worker thread, as the other routes do."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    if db(request).sqlite:
        out = _answer(request, task_id, payload, next)
    else:
        out = await run_in_threadpool(_answer, request, task_id, payload, next)
    return JSONResponse(out, status_code=201)


@router.get("/api/progress")
def api_progress(request: Request) -> Response:
    with db(request).read() as s:
        lab = current_user(request, s)
        return JSONResponse(progress(s, lab.id))
