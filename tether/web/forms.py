"""The bodies a labeler may submit, one pydantic model per task kind.

The HTML forms and the JSON API go through the same models, so a bad value gets the same clear
4xx message (naming the field) either way. Checks that need the task (a ranking must order exactly
the task's responses, flaw categories must be the task's) happen in `queue.submit_label`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_TEXT = 20_000  # characters in a reason, critique or rewrite
MAX_DURATION_MS = 24 * 3600 * 1000
MAX_ITEMS = 1000  # responses in a ranking
MAX_CATEGORY = 200  # characters in a flaw category


class _Label(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    duration_ms: int | None = Field(None, ge=0, le=MAX_DURATION_MS,
                                    description="time the labeler spent on the item")

    @field_validator("duration_ms", mode="before")
    @classmethod
    def _blank_duration(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        """No NUL characters in any text (PostgreSQL refuses them in text columns)."""
        if any("\x00" in x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)):
            raise ValueError("contains a NUL character")
        return v


class PairwiseLabel(_Label):
    """pairwise and ab_eval: which response is better."""
    choice: Literal["a", "b", "tie", "cant_tell"]
    reason: str | None = Field(None, max_length=MAX_TEXT)


class RankLabel(_Label):
    """The task's responses, best first (a list of ids, or "3,1,2" from a form)."""
    order: list[int] = Field(min_length=2, max_length=MAX_ITEMS)

    @field_validator("order", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            parts = [p.strip() for p in v.split(",") if p.strip()]
            return parts
        return v


class RatingLabel(_Label):
    score: int = Field(ge=1, le=5)


class ThumbLabel(_Label):
    up: bool


class FlawsLabel(_Label):
    """Flaw categories that apply; an empty list means "no flaws"."""
    categories: list[Annotated[str, Field(max_length=MAX_CATEGORY)]] = Field(default_factory=list, max_length=64)


class CritiqueLabel(_Label):
    """A critique, a rewrite, or both (the rewrite becomes a demonstration for SFT)."""
    text: str | None = Field(None, max_length=MAX_TEXT)
    rewrite: str | None = Field(None, max_length=MAX_TEXT)


MODELS: dict[str, type[_Label]] = {"pairwise": PairwiseLabel, "ab_eval": PairwiseLabel, "rank": RankLabel,
                                   "rating": RatingLabel, "thumbs": ThumbLabel, "flaws": FlawsLabel,
                                   "critique": CritiqueLabel}


class LabelError(ValueError):
    """A submitted label that cannot be stored; `field` names the culprit when there is one."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field, self.status = field, status


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    """('field X: problem; ...', first field) from a pydantic error."""
    parts, first = [], None
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        first = first or loc
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"field '{loc}': {msg}")
    return "; ".join(parts), first


def parse_label(kind: str, data: dict[str, Any]) -> _Label:
    """Validate a submitted label for a task of `kind`; raises LabelError with a clear message."""
    model = MODELS.get(kind)
    if model is None:
        raise LabelError(f"unknown task kind {kind!r}", "kind")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise LabelError(*validation_message(e)) from None


def form_to_dict(kind: str, form: Any) -> dict[str, Any]:
    """A submitted HTML form (starlette FormData) as the dict `parse_label` expects."""
    data: dict[str, Any] = {k: v for k, v in form.multi_items() if k not in ("csrf_token", "categories", "none")}
    if kind == "flaws":  # checkboxes; the "No flaws" button sends none=1 and means an empty list
        data["categories"] = [] if form.get("none") else [c for c in form.getlist("categories") if c != ""]
    for key in ("reason", "text", "rewrite"):
        if data.get(key) == "":
            data[key] = None
    return data
