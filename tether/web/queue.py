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
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Iterator

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.data.feedback import (FLAW_CATEGORIES, FeedbackError, record_comparison, record_critique, record_flaws,
                                  record_ranking, record_rating, record_thumb)
from tether.data.store import Store
from tether.web.forms import LabelError, parse_label

A, T = S.Assignment, S.Task
ACTIVE = ("assigned", "done")  # assignment states that hold a slot


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
            self._levels = list(s.scalars(select(T.priority).where(T.status == "open").distinct()
                                          .order_by(T.priority.desc())))
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
    res = s.execute(update(A).where(A.status == "assigned", A.assigned_at < cutoff)
                    .values(status="abandoned").execution_options(synchronize_session=False))
    return res.rowcount or 0


def _taken(task_id) -> select:
    return select(func.count()).select_from(A).where(A.task_id == task_id, A.status.in_(ACTIVE)).scalar_subquery()


def _available(labeler_id: int):
    """Open tasks with a free slot that this labeler has not done and does not hold."""
    mine = exists().where(A.task_id == T.id, A.labeler_id == labeler_id, A.status.in_(ACTIVE))
    return and_(T.status == "open", ~mine, _taken(T.id) < T.labels_needed)


def _next_query(db: "Database", labeler_id: int, level: float, skip: list[int]):
    """The oldest available task of one priority level. On SQLite it walks the status index (open
    tasks in id order) and stops at the first match: no sort, and done tasks are never visited."""
    q = select(T).where(_available(labeler_id), T.priority == level)
    if skip:
        q = q.where(T.id.not_in(skip))
    if db.sqlite:
        q = q.with_hint(T, "INDEXED BY ix_tasks_status", "sqlite")
    return q.order_by(T.id).limit(1)


def current_assignment(s: Session, labeler_id: int) -> S.Assignment | None:
    """The labeler's unanswered assignment on an open task, oldest first."""
    return s.scalar(select(A).join(T, T.id == A.task_id)
                    .where(A.labeler_id == labeler_id, A.status == "assigned", T.status == "open")
                    .order_by(A.assigned_at, A.id).limit(1))


def claim_next(db: Database, s: Session, labeler_id: int) -> S.Task | None:
    """The labeler's next task (their current one if they hold one), or None when the queue is empty.

    On PostgreSQL call it in a transaction that holds no task locks yet (not after a submission
    that marked a task done), or two workers could each wait for the other's task: each candidate
    is locked inside a savepoint, and a candidate found full is released at once by rolling the
    savepoint back, so a claim holds at most the one task lock it is taking."""
    now = now_utc()
    db.maybe_reclaim(s, now)
    held = current_assignment(s, labeler_id)
    if held is not None:
        return s.get(T, held.task_id)
    task, skip, tried = None, [], None
    for levels in (db.levels(s), db.levels(s, fresh=True)):
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
    row = s.scalar(select(A).where(A.task_id == task.id, A.labeler_id == labeler_id))
    if row is None:
        s.add(A(task_id=task.id, labeler_id=labeler_id, status="assigned", assigned_at=now))
    else:  # the labeler abandoned it earlier: revive the same row
        row.status, row.assigned_at, row.completed_at = "assigned", now, None
    s.flush()
    if not db.sqlite:
        s.info.pop("claim_savepoint").commit()
    return task


def _lock_candidate(db: Database, s: Session, labeler_id: int, level: float, skip: list[int],
                    wait: bool) -> S.Task | None:
    """The first available task of a priority level; on PostgreSQL locked (FOR UPDATE, inside a
    savepoint kept in `s.info` for the caller to commit) and re-counted under the lock."""
    for _ in range(50):
        q = _next_query(db, labeler_id, level, skip)
        if db.sqlite:
            return s.scalar(q)
        savepoint = s.begin_nested()
        task = s.scalar(q.with_for_update(skip_locked=not wait, of=T))
        if task is None:
            savepoint.rollback()
            return None
        if s.scalar(select(_taken(task.id))) < task.labels_needed:
            s.info["claim_savepoint"] = savepoint
            return task
        skip.append(task.id)  # filled by a worker that committed after our snapshot
        savepoint.rollback()  # releases the task's row lock
    return None


def assigned_task(s: Session, labeler_id: int, task_id: int) -> tuple[S.Task, S.Assignment]:
    """The task if it is in this labeler's queue; LabelError 404 otherwise (whose task it is
    stays hidden)."""
    row = s.execute(select(T, A).join(A, A.task_id == T.id)
                    .where(T.id == task_id, A.labeler_id == labeler_id)).first()
    if row is None:
        raise LabelError(f"task {task_id} is not in your queue", "task_id", status=404)
    return row[0], row[1]


def _record(s: Session, labeler: S.Labeler, task: S.Task, label, duration_ms: int) -> object:
    """Store `label` for `task` through tether.data.feedback (validated there against the database)."""
    ids, kind = list(task.response_ids), task.kind
    common = dict(task_id=task.id, duration_ms=duration_ms, round=task.round)
    if kind in ("pairwise", "ab_eval"):
        meta = {"kind": kind}
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


def submit_label(s: Session, labeler: S.Labeler, task_id: int, data: dict) -> tuple[S.Task, object]:
    """Store the labeler's answer (`data`, checked by `forms.parse_label` for the task's kind) to
    a task they hold; the task is done once it has its labels. Returns (task, feedback row).

    LabelError: 404 not their task, 409 already answered or timed out, 422 invalid answer."""
    # Answers to one task take turns (a row lock on PostgreSQL; SQLite writes are serialised anyway), so
    # that the last of several simultaneous answers counts the others and marks the task done.
    s.execute(select(T.id).where(T.id == task_id).with_for_update())
    task, assignment = assigned_task(s, labeler.id, task_id)
    if assignment.status == "done":
        raise LabelError(f"task {task_id}: you already answered it", "task_id", status=409)
    if assignment.status == "abandoned" or task.status != "open":
        raise LabelError(f"task {task_id}: it timed out (or was closed) and went back to the queue; "
                         "take the next one", "task_id", status=409)
    label = parse_label(task.kind, data)
    now = now_utc()
    done = s.execute(update(A).where(A.id == assignment.id, A.status == "assigned")
                     .values(status="done", completed_at=now).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise LabelError(f"task {task_id}: you already answered it", "task_id", status=409)
    duration = label.duration_ms
    if duration is None:
        duration = max(0, int((now - assignment.assigned_at).total_seconds() * 1000))
    try:
        row = _record(s, labeler, task, label, duration)
        s.flush()
    except FeedbackError as e:
        raise LabelError(str(e)) from None
    n_done = 1 if task.labels_needed <= 1 else s.scalar(
        select(func.count()).select_from(A).where(A.task_id == task.id, A.status == "done"))
    if n_done >= task.labels_needed:
        task.status = "done"
    return task, row


def progress(s: Session, labeler_id: int) -> dict:
    """A labeler's counts: answered in all, answered per kind, median seconds, tasks left for them."""
    per_kind = dict(s.execute(select(T.kind, func.count()).join(A, A.task_id == T.id)
                              .where(A.labeler_id == labeler_id, A.status == "done").group_by(T.kind)).all())
    left = s.scalar(select(func.count()).select_from(T).where(_available(labeler_id))) or 0
    held = current_assignment(s, labeler_id)
    return {"done": sum(per_kind.values()), "per_kind": per_kind, "left": left + (held is not None)}
