"""The workspace database: SQLAlchemy tables for prompts, responses, labelers, every kind of
feedback, labeling tasks and runs.

Schema changes go through alembic migrations (`tether/data/migrations/versions/`); a test checks
that these tables and the migrations agree, so a workspace made by an older tether opens in a newer
one. Free-form fields (sampling parameters, labeler groups, metadata) are JSON.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, MetaData, String
from sqlalchemy import Text, UniqueConstraint
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: tether stores UTC-aware datetimes")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# JSON columns that notice in-place edits (lab.groups["x"] = 1 is saved, not silently lost).
JSONDict = MutableDict.as_mutable(JSON)
JSONList = MutableList.as_mutable(JSON)


class Base(DeclarativeBase):
    # Named constraints, so that later migrations can alter them (SQLite batch mode needs names).
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    type_annotation_map = {dict: JSONDict, list: JSONList, datetime: UTCDateTime}


# Feedback kinds, as stored in `tasks.kind` and named by the CLI and web app.
TASK_KINDS = ("pairwise", "rank", "rating", "thumbs", "flaws", "critique", "ab_eval")
COMPARISON_CHOICES = ("a", "b", "tie", "cant_tell")
LABELER_ROLES = ("labeler", "admin", "simulated", "ai_judge", "import")
RESPONSE_SOURCES = ("sample", "import", "demonstration", "rewrite", "clip")  # clip: a control agent's trajectory
CONTROL_SPLIT = "control"  # prompts standing for a control environment + behaviour (`tether control`)


class Prompt(Base):
    """A prompt. `messages` holds a conversation ([{role, content}], ending with the user's turn);
    prompts imported in TRL's standard (plain text) format have `messages = None` and are used raw."""

    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)  # the last user turn, or the whole raw prompt
    messages: Mapped[list | None] = mapped_column(JSONList, nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)  # de-duplicates imports
    split: Mapped[str] = mapped_column(String(32), default="train", index=True)
    source: Mapped[str | None] = mapped_column(String(512), nullable=True)
    meta: Mapped[dict] = mapped_column(JSONDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    responses: Mapped[list[Response]] = relationship(back_populates="prompt", cascade="all, delete-orphan",
                                                   passive_deletes=True)


class Response(Base):
    """One response to a prompt: sampled from a policy, imported, a labeler's demonstration or rewrite.
    `finished` is False when generation hit the length limit (the text was cut off, no EOS)."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_prompt_round_policy", "prompt_id", "round", "policy"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    messages: Mapped[list | None] = mapped_column(JSONList, nullable=True)  # conversational responses
    source: Mapped[str] = mapped_column(String(32), default="sample")
    policy: Mapped[str] = mapped_column(String(512))  # model name or path
    checkpoint: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    round: Mapped[int] = mapped_column(Integer, default=0, index=True)
    sampling: Mapped[dict] = mapped_column(JSONDict, default=dict)  # temperature, top_p, max_new_tokens, seed...
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    num_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished: Mapped[bool] = mapped_column(Boolean, default=True)
    labeler_id: Mapped[int | None] = mapped_column(ForeignKey("labelers.id"), nullable=True)  # demonstrations
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    prompt: Mapped[Prompt] = relationship(back_populates="responses")


class Labeler(Base):
    """A person, a simulated labeler, an AI judge, or the source of imported labels.
    `groups` is free-form metadata (e.g. {"country": "NZ", "expertise": "medicine"}) so that
    agreement can be broken down by group and bias from a narrow pool shows."""

    __tablename__ = "labelers"
    __table_args__ = (CheckConstraint(f"role IN {LABELER_ROLES}", name="role"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    role: Mapped[str] = mapped_column(String(32), default="labeler")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    invite_token: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    groups: Mapped[dict] = mapped_column(JSONDict, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    """An item to label: which responses, which question, how many labels it needs, how urgent."""

    __tablename__ = "tasks"
    # ix_tasks_queue: the web app's claim reads open tasks of one priority in id order straight off this
    # index, however many tasks are done (a scan of the primary key filtered them one by one)
    __table_args__ = (CheckConstraint(f"kind IN {TASK_KINDS}", name="kind"),
                      Index("ix_tasks_queue", "status", "priority", "id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    response_ids: Mapped[list] = mapped_column(JSONList)  # in the order shown
    labels_needed: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    round: Mapped[int] = mapped_column(Integer, default=0, index=True)
    options: Mapped[dict] = mapped_column(JSONDict, default=dict)  # e.g. flaw categories, A/B policy names
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open | done | cancelled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Assignment(Base):
    """A task handed to one labeler; nobody is given the same task twice."""

    __tablename__ = "assignments"
    # ix_assignments_labeler_status: a labeler's open assignment is found without walking all they answered
    __table_args__ = (UniqueConstraint("task_id", "labeler_id", name="uq_assignments_task_labeler"),
                      Index("ix_assignments_labeler_status", "labeler_id", "status"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="assigned")  # assigned | done | abandoned
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class _Feedback:
    """Columns every feedback row has: who gave it, for which task, when, and how long it took."""

    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), nullable=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    meta: Mapped[dict] = mapped_column(JSONDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Comparison(_Feedback, Base):
    """Pairwise preference between two responses to the same prompt: a, b, tie, or can't tell."""

    __tablename__ = "comparisons"
    __table_args__ = (CheckConstraint(f"choice IN {COMPARISON_CHOICES}", name="choice"),)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    choice: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Ranking(_Feedback, Base):
    """K responses to one prompt ordered best to worst (positions in `ranking_items`)."""

    __tablename__ = "rankings"
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    items: Mapped[list[RankingItem]] = relationship(order_by="RankingItem.position", cascade="all, delete-orphan")

    @property
    def response_ids(self) -> list[int]:
        return [i.response_id for i in self.items]


class RankingItem(Base):
    __tablename__ = "ranking_items"
    __table_args__ = (UniqueConstraint("ranking_id", "position"), UniqueConstraint("ranking_id", "response_id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"), index=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # 0 = best


class Rating(_Feedback, Base):
    """A 1-5 rating of one response."""

    __tablename__ = "ratings"
    __table_args__ = (CheckConstraint("score BETWEEN 1 AND 5", name="score"),)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    score: Mapped[int] = mapped_column(Integer)


class Thumb(_Feedback, Base):
    """Thumbs up (True) or down (False) on one response."""

    __tablename__ = "thumbs"
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    up: Mapped[bool] = mapped_column(Boolean)


class FlawReport(_Feedback, Base):
    """Answers to categorical questions about a response's flaws; an empty list means 'no flaws'."""

    __tablename__ = "flaw_reports"
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    categories: Mapped[list] = mapped_column(JSONList, default=list)


class Critique(_Feedback, Base):
    """Free-text critique of a response and/or a rewrite; a rewrite is also stored as a new
    response (source 'rewrite') so that SFT can learn from it."""

    __tablename__ = "critiques"
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    rewrite_response_id: Mapped[int | None] = mapped_column(ForeignKey("responses.id", ondelete="SET NULL"),
                                                            nullable=True)


class Run(Base):
    """One execution of a stage (sample, sft, rm, ppo, ...): its config, outputs, status and metrics."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    config: Mapped[dict] = mapped_column(JSONDict, default=dict)
    path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    metrics: Mapped[dict] = mapped_column(JSONDict, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
