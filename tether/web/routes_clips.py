"""Clips of a control agent (`tether control --labeler web`) as animated GIFs, for pairwise tasks
whose two responses are clips (source "clip").

`GET /clip/{task_id}/{slot}.gif` (slot 0 = left, 1 = right) answers the GIF of the task's clip, drawn
on first request from the run's clips.npz (`tether.control.render`) and cached next to it as
`gifs/clip-K-HASH.gif` (HASH: of the clip's states and actions, so a clip index reused by a resumed
run never shows a stale drawing). Which file is read comes from the task's response row in the
database, never from the request. Only a labeler holding (or having answered) the task, or an admin,
may fetch it: anyone else gets 404, whether the task exists or not; nobody logged in gets 401.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from sqlalchemy import select

from tether.data import schema as S
from tether.errors import TetherError
from tether.web.app import AuthError, current_user, db
from tether.web.limits import DbId

router = APIRouter()
GIF_FPS = 20  # Pendulum's own time step is 0.05 s: real time
GIF_SIZE = 256  # pixels, longer side
_render_lock = threading.Lock()  # one drawing at a time per process (pygame, CPU)


class ClipMissing(Exception):
    """The clip cannot be served (404 with this message)."""


def is_clip(response: S.Response | None) -> bool:
    return response is not None and response.source == "clip" and \
        isinstance(response.sampling, dict) and response.sampling.get("kind") == "control_clip"


def clip_gif(root: Path | None, sampling: dict) -> Path:
    """The GIF of the clip a response's ``sampling`` describes, drawn once and cached beside the
    clips file. ClipMissing if the file or the clip is not there."""
    import numpy as np

    file, k, env_id = sampling.get("file"), sampling.get("clip"), sampling.get("env_id")
    if not isinstance(file, str) or not file.endswith(".npz") or not isinstance(k, int) or k < 0 \
            or not isinstance(env_id, str):
        raise ClipMissing("the clip's record lacks its file, index or env_id")
    path = Path(file)
    if not path.is_absolute():
        if root is None:
            raise ClipMissing("the app has no workspace folder to find clip files in")
        path = root / path
    if not path.is_file():
        raise ClipMissing(f"clip file {file} is missing")
    try:
        with np.load(path) as z:
            if "states" not in z.files or k >= len(z["states"]):
                raise ClipMissing(f"clip {k} is not in {file} (or it has no simulator states to draw)")
            states, actions = z["states"][k], z["raw_act"][k] if "raw_act" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ClipMissing(f"cannot read clip file {file}: {e}") from None
    digest = hashlib.sha1(states.tobytes() + (b"" if actions is None else actions.tobytes())).hexdigest()[:12]
    gif = path.parent / "gifs" / f"clip-{k}-{digest}.gif"
    if gif.is_file():
        return gif
    from tether.control.render import render_clip

    with _render_lock:
        if not gif.is_file():
            part = gif.with_name(f".{gif.name}.{os.getpid()}.{threading.get_ident()}.part.gif")
            try:
                render_clip(env_id, states, part, actions=actions, fps=GIF_FPS, size=GIF_SIZE,
                            env_kwargs=sampling.get("env_kwargs") or None)
                os.replace(part, gif)  # atomic: another process never reads half a file
            finally:
                part.unlink(missing_ok=True)
    return gif


@router.get("/clip/{task_id}/{slot}.gif")
def clip(request: Request, task_id: DbId, slot: DbId) -> Response:
    with db(request).read() as s:
        try:
            lab = current_user(request, s)
        except AuthError as e:  # an image: no redirect to the login page
            return PlainTextResponse(str(e), status_code=e.status)
        task = s.get(S.Task, task_id)
        allowed = task is not None and (lab.role == "admin" or s.scalar(
            select(S.Assignment.id).where(S.Assignment.task_id == task_id, S.Assignment.labeler_id == lab.id,
                                          S.Assignment.status.in_(("assigned", "done")))) is not None)
        if not allowed or task.kind != "pairwise" or slot not in (0, 1) or len(task.response_ids) != 2:
            return PlainTextResponse(f"task {task_id} has no clip {slot} for you", status_code=404)
        response = s.get(S.Response, task.response_ids[slot])
        if not is_clip(response):
            return PlainTextResponse(f"task {task_id} has no clip {slot} for you", status_code=404)
        sampling = dict(response.sampling)
    try:
        gif = clip_gif(request.app.state.root, sampling)
    except ClipMissing as e:
        return PlainTextResponse(f"task {task_id}, clip {slot}: {e}", status_code=404)
    except TetherError as e:
        return PlainTextResponse(f"task {task_id}, clip {slot}: cannot draw it: {e}", status_code=500)
    return FileResponse(gif, media_type="image/gif", headers={"Cache-Control": "private, max-age=86400"})
