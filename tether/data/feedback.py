"""Record feedback, checked: every kind of label goes through these functions, from the web app,
simulated labelers, AI judges or a file, so bad feedback is refused the same way everywhere.

Each function validates against the database (responses exist, belong to the same prompt, values in
range) before adding anything, and raises `FeedbackError` with a clear message. They write in the
caller's transaction and return the new row's id: use them inside one `with store.session()` so that
a batch is stored whole or not at all. The writes are SQLAlchemy Core INSERTs built once, not ORM
objects flushed by the session: the web app stores every click through here (bench/RESULTS.md).
`import_feedback` reads a JSONL file of labels this way. `labeler` is anything with the labeler's `id`
(a `schema.Labeler`, or the web app's row of the logged-in labeler).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.data.store import Store
from tether.errors import InputError, TetherError

FLAW_CATEGORIES = ("cut_off", "repetitive", "too_long", "off_topic", "impolite", "placeholder", "wrong", "unsafe")


class FeedbackError(TetherError):
    """Feedback that cannot be stored as given."""


_r = S.Response.__table__
_RESPONSES = select(_r.c.id, _r.c.prompt_id, _r.c.round).where(_r.c.id.in_(bindparam("ids", expanding=True)))


@cache
def _insert_stmt(table: Table):
    return insert(table).returning(table.c.id)


def _insert(s: Session, model, values: dict) -> int:
    """One row of `model`'s table, inserted in the session's transaction; its new id."""
    return s.connection().execute(_insert_stmt(model.__table__), values).scalar_one()


def _responses(s: Session, ids: list[int]) -> list:
    """Rows (id, prompt_id, round) of the responses, in the order given; FeedbackError for a bad or
    unknown id. Responses added to the session but not yet flushed are found too."""
    if not ids:
        raise FeedbackError("no responses given")
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool):
            raise FeedbackError(f"response id {i!r} is not an integer")
    s.flush()  # a no-op unless ORM objects are pending
    found = {r.id: r for r in s.connection().execute(_RESPONSES, {"ids": ids})}
    missing = [i for i in ids if i not in found]
    if missing:
        raise FeedbackError(f"no response with id {', '.join(map(str, missing))}")
    return [found[i] for i in ids]


def _same_prompt(rs: list[S.Response]) -> int:
    prompts = {r.prompt_id for r in rs}
    if len(prompts) > 1:
        detail = ", ".join(f"response {r.id} answers prompt {r.prompt_id}" for r in rs)
        raise FeedbackError(f"responses to different prompts cannot be compared ({detail})")
    return prompts.pop()


def _common(labeler: S.Labeler, rs: list, task_id, duration_ms, round, meta) -> dict:
    if duration_ms is not None and (not isinstance(duration_ms, int) or duration_ms < 0):
        raise FeedbackError(f"duration_ms must be a non-negative integer, got {duration_ms!r}")
    return dict(labeler_id=labeler.id, task_id=task_id, duration_ms=duration_ms,
                round=max(r.round for r in rs) if round is None else round, meta=meta or {})


def record_comparison(s: Session, labeler: S.Labeler, response_a: int, response_b: int, choice: str,
                      reason: str | None = None, task_id: int | None = None, duration_ms: int | None = None,
                      round: int | None = None, meta: dict | None = None) -> int:
    """A pairwise judgement: 'a', 'b', 'tie' or 'cant_tell', between two responses to one prompt."""
    if choice not in S.COMPARISON_CHOICES:
        raise FeedbackError(f"choice {choice!r} is not one of {', '.join(S.COMPARISON_CHOICES)}")
    if response_a == response_b:
        raise FeedbackError(f"response {response_a} cannot be compared with itself")
    rs = _responses(s, [response_a, response_b])
    _same_prompt(rs)
    return _insert(s, S.Comparison, dict(response_a_id=response_a, response_b_id=response_b, choice=choice,
                                         reason=reason, **_common(labeler, rs, task_id, duration_ms, round, meta)))


def record_ranking(s: Session, labeler: S.Labeler, response_ids: list[int], task_id: int | None = None,
                   duration_ms: int | None = None, round: int | None = None, meta: dict | None = None) -> int:
    """K >= 2 responses to one prompt, best first."""
    if not isinstance(response_ids, list) or len(response_ids) < 2:
        raise FeedbackError("a ranking needs a list of at least 2 response ids, best first")
    seen = set()
    for i in response_ids:
        if i in seen:
            raise FeedbackError(f"the ranking names response {i} twice")
        seen.add(i)
    rs = _responses(s, response_ids)
    prompt_id = _same_prompt(rs)
    ranking_id = _insert(s, S.Ranking, dict(prompt_id=prompt_id, **_common(labeler, rs, task_id, duration_ms, round,
                                                                            meta)))
    s.connection().execute(insert(S.RankingItem.__table__), [dict(ranking_id=ranking_id, response_id=i, position=p)
                                                             for p, i in enumerate(response_ids)])
    return ranking_id


def record_rating(s: Session, labeler: S.Labeler, response_id: int, score: int, task_id: int | None = None,
                  duration_ms: int | None = None, round: int | None = None, meta: dict | None = None) -> int:
    """A 1-5 rating of one response."""
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        raise FeedbackError(f"rating {score!r} is outside 1-5 (a whole number from 1 to 5)")
    rs = _responses(s, [response_id])
    return _insert(s, S.Rating, dict(response_id=response_id, score=score,
                                     **_common(labeler, rs, task_id, duration_ms, round, meta)))


def record_thumb(s: Session, labeler: S.Labeler, response_id: int, up: bool, task_id: int | None = None,
                 duration_ms: int | None = None, round: int | None = None, meta: dict | None = None) -> int:
    """Thumbs up (True) or down (False)."""
    if not isinstance(up, bool):
        raise FeedbackError(f"thumb must be true (up) or false (down), got {up!r}")
    rs = _responses(s, [response_id])
    return _insert(s, S.Thumb, dict(response_id=response_id, up=up, **_common(labeler, rs, task_id, duration_ms, round,
                                                                               meta)))


def record_flaws(s: Session, labeler: S.Labeler, response_id: int, categories: list[str],
                 allowed: tuple[str, ...] | list[str] = FLAW_CATEGORIES, task_id: int | None = None,
                 duration_ms: int | None = None, round: int | None = None,
                 meta: dict | None = None) -> int:
    """Which flaw categories apply to a response; an empty list means the labeler saw none."""
    if not isinstance(categories, list):
        raise FeedbackError("flaw categories must be a list (empty for 'no flaws')")
    unknown = [c for c in categories if c not in allowed]
    if unknown:
        raise FeedbackError(f"unknown flaw categories {unknown}; known: {', '.join(allowed)}")
    if len(set(categories)) != len(categories):
        raise FeedbackError(f"flaw categories repeat: {categories}")
    rs = _responses(s, [response_id])
    return _insert(s, S.FlawReport, dict(response_id=response_id, categories=categories,
                                         **_common(labeler, rs, task_id, duration_ms, round, meta)))


def record_critique(s: Session, labeler: S.Labeler, response_id: int, text: str | None = None,
                    rewrite: str | None = None, task_id: int | None = None, duration_ms: int | None = None,
                    round: int | None = None, meta: dict | None = None) -> int:
    """A free-text critique and/or a rewrite; the rewrite is also stored as a demonstration-like
    response (source 'rewrite', policy 'human') to the same prompt, for SFT."""
    if not (text and text.strip()) and not (rewrite and rewrite.strip()):
        raise FeedbackError("a critique needs a text, a rewrite, or both")
    (orig,) = _responses(s, [response_id])
    common = _common(labeler, [orig], task_id, duration_ms, round, meta)
    rewrite_id = None
    if rewrite and rewrite.strip():
        rewrite_id = _insert(s, S.Response, dict(prompt_id=orig.prompt_id, text=rewrite, source="rewrite",
                                                 policy="human", labeler_id=labeler.id, round=common["round"],
                                                 finished=True))
    return _insert(s, S.Critique, dict(response_id=response_id, text=text, rewrite_response_id=rewrite_id, **common))


# --- a file of labels ---------------------------------------------------------------------------
KINDS = {"comparison": record_comparison, "ranking": record_ranking, "rating": record_rating,
         "thumb": record_thumb, "flaws": record_flaws, "critique": record_critique}
FIELDS = {"comparison": ("response_a", "response_b", "choice"), "ranking": ("response_ids",),
          "rating": ("response_id", "score"), "thumb": ("response_id", "up"),
          "flaws": ("response_id", "categories"), "critique": ("response_id",)}
OPTIONAL = {"comparison": ("reason",), "critique": ("text", "rewrite")}
COMMON = ("labeler", "kind", "duration_ms", "round", "task_id", "meta")


def import_feedback(store: Store, path: str | Path) -> dict[str, int]:
    """Labels from JSONL, one per line: {"kind": "comparison"|"ranking"|"rating"|"thumb"|"flaws"|
    "critique", "labeler": name, ...kind's fields}. All lines are stored, or (on any bad line) none,
    with an error naming the file and line. Unknown labelers are created with role 'labeler'."""
    p = Path(path)
    if not p.is_file():
        raise TetherError(f"{p}: file not found")
    counts: dict[str, int] = {}
    with store.session() as s:
        labelers: dict[str, S.Labeler] = {}
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row: dict[str, Any] = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(p, n, f"not valid JSON ({e.msg} at column {e.colno})") from None
                kind = row.get("kind") if isinstance(row, dict) else None
                if kind not in KINDS:
                    raise InputError(p, n, f"field 'kind': expected one of {', '.join(KINDS)}, got {kind!r}")
                if not isinstance(row.get("labeler"), str) or not row["labeler"].strip():
                    raise InputError(p, n, "field 'labeler': expected a labeler name")
                missing = [k for k in FIELDS[kind] if k not in row]
                if missing:
                    raise InputError(p, n, f"missing field '{missing[0]}' for a {kind}")
                unknown = set(row) - set(FIELDS[kind]) - set(OPTIONAL.get(kind, ())) - set(COMMON)
                if unknown:
                    raise InputError(p, n, f"unknown field '{sorted(unknown)[0]}' for a {kind}")
                name = row.pop("labeler")
                if name not in labelers:
                    labelers[name] = store.labeler(s, name)
                row.pop("kind")
                try:
                    KINDS[kind](s, labelers[name], *[row.pop(k) for k in FIELDS[kind]], **row)
                except FeedbackError as e:
                    raise InputError(p, n, str(e)) from None
                counts[kind] = counts.get(kind, 0) + 1
                s.flush()
    return counts
