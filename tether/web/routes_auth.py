"""Logging in and out: name + password, invite links (set a password once), and a JSON login for
scripts. A new session (fresh CSRF token) is started on every login, against session fixation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select

from tether.data import schema as S
from tether.web.app import AuthError, check_csrf, csrf_token, current_user, db, render
from tether.web.forms import validation_message
from tether.web.security import MIN_PASSWORD, hash_password, invite_digest, new_csrf_token, verify_password

router = APIRouter()


def _start_session(request: Request, lab: S.Labeler) -> str:
    request.session.clear()
    token = new_csrf_token()
    request.session.update(uid=lab.id, name=lab.name, role=lab.role, csrf=token)
    return token


def _check_login(request: Request, name: str, password: str) -> S.Labeler | None:
    if "\x00" in name:  # no such name (and PostgreSQL refuses NUL in a query's text)
        return None
    with db(request).read() as s:
        lab = s.scalar(select(S.Labeler).where(S.Labeler.name == name.strip()))
        ok = verify_password(password, lab.password_hash if lab is not None else None)
        return lab if ok and lab is not None and lab.active and lab.role in ("labeler", "admin") else None


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", {"error": None, "name": ""})


@router.post("/login")
def login(request: Request, name: Annotated[str, Form(max_length=255)] = "",
          password: Annotated[str, Form(max_length=1024)] = "",
          csrf_token_: Annotated[str, Form(alias="csrf_token")] = "") -> Response:
    check_csrf(request, csrf_token_)
    lab = _check_login(request, name, password)
    if lab is None:
        return render(request, "login.html", {"error": "Wrong name or password.", "name": name}, 401)
    _start_session(request, lab)
    return RedirectResponse("/admin" if lab.role == "admin" else "/", status_code=303)


@router.post("/logout")
def logout(request: Request, csrf_token_: Annotated[str, Form(alias="csrf_token")] = "") -> Response:
    check_csrf(request, csrf_token_)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _invited(request: Request, token: str) -> S.Labeler | None:
    with db(request).read() as s:
        return s.scalar(select(S.Labeler).where(S.Labeler.invite_token == invite_digest(token),
                                                S.Labeler.active.is_(True)))


@router.get("/invite/{token}")
def invite_page(request: Request, token: str) -> Response:
    lab = _invited(request, token)
    if lab is None:
        return render(request, "error.html", {"status": 404, "message": "This invite link is not valid "
                                              "(already used, replaced, or mistyped)."}, 404)
    return render(request, "invite.html", {"name": lab.name, "token": token, "error": None,
                                           "min_password": MIN_PASSWORD})


@router.post("/invite/{token}")
def accept_invite(request: Request, token: str, password: Annotated[str, Form(max_length=1024)] = "",
                  password2: Annotated[str, Form(max_length=1024)] = "",
                  csrf_token_: Annotated[str, Form(alias="csrf_token")] = "") -> Response:
    check_csrf(request, csrf_token_)
    lab = _invited(request, token)
    if lab is None:
        return render(request, "error.html", {"status": 404, "message": "This invite link is not valid."}, 404)
    error = None
    if password != password2:
        error = "The two passwords differ."
    elif len(password) < MIN_PASSWORD:
        error = f"Password: at least {MIN_PASSWORD} characters, please."
    if error:
        return render(request, "invite.html", {"name": lab.name, "token": token, "error": error,
                                               "min_password": MIN_PASSWORD}, 422)
    hashed = hash_password(password)
    with db(request).write() as s:
        row = s.get(S.Labeler, lab.id)
        if row is None or row.invite_token != invite_digest(token):
            return render(request, "error.html", {"status": 409, "message": "This invite link was just used."}, 409)
        row.password_hash, row.invite_token = hashed, None
    _start_session(request, lab)
    return RedirectResponse("/admin" if lab.role == "admin" else "/", status_code=303)


class LoginBody(BaseModel):
    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00]*$")
    password: str = Field(min_length=1, max_length=1024)


@router.post("/api/login")
async def api_login(request: Request) -> Response:
    """JSON login for scripts (the bench): {"name", "password"} -> {"csrf_token"}; the session
    cookie comes with it. Only application/json is accepted, which a cross-site form cannot send."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"detail": "send the login as application/json"}, status_code=415)
    try:
        body = LoginBody.model_validate_json(await request.body())
    except ValidationError as e:
        return JSONResponse({"detail": validation_message(e)[0]}, status_code=422)
    from starlette.concurrency import run_in_threadpool

    lab = await run_in_threadpool(_check_login, request, body.name, body.password)
    if lab is None:
        raise AuthError("wrong name or password", 401)
    token = _start_session(request, lab)
    return JSONResponse({"name": lab.name, "role": lab.role, "csrf_token": token})


@router.get("/api/me")
def api_me(request: Request) -> Response:
    with db(request).read() as s:
        lab = current_user(request, s)
        return JSONResponse({"name": lab.name, "role": lab.role, "csrf_token": csrf_token(request)})
