"""Labels from people: the clip pairs of an iteration become pairwise tasks in the workspace database
(see :func:`tether.control.db.store_clip_tasks`), people answer them in ``tether serve`` (two looping
GIFs side by side: left / right / equal / can't tell), and the run waits here, then reads the answers.

An answer is a Comparison row written by the web app; "a" means the left clip (the task's first
response). Every answer of every labeler counts (with ``--overlap N`` a pair is answered N times and
trained on N times); "cant_tell" answers are read but not trained on, as with the synthetic labeler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import func, select

from tether.data import schema as S
from tether.data.store import Store
from tether.errors import TetherError


@dataclass
class WebAnswer:
    """One person's answer to one clip pair: ``pair`` indexes the iteration's pairs."""
    pair: int
    choice: str  # a (left) | b (right) | tie | cant_tell
    labeler: str
    task_id: int
    comparison_id: int
    duration_ms: int | None


def wait_for_tasks(store: Store, task_ids: list[int], *, poll_s: float = 5.0, timeout_s: float | None = None,
                   say: Callable[[str], None] = print, what: str = "") -> int:
    """Block until every task in ``task_ids`` is done (or cancelled by an admin), polling the database
    every ``poll_s`` seconds and saying "waiting for labelers: d/n clip pairs answered" when that
    changes. TetherError after ``timeout_s`` seconds (None: wait for ever). Returns the tasks done."""
    if poll_s <= 0:
        raise TetherError(f"web_poll_seconds must be > 0, got {poll_s}")
    t0, last = time.monotonic(), None
    while True:
        with store.session() as s:
            rows = dict(s.execute(select(S.Task.status, func.count()).where(S.Task.id.in_(task_ids))
                                  .group_by(S.Task.status)).all())
        missing = len(task_ids) - sum(rows.values())
        if missing:
            raise TetherError(f"{missing} of the {len(task_ids)} clip tasks{what} were deleted from the database; "
                              "the run cannot read their labels")
        total, done = len(task_ids) - rows.get("cancelled", 0), rows.get("done", 0)
        if (done, total) != last:
            say(f"waiting for labelers{what}: {done}/{total} clip pairs answered")
            last = (done, total)
        if done >= total:
            return done
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TetherError(f"web labels{what}: {total - done} of {total} clip pairs still unanswered after "
                              f"{timeout_s / 60:.1f} min; `tether control --labeler web --resume` waits again")
        time.sleep(poll_s)


def read_answers(store: Store, task_ids: list[int]) -> list[WebAnswer]:
    """Every answer to the tasks, in the order of ``task_ids`` (then of the answers' ids)."""
    where = {t: n for n, t in enumerate(task_ids)}
    with store.session() as s:
        tasks = {t.id: t for t in s.scalars(select(S.Task).where(S.Task.id.in_(task_ids)))}
        rows = s.execute(select(S.Comparison, S.Labeler.name).join(S.Labeler, S.Labeler.id == S.Comparison.labeler_id)
                         .where(S.Comparison.task_id.in_(task_ids)).order_by(S.Comparison.id)).all()
        out = []
        for c, name in rows:
            shown = list(tasks[c.task_id].response_ids)
            if [c.response_a_id, c.response_b_id] != shown:
                raise TetherError(f"comparison {c.id} of clip task {c.task_id}: responses "
                                  f"{[c.response_a_id, c.response_b_id]} are not the task's {shown}")
            out.append(WebAnswer(where[c.task_id], c.choice, name, c.task_id, c.id, c.duration_ms))
    return sorted(out, key=lambda x: (x.pair, x.comparison_id))
