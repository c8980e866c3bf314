"""Open a workspace database (SQLite by default, PostgreSQL by URL), migrate it, and read/write it.

`Store` is a thin layer over SQLAlchemy sessions: the schema lives in `schema.py`, the migrations
in `migrations/`. Opening a database brings it to the newest schema, so a workspace made by an
older tether opens in a newer one; a database made by a *newer* tether is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tether.data import schema as S
from tether.errors import TetherError

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept the usual spellings: `postgresql://` and `postgres://` use psycopg 3, which tether installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the web app) do not block the writer
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def prompt_hash(text: str, messages: list | None) -> str:
    """Identity of a prompt for de-duplication: its conversation, or its raw text."""
    key = json.dumps({"messages": messages} if messages is not None else {"text": text}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    """A workspace database. Use `with store.session() as s:` for a transaction (committed on exit,
    rolled back on error)."""

    def __init__(self, url: str, migrate: bool = True):
        self.url = normalise_url(url)
        try:
            make_url(self.url)
            kwargs = {"pool_pre_ping": True} if not self.url.startswith("sqlite") else {}
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ArgumentError, ImportError, ValueError) as e:
            raise TetherError(f"Bad database URL '{_hide_password(url)}': {e}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.upgrade()

    # --- schema -------------------------------------------------------------------------------
    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, target: str = "head") -> None:
        """Bring the schema to `target` (the newest by default)."""
        cfg = _alembic_config()
        known = {r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()}
        try:
            current = self.revision()
        except OperationalError as e:
            raise TetherError(f"Cannot open database {self.engine.url.render_as_string(hide_password=True)}: "
                              f"{str(e.orig).strip()}") from None
        if current is not None and current not in known:
            raise TetherError(f"The database is at schema revision {current}, which this tether does not know: "
                              "it was made by a newer tether. Upgrade tether to open it.")
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)

    def close(self) -> None:
        self.engine.dispose()

    # --- sessions -----------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    # --- common reads and writes --------------------------------------------------------------
    @staticmethod
    def labeler(s: Session, name: str, role: str = "labeler", groups: dict | None = None) -> S.Labeler:
        """The labeler called `name`, created with `role` if there is none."""
        lab = s.scalar(select(S.Labeler).where(S.Labeler.name == name))
        if lab is None:
            lab = S.Labeler(name=name, role=role, groups=groups or {})
            s.add(lab)
            s.flush()
        return lab

    @staticmethod
    def get_or_add_prompt(s: Session, text: str, messages: list | None, split: str = "train",
                          source: str | None = None, meta: dict | None = None) -> tuple[S.Prompt, bool]:
        """(prompt, created): an identical prompt already stored is reused, not duplicated."""
        h = prompt_hash(text, messages)
        p = s.scalar(select(S.Prompt).where(S.Prompt.content_hash == h))
        if p is not None:
            return p, False
        p = S.Prompt(text=text, messages=messages, content_hash=h, split=split, source=source, meta=meta or {})
        s.add(p)
        s.flush()
        return p, True

    def prompts(self, split: str | None = "train") -> list[str | list[dict]]:
        """Stored prompts of a split (None: all), oldest first, as the models read them: the
        conversation (list of {role, content}) when there is one, else the raw text."""
        with self.session() as s:
            q = select(S.Prompt.text, S.Prompt.messages).order_by(S.Prompt.id)
            if split is not None:
                q = q.where(S.Prompt.split == split)
            return [m if m is not None else t for t, m in s.execute(q).all()]

    def counts(self) -> dict[str, int]:
        """Rows per table, for `tether status` and tests."""
        tables = [S.Prompt, S.Response, S.Labeler, S.Comparison, S.Ranking, S.Rating, S.Thumb, S.FlawReport,
                  S.Critique, S.Task, S.Run]
        with self.session() as s:
            return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in tables}

    def start_run(self, stage: str, round: int, config: dict, path: str | None = None) -> int:
        with self.session() as s:
            run = S.Run(stage=stage, round=round, config=config, path=path)
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: str = "done", metrics: dict | None = None) -> None:
        with self.session() as s:
            run = s.get(S.Run, run_id)
            if run is None:
                raise TetherError(f"no run with id {run_id} in this workspace")
            run.status = status
            run.metrics = metrics or {}
            run.finished_at = datetime.now(timezone.utc)
