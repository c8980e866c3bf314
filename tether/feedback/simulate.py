"""Label stored samples with simulated labelers, so the loop runs without people.

Each labeling item is a task on one prompt's responses of a round (a pair to compare, all K to
rank, one to rate, thumb or check for flaws), answered by `overlap` different labelers drawn from a
`labeler_pool` (careful, noisy, biased, adversarial, random). Answers go through the same checked
recording functions as people's (`tether.data.feedback`), with their simulated answer times, and
tasks are stored as done, exactly as the web app would leave them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from tether.data import feedback as F
from tether.data import schema as S
from tether.data.store import Store
from tether.errors import TetherError
from tether.feedback.labelers import SimulatedLabeler, labeler_pool

TASK_KIND = {"comparison": "pairwise", "ranking": "rank", "rating": "rating", "thumb": "thumbs", "flaws": "flaws"}


@dataclass
class SimulationConfig:
    labelers: int = 20
    adversarial: int = 3  # always answer the opposite
    random: int = 2  # answer at random, fast
    overlap: int = 3  # labelers per item (agreement needs >= 2)
    items: int | None = None  # labeling items; default: one per prompt
    mix: dict[str, float] = field(default_factory=lambda: {"comparison": 0.6, "ranking": 0.15, "rating": 0.15,
                                                           "thumb": 0.05, "flaws": 0.05})
    critique_rate: float = 0.02  # chance that a labeler also writes a critique
    seed: int = 0


def _stored_labelers(store: Store, s, pool: list[SimulatedLabeler]) -> list[S.Labeler]:
    return [store.labeler(s, lab.name, role="simulated", groups=dict(lab.groups) | {"sim_kind": lab.kind})
            for lab in pool]


def simulate_feedback(store: Store, cfg: SimulationConfig, round: int = 0) -> dict[str, int]:
    """Label the round's sampled responses; returns how many labels of each kind were stored."""
    if cfg.overlap > cfg.labelers:
        raise TetherError(f"overlap {cfg.overlap} is larger than the pool of {cfg.labelers} labelers")
    unknown = set(cfg.mix) - set(TASK_KIND)
    if unknown:
        raise TetherError(f"unknown feedback kinds in mix: {sorted(unknown)}; known: {', '.join(TASK_KIND)}")
    rng = np.random.default_rng(cfg.seed)
    pool = labeler_pool(cfg.labelers, n_adversarial=cfg.adversarial, n_random=cfg.random, seed=cfg.seed)
    kinds, p = list(cfg.mix), np.array(list(cfg.mix.values()), dtype=float)
    counts: dict[str, int] = {}
    with store.session() as s:
        rows = s.execute(select(S.Response, S.Prompt).join(S.Prompt).where(
            S.Response.round == round, S.Response.source == "sample").order_by(S.Response.id)).all()
        by_prompt: dict[int, tuple[S.Prompt, list[S.Response]]] = {}
        for resp, prompt in rows:
            by_prompt.setdefault(prompt.id, (prompt, []))[1].append(resp)
        prompts = [v for v in by_prompt.values() if len(v[1]) >= 2]
        if not prompts:
            raise TetherError(f"no prompt has 2 or more sampled responses in round {round}: run `tether sample` first")
        stored = _stored_labelers(store, s, pool)
        n_items = cfg.items or len(prompts)
        order = rng.permutation(len(prompts))
        for i in range(n_items):
            prompt, responses = prompts[order[i % len(prompts)]]
            kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
            if kind == "comparison":
                shown = [responses[j] for j in rng.choice(len(responses), size=2, replace=False)]
            elif kind == "ranking":
                shown = [responses[j] for j in rng.permutation(len(responses))]
            else:
                shown = [responses[rng.integers(len(responses))]]
            task = S.Task(kind=TASK_KIND[kind], prompt_id=prompt.id, response_ids=[r.id for r in shown],
                          labels_needed=cfg.overlap, round=round, status="done")
            s.add(task)
            s.flush()
            for j in rng.choice(len(pool), size=cfg.overlap, replace=False):
                lab, row = pool[j], stored[j]
                _answer(s, kind, lab, row, prompt.text, shown, task.id)
                s.add(S.Assignment(task_id=task.id, labeler_id=row.id, status="done"))
                counts[kind] = counts.get(kind, 0) + 1
                if rng.random() < cfg.critique_rate:
                    text, ms = lab.critique(prompt.text, shown[0].text, shown[0].finished)
                    F.record_critique(s, row, shown[0].id, text=text, task_id=task.id, duration_ms=int(ms))
                    counts["critique"] = counts.get("critique", 0) + 1
    return counts


def _answer(s, kind: str, lab: SimulatedLabeler, row: S.Labeler, prompt: str, shown: list[S.Response],
            task_id: int) -> None:
    r0 = shown[0]
    if kind == "comparison":
        choice, ms = lab.compare(prompt, r0.text, shown[1].text, r0.finished, shown[1].finished)
        F.record_comparison(s, row, r0.id, shown[1].id, choice, task_id=task_id, duration_ms=int(ms))
    elif kind == "ranking":
        order, ms = lab.rank(prompt, [r.text for r in shown], [r.finished for r in shown])
        F.record_ranking(s, row, [shown[k].id for k in order], task_id=task_id, duration_ms=int(ms))
    elif kind == "rating":
        score, ms = lab.rate(prompt, r0.text, r0.finished)
        F.record_rating(s, row, r0.id, int(score), task_id=task_id, duration_ms=int(ms))
    elif kind == "thumb":
        up, ms = lab.thumb(prompt, r0.text, r0.finished)
        F.record_thumb(s, row, r0.id, bool(up), task_id=task_id, duration_ms=int(ms))
    else:
        flaws, ms = lab.flaws(prompt, r0.text, r0.finished)
        F.record_flaws(s, row, r0.id, list(flaws), task_id=task_id, duration_ms=int(ms))
