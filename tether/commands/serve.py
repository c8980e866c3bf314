"""`tether serve` (the labeling web app under uvicorn) and the admin commands around it:
`tether labelers add/list/invite/deactivate` and `tether tasks create`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from tether.commands.common import WorkspaceOpt, console, user_errors
from tether.errors import TetherError

labelers_app = typer.Typer(help="Accounts for the labeling web app.", no_args_is_help=True)
tasks_app = typer.Typer(help="Labeling tasks for the web app.", no_args_is_help=True)


@user_errors
def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for the whole network)."),
          port: int = typer.Option(8000, help="Port to listen on."),
          workers: int = typer.Option(1, help="uvicorn worker processes (more than one: use PostgreSQL)."),
          timeout_minutes: float = typer.Option(15.0, "--timeout-minutes",
                                                help="An unanswered task returns to the queue after this long."),
          secure_cookies: bool = typer.Option(False, "--secure-cookies",
                                              help="Send the session cookie over HTTPS only (behind a TLS proxy)."),
          workspace: Path = WorkspaceOpt):
    """Open the labeling web app: labelers log in and answer their queue; admins see /admin."""
    import uvicorn
    from sqlalchemy import func, select

    from tether.data import schema as S
    from tether.web.security import workspace_secret
    from tether.workspace import open_workspace

    if workers < 1:
        raise TetherError(f"--workers: at least 1, got {workers}")
    if timeout_minutes <= 0:
        raise TetherError(f"--timeout-minutes: must be positive, got {timeout_minutes}")
    ws = open_workspace(workspace)
    workspace_secret(ws.root)  # made once, before any worker starts
    store = ws.store()
    with store.session() as s:
        people = s.scalar(select(func.count()).select_from(S.Labeler).where(S.Labeler.role.in_(("labeler", "admin")),
                                                                           S.Labeler.password_hash.is_not(None)
                                                                           | S.Labeler.invite_token.is_not(None)))
    sqlite = store.engine.dialect.name == "sqlite"
    store.close()
    if workers > 1 and sqlite:
        console.print(Text("note: with SQLite the workers take turns to write; for a team use PostgreSQL "
                           "(`tether init --database postgresql://...`)", style="yellow"))
    if not people:
        console.print(Text(f"no accounts yet: make one with `tether labelers add NAME --admin -w {workspace}`",
                           style="yellow"))
    console.print(Text(f"tether labeling app on http://{host}:{port} (workspace {ws.root}, database "
                       f"{'SQLite' if sqlite else store.engine.dialect.name})"))
    os.environ["TETHER_WORKSPACE"] = str(ws.root)
    os.environ["TETHER_TASK_TIMEOUT_S"] = str(timeout_minutes * 60)
    os.environ["TETHER_SECURE_COOKIES"] = "1" if secure_cookies else ""
    if workers == 1:
        uvicorn.run("tether.web.app:create_app_from_env", factory=True, host=host, port=port,
                    log_level="warning", proxy_headers=True, access_log=False)
        return
    # several workers: hand over to uvicorn's own command line, whose supervisor spawns workers that
    # import the app factory (spawning from inside this command would re-import its __main__)
    os.execv(sys.executable, [sys.executable, "-m", "uvicorn", "tether.web.app:create_app_from_env", "--factory",
                              "--host", host, "--port", str(port), "--workers", str(workers),
                              "--log-level", "warning", "--no-access-log", "--proxy-headers"])


def _invite_line(base_url: str, token: str) -> Text:
    return Text(f"invite link (send it to them; it works once): {base_url.rstrip('/')}/invite/{token}")


@labelers_app.command("add")
@user_errors
def labelers_add(name: str = typer.Argument(..., help="The labeler's login name."),
                 admin: bool = typer.Option(False, "--admin", help="Give them the admin role."),
                 password: bool = typer.Option(False, "--password",
                                               help="Set a password now (asked for) instead of an invite link."),
                 url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of the app, for the invite link."),
                 workspace: Path = WorkspaceOpt):
    """Add a labeler (or an admin): prints an invite link, or asks for a password."""
    from tether.web.accounts import add_labeler
    from tether.workspace import open_workspace

    secret = typer.prompt("password", hide_input=True, confirmation_prompt=True) if password else None
    with open_workspace(workspace).store().session() as s:
        lab, token = add_labeler(s, name, "admin" if admin else "labeler", secret)
        console.print(Text(f"added {lab.role} {lab.name}"))
    if token:
        console.print(_invite_line(url, token))


@labelers_app.command("list")
@user_errors
def labelers_list(workspace: Path = WorkspaceOpt):
    """Web accounts with their labels and median time per item."""
    from tether.web.stats import labeler_counts
    from tether.workspace import open_workspace

    with open_workspace(workspace).store().session() as s:
        rows = labeler_counts(s)
    table = Table()
    for col in ("name", "role", "status", "labels", "median s"):
        table.add_column(col)
    for r in rows:
        status = "inactive" if not r["active"] else "invited" if r["invited"] else "active"
        table.add_row(Text(r["name"]), r["role"], status, str(r["total"]),
                      "-" if r["median_s"] is None else f"{r['median_s']:.1f}")
    console.print(table)


def _by_name(s, name: str):
    from sqlalchemy import select

    from tether.data import schema as S

    lab = s.scalar(select(S.Labeler).where(S.Labeler.name == name))
    if lab is None:
        raise TetherError(f"no labeler called {name!r} in this workspace")
    return lab


@labelers_app.command("invite")
@user_errors
def labelers_invite(name: str, url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of the app."),
                    workspace: Path = WorkspaceOpt):
    """A new invite link for a labeler (their old link and password stop working)."""
    from tether.web.accounts import renew_invite
    from tether.workspace import open_workspace

    with open_workspace(workspace).store().session() as s:
        token = renew_invite(s, _by_name(s, name).id)
    console.print(_invite_line(url, token))


@labelers_app.command("deactivate")
@user_errors
def labelers_deactivate(name: str, workspace: Path = WorkspaceOpt):
    """Stop a labeler from logging in (their labels stay)."""
    from tether.web.accounts import set_active
    from tether.workspace import open_workspace

    with open_workspace(workspace).store().session() as s:
        set_active(s, _by_name(s, name).id, False)
    console.print(Text(f"{name} can no longer log in"))


@tasks_app.command("create")
@user_errors
def tasks_create(kind: str = typer.Option(..., help="pairwise, rank, rating, thumbs, flaws, critique or ab_eval."),
                 overlap: int = typer.Option(1, help="Labels per item, from different labelers (for agreement)."),
                 priority: float = typer.Option(0.0, help="Higher priorities are labeled first."),
                 round: Optional[int] = typer.Option(None, help="Only samples of this round (default: all)."),
                 per_prompt: int = typer.Option(1, "--per-prompt", help="Items per prompt (pairs, or responses)."),
                 k: int = typer.Option(4, help="Responses per ranking (rank)."),
                 limit: Optional[int] = typer.Option(None, help="Make at most this many tasks."),
                 categories: Optional[str] = typer.Option(None, help="Comma-separated flaw categories (flaws)."),
                 policy_a: Optional[str] = typer.Option(None, "--policy-a", help="First policy (ab_eval)."),
                 policy_b: Optional[str] = typer.Option(None, "--policy-b", help="Second policy (ab_eval)."),
                 seed: int = typer.Option(0, help="Seed for choosing and ordering responses."),
                 workspace: Path = WorkspaceOpt):
    """Make labeling tasks from the stored samples."""
    from tether.web.tasks import TaskSpec, create_tasks
    from tether.workspace import open_workspace

    spec = TaskSpec(kind=kind, labels_needed=overlap, priority=priority, round=round, per_prompt=per_prompt, k=k,
                    limit=limit, seed=seed,
                    policies=(policy_a, policy_b) if kind == "ab_eval" and policy_a and policy_b else None)
    if categories:
        spec.categories = [c.strip() for c in categories.split(",") if c.strip()]
    with open_workspace(workspace).store().session() as s:
        made = create_tasks(s, spec)
    console.print(Text(f"{len(made)} {kind} tasks made, {overlap} label(s) each"
                       + ("" if made else " (no stored samples fit, or such tasks exist already)")))
