"""Admin pages: the dashboard (counts, agreement, flagged labelers, leaderboard, A/B win rates),
labeler accounts and invite links, creating tasks from stored samples, and the TRL export.
Every route here needs an admin session: a labeler gets 403."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from tether.data import schema as S
from tether.data.io import export_preferences
from tether.errors import TetherError
from tether.web import stats
from tether.web.accounts import add_labeler, renew_invite, set_active
from tether.web.app import check_csrf, current_user, db, render
from tether.web.limits import MAX_INT, DbId, DbInt
from tether.web.tasks import TaskSpec, create_tasks

router = APIRouter(prefix="/admin")


def _invite_url(request: Request, token: str) -> str:
    return str(request.url_for("invite_page", token=token))


def _dashboard_data(request: Request) -> dict:
    with db(request).read() as s:
        current_user(request, s, admin=True)
        return {"tasks": stats.task_counts(s), "labelers": stats.labeler_counts(s), "agreement": stats.agreement(s),
                "leaderboard": stats.leaderboard(s), "ab": stats.ab_win_rates(s)}


@router.get("")
def dashboard(request: Request) -> Response:
    return render(request, "admin/dashboard.html", _dashboard_data(request))


@router.get("/api/stats")
def api_stats(request: Request) -> Response:
    return JSONResponse(_dashboard_data(request))


# --- labelers -----------------------------------------------------------------------------------
def _labelers_page(request: Request, message: str | None = None, invite: str | None = None,
                   error: str | None = None, status: int = 200) -> Response:
    with db(request).read() as s:
        current_user(request, s, admin=True)
        rows = stats.labeler_counts(s)
    return render(request, "admin/labelers.html", {"labelers": rows, "message": message, "invite": invite,
                                                   "error": error}, status)


@router.get("/labelers")
def labelers(request: Request) -> Response:
    return _labelers_page(request)


@router.post("/labelers")
def new_labeler(request: Request, name: Annotated[str, Form(max_length=255)] = "",
                role: Annotated[str, Form()] = "labeler", password: Annotated[str, Form(max_length=1024)] = "",
                csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    try:
        with db(request).write() as s:
            current_user(request, s, admin=True)
            lab, token = add_labeler(s, name, role, password or None)
            lab_name = lab.name
    except TetherError as e:
        return _labelers_page(request, error=str(e), status=422)
    invite = _invite_url(request, token) if token else None
    return _labelers_page(request, message=f"Added {lab_name}.", invite=invite)


@router.post("/labelers/{labeler_id}/invite")
def labeler_invite(request: Request, labeler_id: DbId, csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    try:
        with db(request).write() as s:
            current_user(request, s, admin=True)
            token = renew_invite(s, labeler_id)
    except TetherError as e:
        return _labelers_page(request, error=str(e), status=404)
    return _labelers_page(request, message="New invite link (the old one no longer works).",
                          invite=_invite_url(request, token))


@router.post("/labelers/{labeler_id}/active")
def labeler_active(request: Request, labeler_id: DbId, active: Annotated[bool, Form()] = False,
                   csrf_token: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf_token)
    try:
        with db(request).write() as s:
            me = current_user(request, s, admin=True)
            if me.id == labeler_id and not active:
                raise TetherError("you cannot deactivate your own account")
            lab = set_active(s, labeler_id, active)
            msg = f"{lab.name} is now {'active' if active else 'inactive'}."
    except TetherError as e:
        return _labelers_page(request, error=str(e), status=422)
    return _labelers_page(request, message=msg)


# --- tasks --------------------------------------------------------------------------------------
def _tasks_page(request: Request, message: str | None = None, error: str | None = None, status: int = 200) -> Response:
    from tether.data.feedback import FLAW_CATEGORIES

    with db(request).read() as s:
        current_user(request, s, admin=True)
        ctx = {"tasks": stats.task_counts(s), "policies": stats.policies(s), "kinds": S.TASK_KINDS,
               "flaw_categories": ", ".join(FLAW_CATEGORIES), "message": message, "error": error}
    return render(request, "admin/tasks.html", ctx, status)


@router.get("/tasks")
def tasks(request: Request) -> Response:
    return _tasks_page(request)


@router.post("/tasks")
def new_tasks(request: Request, kind: Annotated[str, Form()], labels_needed: Annotated[int, Form(ge=1, le=100)] = 1,
              priority: Annotated[float, Form()] = 0.0, round: Annotated[str, Form()] = "",
              per_prompt: Annotated[int, Form(ge=1, le=1000)] = 1, k: Annotated[int, Form(ge=2, le=26)] = 4,
              limit: Annotated[str, Form()] = "", categories: Annotated[str, Form(max_length=2000)] = "",
              policy_a: Annotated[str, Form()] = "", policy_b: Annotated[str, Form()] = "",
              csrf_token: Annotated[str, Form()] = "") -> Response:
    """Make tasks from stored samples (see `tether.web.tasks`)."""
    check_csrf(request, csrf_token)
    try:
        try:
            rnd = int(round) if round.strip() else None
            lim = int(limit) if limit.strip() else None
        except ValueError:
            raise TetherError("round and limit: whole numbers, or empty for all") from None
        if any(v is not None and not 0 <= v <= MAX_INT for v in (rnd, lim)):
            raise TetherError(f"round and limit: from 0 to {MAX_INT}, or empty for all")
        if not math.isfinite(priority):
            raise TetherError("priority: a finite number, please")
        cats = [c.strip() for c in categories.split(",") if c.strip()]
        spec = TaskSpec(kind=kind, labels_needed=labels_needed, priority=priority, round=rnd, per_prompt=per_prompt,
                        k=k, limit=lim, policies=(policy_a, policy_b) if kind == "ab_eval" else None)
        if cats:
            spec.categories = cats
        with db(request).write() as s:
            current_user(request, s, admin=True)
            made = create_tasks(s, spec)
    except TetherError as e:
        return _tasks_page(request, error=str(e), status=422)
    return _tasks_page(request, message=f"Made {len(made)} {kind} tasks, {labels_needed} labels each.")


# --- export -------------------------------------------------------------------------------------
@router.get("/export.jsonl")
def export(request: Request, round: DbInt = None) -> Response:
    """Decided comparisons as TRL preference JSONL (ties and can't-tell are not written)."""
    d = db(request)
    with d.read() as s:
        current_user(request, s, admin=True)
    tmp = Path(tempfile.mkdtemp(prefix="tether-export-"))
    path = tmp / "preferences.jsonl"
    export_preferences(d.store, path, round=round)

    def cleanup() -> None:
        path.unlink(missing_ok=True)
        tmp.rmdir()

    name = "preferences.jsonl" if round is None else f"preferences-round{round}.jsonl"
    return FileResponse(path, media_type="application/jsonl", filename=name, background=BackgroundTask(cleanup))
