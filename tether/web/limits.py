"""Limits on what a request may carry, so that a malformed or oversized request gets a 4xx naming
the problem and never a 500.

- `BodyLimit`: ASGI middleware refusing a body over `MAX_BODY` bytes with 413, whether the size is
  declared (Content-Length) or streamed (chunked); nothing past the limit is read.
- `DbId`, `DbInt`: path and query integers bounded to what the database can store (an id of 10**30
  would otherwise overflow SQLite's 64-bit integers inside the query).
- `json_body`: the JSON API's body, only as application/json (415 otherwise), parsed (400 if it is
  not JSON) and a JSON object (422 if not).
- `request_error_message`: FastAPI's own validation errors as "field 'x': problem", like
  `forms.validation_message`, without echoing the (possibly huge) input back.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse

from tether.web.forms import LabelError

MAX_BODY = 1024 * 1024  # bytes in a request body; a label is at most ~0.5 MB even fully %-escaped
MAX_INT = 2**63 - 1  # the largest integer SQLite and PostgreSQL (bigint) store
TOO_LARGE = f"request body too large: at most {MAX_BODY // 1024} KiB"

DbId = Annotated[int, PathParam(ge=0, le=MAX_INT)]
DbInt = Annotated[int | None, Query(ge=-MAX_INT, le=MAX_INT)]


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException, so that
    FastAPI's body parsing lets it through (it turns other errors into a 400) and it answers 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=TOO_LARGE)


def _too_large(scope) -> Any:
    path = scope.get("path", "")
    if path.startswith("/api/") or path.startswith("/admin/api/"):
        return JSONResponse({"detail": TOO_LARGE, "field": "body"}, status_code=413)
    return PlainTextResponse(TOO_LARGE, status_code=413)


class BodyLimit:
    """Pure ASGI middleware: 413 for a request body over `max_bytes`."""

    def __init__(self, app, max_bytes: int = MAX_BODY):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed length before we get here
                if declared > self.max_bytes:
                    return await _too_large(scope)(scope, receive, send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(scope)(scope, receive, send)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (a FastAPI dependency for the JSON API)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise LabelError(f"header 'content-type': send the body as application/json, not {ctype or 'nothing'}",
                         "content-type", status=415)
    raw = await request.body()
    try:
        data = json.loads(raw)
    except RecursionError:
        raise LabelError("field 'body': JSON nested too deeply", "body", status=400) from None
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise LabelError(f"field 'body': not valid JSON ({str(e)[:200]})", "body", status=400) from None
    if not isinstance(data, dict):
        got = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise LabelError(f"field 'body': expected a JSON object, got {got}", "body")
    return data


def request_error_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """('field X: problem; ...', first field) from FastAPI's validation of path, query and form."""
    parts, first = [], None
    for e in exc.errors()[:10]:
        loc = [str(p) for p in e.get("loc", ())]
        if len(loc) > 1 and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        name = ".".join(loc) or "body"
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            name, msg = "body", "not valid JSON"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field"
        first = first or name
        parts.append(f"field '{name}': {msg}")
    return "; ".join(parts) or "invalid request", first
