"""The task queue: who labels what next, and storing the answer exactly once.

Rules
- A task needs `labels_needed` labels from different labelers (the overlap, for agreement); the
  unique (task, labeler) assignment means nobody is given the same task twice.
- Higher `priority` first, then the oldest task.
- A slot is taken by a done or an active assignment. An assignment left `assigned` for longer than
  the timeout is marked `abandoned` and its slot goes back to the queue (its labeler may get the
  task again later, by reviving the same row).
- A labeler with an active assignment gets it back (a reload does not take a second task).
- A submission flips its assignment from `assigned` to `done` with one conditional UPDATE in the
  same transaction as the label, so a double submit stores one label and answers 409 to the other.

Concurrency: on SQLite, write transactions start with BEGIN IMMEDIATE behind a per-process lock
(one writer at a time, no lock-upgrade deadlocks, and no busy-wait sleeps between threads). On
PostgreSQL, claiming locks the candidate task row (FOR UPDATE SKIP LOCKED) and recounts its slots
under that lock, so concurrent workers never over-assign a task.

Speed: this is the hot path of every labeler's click, so it is SQLAlchemy Core, not the ORM: each
statement is built once, here, with bound parameters, and executed on the session's connection
(building and compiling a fresh ORM query cost ~6x more per statement; bench/RESULTS.md). Tasks
come back as rows (`TASK_COLUMNS`), which carry the same attribute names as `schema.Task`.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from sqlalchemy import Row, bindparam, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.data.feedback import (FLAW_CATEGORIES, FeedbackError, record_comparison, record_critique, record_flaws,
                                  record_ranking, record_rating, record_thumb)
from tether.data.store import Store
from tether.web.forms import LabelError, parse_label

t, a = S.Task.__table__, S.Assignment.__table__
ACTIVE = ("assigned", "done")  # assignment states that hold a slot
# written as ORs of equalities: SQLAlchemy renders IN (literal list) as an "expanding" parameter that it
# re-renders into the SQL string at every execution
_holds_slot = or_(*(a.c.status == state for state in ACTIVE))
TASK_COLUMNS = (t.c.id, t.c.kind, t.c.prompt_id, t.c.response_ids, t.c.labels_needed, t.c.priority, t.c.round,
                t.c.options, t.c.status)

# --- the statements, built once ------------------------------------------------------------------
_taken = (select(func.count()).select_from(a).where(a.c.task_id == t.c.id, _holds_slot)
          .correlate(t).scalar_subquery())
_mine = exists().where(a.c.task_id == t.c.id, a.c.labeler_id == bindparam("labeler_id"), _holds_slot)
# open tasks of one priority level with a free slot that this labeler has not done and does not hold
_available = (select(*TASK_COLUMNS).where(t.c.status == "open", ~_mine, _taken < t.c.labels_needed,
                                          t.c.priority == bindparam("level"))
              .order_by(t.c.id).limit(1))
# Both walk ix_tasks_queue (status, priority, id): open tasks of the level in id order, stopping at the
# first match; no sort, and done tasks are never visited (SQLite is told to use it; PostgreSQL's planner
# picks it). PostgreSQL locks the candidate, skipping or waiting for other workers' claims, and skips
# the tasks it found full under the lock.
NEXT_SQLITE = _available.with_hint(t, "INDEXED BY ix_tasks_queue", "sqlite")
_not_skipped = _available.where(t.c.id.not_in(bindparam("skip", expanding=True)))
NEXT_PG_SKIP = _not_skipped.with_for_update(skip_locked=True, of=t)
NEXT_PG_WAIT = _not_skipped.with_for_update(of=t)
TAKEN = select(func.count()).select_from(a).where(a.c.task_id == bindparam("task_id"), _holds_slot)
LEVELS = select(t.c.priority).where(t.c.status == "open").distinct().order_by(t.c.priority.desc())
# the labeler's unanswered assignment on an open task, oldest first
HELD = (select(*TASK_COLUMNS).join(a, a.c.task_id == t.c.id)
        .where(a.c.labeler_id == bindparam("labeler_id"), a.c.status == "assigned", t.c.status == "open")
        .order_by(a.c.assigned_at, a.c.id).limit(1))


def _upsert(insert_of_dialect):
    """The assignment row, new, or revived if the labeler abandoned the task earlier (one statement)."""
    stmt = insert_of_dialect(a)
    return stmt.on_conflict_do_update(index_elements=[a.c.task_id, a.c.labeler_id],
                                      set_={"status": stmt.excluded.status, "assigned_at": stmt.excluded.assigned_at,
                                            "completed_at": None})


ASSIGN = {"sqlite": _upsert(sqlite_insert), "postgresql": _upsert(pg_insert)}
RECLAIM = (update(a).where(a.c.status == "assigned", a.c.assigned_at < bindparam("cutoff"))
           .values(status="abandoned"))
# a task with this labeler's assignment on it: the task's columns, then the assignment's as a_*
ASSIGNED = (select(*TASK_COLUMNS, a.c.id.label("a_id"), a.c.status.label("a_status"),
                   a.c.assigned_at.label("a_assigned_at"))
            .join(a, a.c.task_id == t.c.id).where(t.c.id == bindparam("task_id"), a.c.labeler_id == bindparam("labeler_id")))
LOCK_TASK = select(t.c.id).where(t.c.id == bindparam("task_id")).with_for_update()
ANSWERED = (update(a).where(a.c.id == bindparam("a_id"), a.c.status == "assigned")
            .values(status="done", completed_at=bindparam("now")))
N_DONE = select(func.count()).select_from(a).where(a.c.task_id == bindparam("task_id"), a.c.status == "done")
CLOSE = update(t).where(t.c.id == bindparam("task_id")).values(status="done")
DONE_PER_KIND = (select(t.c.kind, func.count()).join(a, a.c.task_id == t.c.id)
                 .where(a.c.labeler_id == bindparam("labeler_id"), a.c.status == "done").group_by(t.c.kind))
N_AVAILABLE = (select(func.count()).select_from(t)
               .where(t.c.status == "open", ~_mine, _taken < t.c.labels_needed))


class Database:
    """The app's handle on the store: read sessions, and write sessions serialised on SQLite."""

    def __init__(self, store: Store, timeout_s: float = 900.0, reclaim_every_s: float = 5.0):
        self.store = store
        self.sqlite = store.engine.dialect.name == "sqlite"
        self.timeout_s = timeout_s
        self.reclaim_every_s = reclaim_every_s
        self._lock = threading.Lock()
        self._last_reclaim = 0.0
        self._levels: list[float] = []
        self._levels_at = -1e9

    def levels(self, s: Session, fresh: bool = False) -> list[float]:
        """Priority levels of open tasks, highest first; cached for a second per process (a new
        level is seen at once anyway: an empty answer from the cache is always re-checked)."""
        if fresh or time.monotonic() - self._levels_at > 1.0:
            self._levels = list(s.connection().execute(LEVELS).scalars())
            self._levels_at = time.monotonic()
        return self._levels

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.store.session() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        if not self.sqlite:
            with self.store.session() as s:
                yield s
            return
        with self._lock, self.store.session() as s:
            s.connection().exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now, not mid-way
            yield s

    def maybe_reclaim(self, s: Session, now: datetime) -> int:
        """Abandon assignments older than the timeout (at most every `reclaim_every_s` per process).
        On PostgreSQL this runs in its own short transaction, so that the row locks it takes are
        never held while the claim waits for a task's lock."""
        if time.monotonic() - self._last_reclaim < self.reclaim_every_s:
            return 0
        self._last_reclaim = time.monotonic()
        cutoff = now - timedelta(seconds=self.timeout_s)
        if self.sqlite:
            return reclaim(s, cutoff)
        with self.store.session() as own:
            return reclaim(own, cutoff)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def reclaim(s: Session, cutoff: datetime) -> int:
    """Mark assignments given out before `cutoff` and never answered as abandoned."""
    return s.connection().execute(RECLAIM, {"cutoff": cutoff}).rowcount or 0


def claim_next(db: Database, s: Session, labeler_id: int) -> Row | None:
    """The labeler's next task (their current one if they hold one), or None when the queue is empty.

    On PostgreSQL call it in a transaction that holds no task locks yet (not after a submission
    that marked a task done), or two workers could each wait for the other's task: each candidate
    is locked inside a savepoint, and a candidate found full is released at once by rolling the
    savepoint back, so a claim holds at most the one task lock it is taking."""
    now = now_utc()
    db.maybe_reclaim(s, now)
    conn = s.connection()
    held = conn.execute(HELD, {"labeler_id": labeler_id}).first()
    if held is not None:
        return held
    task, skip, tried = None, [], None
    for fresh in (False, True):
        levels = db.levels(s, fresh)
        if levels == tried:
            break  # the cached priority levels were current: the queue is empty for this labeler
        tried = levels
        # PostgreSQL: first skip tasks other workers are locking, then wait for them (a claim in
        # flight may leave a slot over)
        for wait in ((False,) if db.sqlite else (False, True)):
            for level in levels:
                task = _lock_candidate(db, s, labeler_id, level, skip, wait)
                if task is not None:
                    break
            if task is not None:
                break
        if task is not None:
            break
    if task is None:
        return None
    conn.execute(ASSIGN[conn.dialect.name], {"task_id": task.id, "labeler_id": labeler_id, "status": "assigned",
                                             "assigned_at": now})
    if not db.sqlite:
        s.info.pop("claim_savepoint").commit()
    return task


def _lock_candidate(db: Database, s: Session, labeler_id: int, level: float, skip: list[int],
                    wait: bool) -> Row | None:
    """The first available task of a priority level; on PostgreSQL locked (FOR UPDATE, inside a
    savepoint kept in `s.info` for the caller to commit) and re-counted under the lock."""
    conn = s.connection()
    for _ in range(50):
        if db.sqlite:
            return conn.execute(NEXT_SQLITE, {"labeler_id": labeler_id, "level": level}).first()
        savepoint = s.begin_nested()
        task = conn.execute(NEXT_PG_WAIT if wait else NEXT_PG_SKIP,
                            {"labeler_id": labeler_id, "level": level, "skip": skip}).first()
        if task is None:
            savepoint.rollback()
            return None
        if conn.execute(TAKEN, {"task_id": task.id}).scalar() < task.labels_needed:
            s.info["claim_savepoint"] = savepoint
            return task
        skip.append(task.id)  # filled by a worker that committed after our snapshot
        savepoint.rollback()  # releases the task's row lock
    return None


def assigned_task(s: Session, labeler_id: int, task_id: int) -> Row:
    """The task, with its assignment to this labeler as `a_id`, `a_status`, `a_assigned_at`, if it is
    in this labeler's queue; LabelError 404 otherwise (whose task it is stays hidden)."""
    row = s.connection().execute(ASSIGNED, {"task_id": task_id, "labeler_id": labeler_id}).first()
    if row is None:
        raise LabelError(f"task {task_id} is not in your queue", "task_id", status=404)
    return row


def _record(s: Session, labeler, task: Row, label, duration_ms: int) -> int:
    """Store `label` for `task` through tether.data.feedback (validated there against the database);
    the feedback row's id."""
    ids, kind = list(task.response_ids), task.kind
    common = dict(task_id=task.id, duration_ms=duration_ms, round=task.round)
    if kind in ("pairwise", "ab_eval"):
        meta: dict[str, Any] = {"kind": kind}
        if kind == "ab_eval":
            meta["policies"] = list(task.options.get("policies", []))
        return record_comparison(s, labeler, ids[0], ids[1], label.choice, reason=label.reason, meta=meta, **common)
    if kind == "rank":
        if sorted(label.order) != sorted(ids):
            raise LabelError(f"field 'order': must list each of responses {sorted(ids)} exactly once, "
                             f"got {label.order}", "order")
        return record_ranking(s, labeler, list(label.order), **common)
    if kind == "rating":
        return record_rating(s, labeler, ids[0], label.score, **common)
    if kind == "thumbs":
        return record_thumb(s, labeler, ids[0], label.up, **common)
    if kind == "flaws":
        allowed = tuple(task.options.get("categories") or FLAW_CATEGORIES)
        unknown = [c for c in label.categories if c not in allowed]
        if unknown:
            raise LabelError(f"field 'categories': unknown {unknown}; this task asks about {', '.join(allowed)}",
                             "categories")
        return record_flaws(s, labeler, ids[0], list(label.categories), allowed=allowed, **common)
    if kind == "critique":
        if not label.text and not label.rewrite:
            raise LabelError("field 'text': write a critique, a rewrite, or both", "text")
        return record_critique(s, labeler, ids[0], text=label.text, rewrite=label.rewrite, **common)
    raise LabelError(f"task {task.id} has unknown kind {kind!r}", "kind", status=500)


def submit_label(s: Session, labeler, task_id: int, data: dict) -> tuple[Row, int]:
    """Store the labeler's answer (`data`, checked by `forms.parse_label` for the task's kind) to
    a task they hold; the task is done once it has its labels. `labeler` is anything with the
    labeler's `id`. Returns (task, id of the feedback row).

    LabelError: 404 not their task, 409 already answered or timed out, 422 invalid answer."""
    conn = s.connection()
    # Answers to one task take turns (a row lock on PostgreSQL; SQLite writes are serialised anyway), so
    # that the last of several simultaneous answers counts the others and marks the task done.
    if conn.dialect.name != "sqlite":
        conn.execute(LOCK_TASK, {"task_id": task_id})
    task = assigned_task(s, labeler.id, task_id)
    if task.a_status == "done":
        raise LabelError(f"task {task_id}: you already answered it", "task_id", status=409)
    if task.a_status == "abandoned" or task.status != "open":
        raise LabelError(f"task {task_id}: it timed out (or was closed) and went back to the queue; "
                         "take the next one", "task_id", status=409)
    label = parse_label(task.kind, data)
    now = now_utc()
    if conn.execute(ANSWERED, {"a_id": task.a_id, "now": now}).rowcount != 1:
        raise LabelError(f"task {task_id}: you already answered it", "task_id", status=409)
    duration = label.duration_ms
    if duration is None:
        duration = max(0, int((now - task.a_assigned_at).total_seconds() * 1000))
    try:
        feedback_id = _record(s, labeler, task, label, duration)
    except FeedbackError as e:
        raise LabelError(str(e)) from None
    n_done = 1 if task.labels_needed <= 1 else conn.execute(N_DONE, {"task_id": task.id}).scalar()
    if n_done >= task.labels_needed:
        conn.execute(CLOSE, {"task_id": task.id})
    return task, feedback_id


def progress(s: Session, labeler_id: int) -> dict:
    """A labeler's counts: answered in all, answered per kind, median seconds, tasks left for them."""
    conn = s.connection()
    per_kind = dict(conn.execute(DONE_PER_KIND, {"labeler_id": labeler_id}).all())
    left = conn.execute(N_AVAILABLE, {"labeler_id": labeler_id}).scalar() or 0
    held = conn.execute(HELD, {"labeler_id": labeler_id}).first()
    return {"done": sum(per_kind.values()), "per_kind": per_kind, "left": left + (held is not None)}
