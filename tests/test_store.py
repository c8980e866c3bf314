"""The workspace database: migrations, round-trips of every feedback kind, constraints, and Store helpers,
on SQLite and on PostgreSQL."""

from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from tether.data import schema as S
from tether.data.store import Store, _alembic_config, normalise_url
from tether.errors import TetherError

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def _schema_diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), S.Base.metadata)


def _norm(value):
    """Datetimes as aware UTC (SQLite hands them back naive, in UTC)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


def _row(obj) -> dict:
    return {a.key: _norm(getattr(obj, a.key)) for a in obj.__mapper__.column_attrs}


def _base_rows(store: Store) -> dict[str, int]:
    """A prompt, one response, a labeler and a task; returns their ids."""
    with store.session() as s:
        p, _ = store.get_or_add_prompt(s, "Name a colour.", CONVERSATION)
        r = S.Response(prompt=p, text="Blue.", policy="tiny")
        s.add(r)
        lab = store.labeler(s, "ann")
        t = S.Task(kind="rating", prompt_id=p.id, response_ids=[r.id])
        s.add(t)
        s.flush()
        return {"prompt": p.id, "response": r.id, "labeler": lab.id, "task": t.id}


# --- migrations --------------------------------------------------------------------------------

def test_fresh_database_is_at_head_and_matches_schema(store):
    """Store migrates a new database to the head revision, and the migrated tables equal the ORM's."""
    assert store.revision() == _script().get_current_head()
    assert _schema_diff(store.engine) == []


def test_step_by_step_upgrade_reaches_head(db_url):
    """Applying each revision in turn from an empty database ends at head with the ORM's schema."""
    store = Store(db_url, migrate=False)
    try:
        assert store.revision() is None
        revisions = list(reversed(list(_script().walk_revisions())))
        assert revisions[0].down_revision is None
        for rev in revisions:
            store.upgrade(rev.revision)
            assert store.revision() == rev.revision
        assert store.revision() == _script().get_current_head()
        assert _schema_diff(store.engine) == []
    finally:
        store.close()


def test_downgrade_to_base_drops_every_table(store):
    """Downgrading to base leaves only alembic_version, with no revision in it."""
    assert len(inspect(store.engine).get_table_names()) > 1
    cfg = _alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert inspect(store.engine).get_table_names() == ["alembic_version"]
    assert store.revision() is None


def test_database_from_newer_tether_is_refused_untouched(db_url):
    """A database at a revision this tether does not know is refused, and left as it was."""
    store = Store(db_url)
    with store.session() as s:
        store.get_or_add_prompt(s, "hi", None)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff99'"))
    tables = sorted(inspect(store.engine).get_table_names())
    store.close()

    with pytest.raises(TetherError, match="newer tether") as err:
        Store(db_url)
    assert "ffff99" in str(err.value)

    store = Store(db_url, migrate=False)
    try:
        assert store.revision() == "ffff99"
        assert sorted(inspect(store.engine).get_table_names()) == tables
        assert store.counts()["prompts"] == 1
    finally:
        store.close()


# --- round trip ----------------------------------------------------------------------------------

def test_every_feedback_kind_round_trips(store, db_url):
    """Prompts, responses, labelers, tasks and all feedback kinds read back equal from a new Store."""
    with store.session() as s:
        p, created = store.get_or_add_prompt(s, "Name a colour.", CONVERSATION, split="test", source="f.jsonl",
                                             meta={"topic": "colours"})
        assert created
        resp = [S.Response(prompt=p, text=f"Colour {i}.", policy="tiny", round=1, seed=100 + i,
                           sampling={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8},
                           num_tokens=3, finished=i != 3) for i in range(4)]
        s.add_all(resp)
        lab = store.labeler(s, "ann", groups={"country": "NZ"})
        task = S.Task(kind="pairwise", prompt_id=p.id, response_ids=[resp[0].id, resp[1].id], labels_needed=2,
                      priority=0.5, round=1, options={"ask_reason": True})
        s.add(task)
        s.flush()
        other = store.labeler(s, "bob", role="simulated")
        s.add_all([S.Assignment(task_id=task.id, labeler_id=lab.id),
                   S.Assignment(task_id=task.id, labeler_id=other.id, status="done", completed_at=S.utcnow())])
        for choice in S.COMPARISON_CHOICES:
            s.add(S.Comparison(labeler_id=lab.id, task_id=task.id, round=1, response_a_id=resp[0].id,
                               response_b_id=resp[1].id, choice=choice, reason=f"because {choice}",
                               duration_ms=1200))
        best_to_worst = [resp[2].id, resp[0].id, resp[3].id, resp[1].id]
        ranking = S.Ranking(labeler_id=lab.id, prompt_id=p.id, round=1)
        # added out of order: reading back must still give positions 0..3
        ranking.items = [S.RankingItem(response_id=rid, position=pos)
                         for pos, rid in reversed(list(enumerate(best_to_worst)))]
        s.add(ranking)
        s.add(S.Rating(labeler_id=lab.id, response_id=resp[0].id, score=4))
        s.add(S.Thumb(labeler_id=lab.id, response_id=resp[1].id, up=False))
        s.add(S.FlawReport(labeler_id=lab.id, response_id=resp[2].id, categories=["verbose"]))
        s.add(S.FlawReport(labeler_id=lab.id, response_id=resp[3].id, categories=[]))
        rewrite = S.Response(prompt=p, text="Red.", policy="human", source="rewrite", labeler_id=lab.id)
        s.add(rewrite)
        s.flush()
        s.add(S.Critique(labeler_id=lab.id, response_id=resp[3].id, text="Cut off.", rewrite_response_id=rewrite.id))
        s.flush()
        models = [S.Prompt, S.Response, S.Labeler, S.Task, S.Assignment, S.Comparison, S.Ranking, S.RankingItem,
                  S.Rating, S.Thumb, S.FlawReport, S.Critique]
        written = {m: [_row(o) for o in s.scalars(select(m).order_by(m.id))] for m in models}
    store.close()

    again = Store(db_url)
    try:
        with again.session() as s:
            for m in models:
                assert [_row(o) for o in s.scalars(select(m).order_by(m.id))] == written[m], m.__tablename__
            lab = s.scalar(select(S.Labeler).where(S.Labeler.name == "ann"))
            assert lab.groups == {"country": "NZ"} and lab.role == "labeler" and lab.active is True
            r0 = s.get(S.Response, best_to_worst[1])
            assert r0.sampling["temperature"] == 0.7 and r0.seed == 100 and r0.round == 1
            assert [r.finished for r in s.scalars(select(S.Response).where(S.Response.source == "sample")
                                                  .order_by(S.Response.id))] == [True, True, True, False]
            assert s.scalar(select(S.Prompt)).messages == CONVERSATION
            assert sorted(c.choice for c in s.scalars(select(S.Comparison))) == sorted(S.COMPARISON_CHOICES)
            assert s.scalar(select(S.Ranking)).response_ids == best_to_worst
            assert s.scalar(select(S.Rating)).score == 4
            assert s.scalar(select(S.Thumb)).up is False
            assert [f.categories for f in s.scalars(select(S.FlawReport).order_by(S.FlawReport.id))] == [["verbose"], []]
            crit = s.scalar(select(S.Critique))
            rw = s.get(S.Response, crit.rewrite_response_id)
            assert crit.text == "Cut off." and rw.source == "rewrite" and rw.text == "Red."
            assert {a.status for a in s.scalars(select(S.Assignment))} == {"assigned", "done"}
        assert again.counts() == {"prompts": 1, "responses": 5, "labelers": 2, "comparisons": 4, "rankings": 1,
                                  "ratings": 1, "thumbs": 1, "flaw_reports": 2, "critiques": 1, "tasks": 1,
                                  "runs": 0}
    finally:
        again.close()


# --- constraints -----------------------------------------------------------------------------------

BAD_ROWS = {
    "rating_score_6": lambda ids: S.Rating(labeler_id=ids["labeler"], response_id=ids["response"], score=6),
    "choice_maybe": lambda ids: S.Comparison(labeler_id=ids["labeler"], response_a_id=ids["response"],
                                             response_b_id=ids["response"], choice="maybe"),
    "task_assigned_twice": lambda ids: S.Assignment(task_id=ids["task"], labeler_id=ids["labeler"]),
    "missing_prompt": lambda ids: S.Response(prompt_id=ids["prompt"] + 999, text="x", policy="tiny"),
    "role_god": lambda ids: S.Labeler(name="zeus", role="god"),
}


@pytest.mark.parametrize("bad", list(BAD_ROWS), ids=list(BAD_ROWS))
def test_constraint_rejects_bad_row(store, bad):
    """The database itself refuses rows that break a check, unique or foreign-key constraint."""
    ids = _base_rows(store)
    with store.session() as s:
        s.add(S.Assignment(task_id=ids["task"], labeler_id=ids["labeler"]))
    before = store.counts()
    with pytest.raises(IntegrityError):
        with store.session() as s:
            s.add(BAD_ROWS[bad](ids))
    assert store.counts() == before


def test_failed_transaction_writes_nothing(store):
    """An error late in a session rolls back the rows added earlier in it."""
    with pytest.raises(IntegrityError):
        with store.session() as s:
            p, _ = store.get_or_add_prompt(s, "hi", None)
            lab = store.labeler(s, "ann")
            r = S.Response(prompt=p, text="hello", policy="tiny")
            s.add(r)
            s.flush()
            s.add(S.Rating(labeler_id=lab.id, response_id=r.id, score=0))
            s.flush()
    assert set(store.counts().values()) == {0}


# --- helpers -----------------------------------------------------------------------------------------

def test_get_or_add_prompt_deduplicates(store):
    """The same conversation is stored once; a raw prompt with the same text is a different prompt."""
    with store.session() as s:
        p1, c1 = store.get_or_add_prompt(s, "Name a colour.", CONVERSATION)
        p2, c2 = store.get_or_add_prompt(s, "Name a colour.", [dict(m) for m in CONVERSATION], split="test")
        raw, c3 = store.get_or_add_prompt(s, "Name a colour.", None)
        raw2, c4 = store.get_or_add_prompt(s, "Name a colour.", None)
        assert (c1, c2, c3, c4) == (True, False, True, False)
        assert p1.id == p2.id and raw.id == raw2.id and raw.id != p1.id
        assert raw.messages is None
    assert store.counts()["prompts"] == 2


def test_sqlite_uses_wal_and_foreign_keys(tmp_path):
    """SQLite connections run in WAL mode with foreign keys enforced."""
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()


def test_runs_record_status_config_and_metrics(store):
    """start_run stores a running run; finish_run sets its status, metrics and finish time."""
    start = datetime.now(timezone.utc)
    run_id = store.start_run("sft", 2, {"lr": 1e-5, "epochs": 1}, path="runs/sft-2")
    failed_id = store.start_run("rm", 2, {})
    with store.session() as s:
        run = s.get(S.Run, run_id)
        assert (run.status, run.round, run.config, run.path, run.finished_at) == (
            "running", 2, {"lr": 1e-5, "epochs": 1}, "runs/sft-2", None)
    store.finish_run(run_id, metrics={"loss": 0.25})
    store.finish_run(failed_id, status="failed")
    with store.session() as s:
        run, failed = s.get(S.Run, run_id), s.get(S.Run, failed_id)
        assert (run.status, run.metrics, run.stage) == ("done", {"loss": 0.25}, "sft")
        assert start <= _norm(run.finished_at) <= datetime.now(timezone.utc)
        assert start <= _norm(run.started_at) <= _norm(run.finished_at)
        assert (failed.status, failed.metrics) == ("failed", {})
        assert failed.finished_at is not None


def test_plain_postgresql_url_uses_psycopg(fresh_pg_url):
    """postgresql:// and postgres:// URLs are opened with psycopg 3."""
    plain = fresh_pg_url.replace("postgresql+psycopg://", "postgresql://")
    assert normalise_url(plain) == fresh_pg_url
    assert normalise_url(plain.replace("postgresql://", "postgres://")) == fresh_pg_url
    store = Store(plain)
    try:
        assert store.engine.dialect.driver == "psycopg"
        assert store.revision() == _script().get_current_head()
    finally:
        store.close()


def test_bad_url_is_a_tether_error():
    """An unknown database scheme is reported as a TetherError naming the URL."""
    with pytest.raises(TetherError, match="notadb://x"):
        Store("notadb://x")


def test_deleting_a_prompt_deletes_its_responses_and_feedback(store):
    """ON DELETE CASCADE is honoured through the ORM: no orphaned responses or comparisons remain."""
    with store.session() as s:
        p, _ = store.get_or_add_prompt(s, "Name a colour.", CONVERSATION)
        a, b = S.Response(prompt_id=p.id, text="red", policy="x"), S.Response(prompt_id=p.id, text="blue", policy="x")
        s.add_all([a, b])
        s.flush()
        s.add(S.Comparison(labeler_id=store.labeler(s, "ann").id, response_a_id=a.id, response_b_id=b.id,
                           choice="a"))
    with store.session() as s:
        s.delete(s.scalar(select(S.Prompt)))
    counts = store.counts()
    assert (counts["prompts"], counts["responses"], counts["comparisons"]) == (0, 0, 0)


def test_in_place_json_edits_are_saved_and_datetimes_are_utc(store):
    with store.session() as s:
        store.labeler(s, "ann", groups={"country": "NZ"})
    with store.session() as s:
        lab = s.scalar(select(S.Labeler))
        lab.groups["language"] = "mi"
    with store.session() as s:
        lab = s.scalar(select(S.Labeler))
        assert lab.groups == {"country": "NZ", "language": "mi"}
        assert lab.created_at.tzinfo is not None and lab.created_at.utcoffset().total_seconds() == 0
