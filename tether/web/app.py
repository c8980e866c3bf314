"""The labeling web app: a FastAPI application over the workspace database.

`create_app(workspace)` builds it; `tether serve` runs it under uvicorn (several workers need a
PostgreSQL workspace; `create_app_from_env` is the factory they import). Pages are server-rendered
Jinja2 templates with autoescaping on everywhere (model outputs are untrusted text), plus one small
plain-JavaScript file for keyboard shortcuts, drag-to-rank and timing. A Content-Security-Policy
forbids inline scripts, so even a missed escape could not run code.

Sessions are signed cookies (starlette's SessionMiddleware) keyed by the workspace's `web_secret`;
every state-changing request carries the session's CSRF token (a form field, or the X-CSRF-Token
header for the JSON API).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Row, bindparam, event, select
from sqlalchemy.orm import Session
from starlette.middleware.sessions import SessionMiddleware

from tether.data import schema as S
from tether.data.store import Store
from tether.web.forms import LabelError
from tether.web.limits import BodyLimit, request_error_message
from tether.web.queue import Database
from tether.web.security import csrf_ok, new_csrf_token, workspace_secret

HERE = Path(__file__).parent
SESSION_COOKIE = "tether_session"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]


@dataclass
class WebSettings:
    """How the app runs: task timeout (seconds before an unanswered task returns to the queue) and
    whether cookies need HTTPS."""
    timeout_s: float = 900.0
    secure_cookies: bool = False


class AuthError(Exception):
    """Not logged in (401) or not allowed (403)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class SecurityHeaders:
    """Pure ASGI middleware adding CSP and friends to every response (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- helpers the routes share -------------------------------------------------------------------
def db(request: Request) -> Database:
    return request.app.state.db


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (also before login: the login form has one)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = new_csrf_token()
    return token


def check_csrf(request: Request, given: str | None) -> None:
    if not csrf_ok(request.session.get("csrf"), given):
        raise AuthError("CSRF token missing or wrong: reload the page and try again", 403)


_lab = S.Labeler.__table__
WHO = select(_lab.c.id, _lab.c.name, _lab.c.role, _lab.c.active).where(_lab.c.id == bindparam("uid"))


def current_user(request: Request, s: Session, admin: bool = False) -> Row:
    """The logged-in labeler as a row of id, name, role, active (401 if none, 403 if `admin` and
    they are not one). Looked up on every request (a deactivated account is locked out at once)."""
    uid = request.session.get("uid")
    lab = s.connection().execute(WHO, {"uid": uid}).first() if isinstance(uid, int) else None
    if lab is None or not lab.active:
        raise AuthError("please log in", 401)
    if admin and lab.role != "admin":
        raise AuthError("admin pages need an admin account", 403)
    return lab


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path.startswith("/admin/api/")


def render(request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> HTMLResponse:
    ctx = {"csrf_token": csrf_token(request), "user_name": request.session.get("name"),
           "is_admin": request.session.get("role") == "admin", **(context or {})}
    return request.app.state.templates.TemplateResponse(request, name, ctx, status_code=status)


# --- the app ------------------------------------------------------------------------------------
def _sqlite_tuning(store: Store) -> None:
    """WAL already; synchronous=NORMAL is durable under WAL against a crash of the app (a power cut
    can lose the last commits), and saves an fsync per submission."""
    if store.engine.dialect.name == "sqlite":
        @event.listens_for(store.engine, "connect")
        def _normal_sync(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        store.engine.dispose()  # connections made so far (by the migration) lack the pragma


def create_app(workspace: str | Path | None = None, *, store: Store | None = None, secret: str | None = None,
               settings: WebSettings | None = None) -> FastAPI:
    """The app over a workspace folder (its database and `web_secret`), or over an explicit store
    and secret (tests)."""
    root = Path(workspace).resolve() if workspace is not None else None  # where clip files are found
    if store is None or secret is None:
        if workspace is None:
            raise ValueError("create_app needs a workspace folder, or both store and secret")
        from tether.workspace import open_workspace

        ws = open_workspace(workspace)
        store = store or ws.store()
        secret = secret or workspace_secret(ws.root)
        root = Path(ws.root).resolve()
    settings = settings or WebSettings()
    _sqlite_tuning(store)

    app = FastAPI(title="tether labeling", docs_url=None, redoc_url=None, openapi_url=None)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    app.state.templates = Jinja2Templates(env=env)
    app.state.db = Database(store, timeout_s=settings.timeout_s)
    app.state.settings = settings
    app.state.root = root

    from tether.web import routes_admin, routes_auth, routes_clips, routes_label

    app.include_router(routes_auth.router)
    app.include_router(routes_label.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_clips.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        if exc.status == 401:
            return RedirectResponse("/login", status_code=303)
        return render(request, "error.html", {"status": exc.status, "message": str(exc)}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> Response:
        message, field = request_error_message(exc)
        if wants_json(request):
            return JSONResponse({"detail": message, "field": field}, status_code=422)
        return render(request, "error.html", {"status": 422, "message": message}, 422)

    @app.exception_handler(LabelError)
    async def _label_error(request: Request, exc: LabelError) -> Response:
        if wants_json(request):
            return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status)
        return render(request, "error.html", {"status": exc.status, "message": str(exc)}, exc.status)

    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                       same_site="lax", https_only=settings.secure_cookies, max_age=14 * 24 * 3600)
    app.add_middleware(BodyLimit)  # outside the session: an oversized body is refused unread
    app.add_middleware(SecurityHeaders)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` workers: the workspace comes from $TETHER_WORKSPACE."""
    settings = WebSettings(timeout_s=float(os.environ.get("TETHER_TASK_TIMEOUT_S", "900")),
                           secure_cookies=os.environ.get("TETHER_SECURE_COOKIES", "") == "1")
    return create_app(os.environ.get("TETHER_WORKSPACE", "."), settings=settings)
