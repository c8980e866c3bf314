"""Labeling tasks made from stored samples, for the admin page and `tether tasks create`.

- pairwise: random pairs of one prompt's responses (`per_prompt` pairs per prompt);
- rank: `k` of one prompt's responses, in random order;
- rating, thumbs, flaws, critique: one response each (`per_prompt` responses per prompt);
- ab_eval: a blind A/B between two policies: for each prompt that has a response from both, one
  task with the two in random order; which policy is which is kept in `options["policies"]`
  (shown order) and never rendered to the labeler.
A task over the same responses (same kind) as an existing one is not made twice.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.data.feedback import FLAW_CATEGORIES
from tether.errors import TetherError


@dataclass
class TaskSpec:
    """What to make. `round` None means every round; `policies` is (policy_a, policy_b) for ab_eval."""
    kind: str
    labels_needed: int = 1
    priority: float = 0.0
    round: int | None = None
    per_prompt: int = 1
    k: int = 4
    limit: int | None = None
    categories: list[str] = field(default_factory=lambda: list(FLAW_CATEGORIES))
    policies: tuple[str, str] | None = None
    seed: int = 0

    def check(self) -> None:
        if self.kind not in S.TASK_KINDS:
            raise TetherError(f"kind: expected one of {', '.join(S.TASK_KINDS)}, got {self.kind!r}")
        if self.labels_needed < 1:
            raise TetherError(f"labels_needed (overlap): at least 1, got {self.labels_needed}")
        if self.per_prompt < 1:
            raise TetherError(f"per_prompt: at least 1, got {self.per_prompt}")
        if self.kind == "rank" and self.k < 2:
            raise TetherError(f"k: a ranking needs at least 2 responses, got {self.k}")
        if self.limit is not None and self.limit < 1:
            raise TetherError(f"limit: at least 1, got {self.limit}")
        if self.kind == "flaws" and not self.categories:
            raise TetherError("categories: a flaws task needs at least one category")
        if self.kind == "ab_eval" and (not self.policies or len(self.policies) != 2
                                       or self.policies[0] == self.policies[1]):
            raise TetherError("policies: an ab_eval task compares two different policies (policy_a, policy_b)")


def _responses(s: Session, spec: TaskSpec) -> dict[int, list[S.Response]]:
    """Stored responses by prompt (sampled or imported; human rewrites and demonstrations left out)."""
    q = select(S.Response).where(S.Response.source.in_(("sample", "import"))).order_by(S.Response.id)
    if spec.round is not None:
        q = q.where(S.Response.round == spec.round)
    by_prompt: dict[int, list[S.Response]] = defaultdict(list)
    for r in s.scalars(q):
        by_prompt[r.prompt_id].append(r)
    return by_prompt


def create_tasks(s: Session, spec: TaskSpec) -> list[S.Task]:
    """Add the tasks `spec` describes; returns them (flushed, with ids)."""
    spec.check()
    rng = random.Random(spec.seed)
    existing = {frozenset(ids) for (ids,) in s.execute(select(S.Task.response_ids).where(S.Task.kind == spec.kind))}
    made: list[S.Task] = []
    options: dict = {"categories": list(spec.categories)} if spec.kind == "flaws" else {}

    def add(prompt_id: int, shown: list[S.Response], extra: dict | None = None) -> bool:
        key = frozenset(r.id for r in shown)
        if key in existing:
            return False
        existing.add(key)
        made.append(S.Task(kind=spec.kind, prompt_id=prompt_id, response_ids=[r.id for r in shown],
                           labels_needed=spec.labels_needed, priority=spec.priority,
                           round=max(r.round for r in shown), options={**options, **(extra or {})}, status="open"))
        return spec.limit is not None and len(made) >= spec.limit

    for prompt_id, rs in _responses(s, spec).items():
        if spec.kind == "ab_eval":
            pa, pb = spec.policies
            a = [r for r in rs if r.policy == pa]
            b = [r for r in rs if r.policy == pb]
            if not a or not b:
                continue
            shown = [rng.choice(a), rng.choice(b)]
            order = [0, 1] if rng.random() < 0.5 else [1, 0]
            if add(prompt_id, [shown[i] for i in order], {"policies": [(pa, pb)[i] for i in order]}):
                break
        elif spec.kind == "pairwise":
            if len(rs) < 2:
                continue
            pairs = [(x, y) for i, x in enumerate(rs) for y in rs[i + 1:]]
            rng.shuffle(pairs)
            stop = False
            for x, y in pairs[:spec.per_prompt]:
                if add(prompt_id, [x, y] if rng.random() < 0.5 else [y, x]):
                    stop = True
                    break
            if stop:
                break
        elif spec.kind == "rank":
            if len(rs) < 2:
                continue
            if add(prompt_id, rng.sample(rs, min(spec.k, len(rs)))):
                break
        else:
            if any(add(prompt_id, [r]) for r in rng.sample(rs, min(spec.per_prompt, len(rs)))):
                break
    s.add_all(made)
    s.flush()
    return made
