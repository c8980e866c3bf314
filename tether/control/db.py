"""Clip comparisons in the workspace database, beside language-model feedback, with no new tables:

- one Prompt per (environment, behaviour), split "control", e.g. text "control: Pendulum-v1 / spin_clockwise";
- one Response per labelled clip (source "clip", policy "control:<run folder>"), whose ``sampling``
  JSON describes the clip: ``{"kind": "control_clip", "env_id", "file", "clip", "env_index",
  "start_step", "length", "iteration"}``; the arrays (reward-net inputs, simulator states for video)
  live in ``file`` (a ``clips.npz`` in the run folder, relative to the workspace) at index ``clip``;
- one Comparison per answer, by the labeler (role "simulated" for the synthetic one), ``meta`` holding
  the true returns the synthetic labeler saw and the selection's disagreement score;
- with ``--labeler web``: one pairwise Task per pair asked (``options["control"]`` names the run,
  iteration and pair), answered by people in ``tether serve``; their Comparisons carry the task id.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tether.data import schema as S
from tether.data.store import Store

SPLIT = S.CONTROL_SPLIT  # keeps clip feedback out of language-model training (tether.feedback.collect)


def _prompt(s: Session, env_id: str, behaviour: str) -> S.Prompt:
    prompt, _ = Store.get_or_add_prompt(s, f"control: {env_id} / {behaviour}", None, split=SPLIT,
                                        source="tether control",
                                        meta={"kind": "control", "env_id": env_id, "behaviour": behaviour})
    return prompt


def _add_clips(s: Session, prompt: S.Prompt, *, env_id: str, run_name: str, run_id: int | None, clips_file: str,
               fragment_length: int, clip_info: dict[int, dict], clips, round: int, known: dict[int, int]) -> None:
    """Add a Response for each clip index in ``clips`` not yet in ``known`` (updated in place)."""
    for k in clips:
        if k in known:
            continue
        info = clip_info[k]
        r = S.Response(prompt_id=prompt.id, source="clip", policy=f"control:{run_name}", round=round,
                       text=f"{env_id} clip {k}: env {info['env_index']}, steps {info['start_step']}-"
                            f"{info['start_step'] + fragment_length - 1}",
                       sampling={"kind": "control_clip", "env_id": env_id, "file": clips_file, "clip": int(k),
                                 "length": fragment_length, **info},
                       num_tokens=fragment_length, finished=True, run_id=run_id)
        s.add(r)
        s.flush()
        known[k] = r.id


def store_comparisons(store: Store, *, env_id: str, behaviour: str, run_name: str, run_id: int | None,
                      clips_file: str, fragment_length: int, clip_info: dict[int, dict],
                      pairs: list[tuple[int, int, str, dict]], labeler: str, labeler_role: str = "simulated",
                      round: int = 0, known: dict[int, int] | None = None) -> dict[int, int]:
    """Store ``pairs`` (clip index a, clip index b, choice, meta) and the clips they name.

    ``clip_info[k]`` has the clip's env_index, start_step and iteration; ``known`` maps clip indices
    already stored to their response ids (updated and returned, so a clip is stored once)."""
    known = dict(known or {})
    with store.session() as s:
        prompt = _prompt(s, env_id, behaviour)
        lab = Store.labeler(s, labeler, role=labeler_role)
        _add_clips(s, prompt, env_id=env_id, run_name=run_name, run_id=run_id, clips_file=clips_file,
                   fragment_length=fragment_length, clip_info=clip_info, round=round, known=known,
                   clips=[k for a, b, _, _ in pairs for k in (a, b)])
        for a, b, choice, meta in pairs:
            s.add(S.Comparison(labeler_id=lab.id, response_a_id=known[a], response_b_id=known[b], choice=choice,
                               round=round, meta=meta))
    return known


def store_clip_tasks(store: Store, *, env_id: str, behaviour: str, run_name: str, run_id: int | None,
                     clips_file: str, fragment_length: int, clip_info: dict[int, dict], pairs: list[tuple[int, int]],
                     iteration: int, labels_needed: int = 1, priority: float = 0.0, round: int = 0,
                     known: dict[int, int] | None = None) -> tuple[list[int], dict[int, int]]:
    """Store the clips of ``pairs`` (clip index a, clip index b) and one pairwise Task per pair, for
    people in ``tether serve`` (each answered by ``labels_needed`` labelers). Clip a is shown on the
    left (answer "a"), clip b on the right. Returns (task ids in the order of ``pairs``, known)."""
    known = dict(known or {})
    if labels_needed < 1:
        raise ValueError(f"overlap (labels_needed) must be >= 1, got {labels_needed}")
    with store.session() as s:
        prompt = _prompt(s, env_id, behaviour)
        _add_clips(s, prompt, env_id=env_id, run_name=run_name, run_id=run_id, clips_file=clips_file,
                   fragment_length=fragment_length, clip_info=clip_info, round=round, known=known,
                   clips=[k for pair in pairs for k in pair])
        tasks = [S.Task(kind="pairwise", prompt_id=prompt.id, response_ids=[known[a], known[b]],
                        labels_needed=labels_needed, priority=priority, round=round, status="open",
                        options={"control": {"run": run_name, "iteration": iteration, "pair": n}})
                 for n, (a, b) in enumerate(pairs)]
        s.add_all(tasks)
        s.flush()
        ids = [t.id for t in tasks]
    return ids, known


def forget_after(store: Store, run_name: str, iteration: int) -> int:
    """Delete the clips (and, by cascade, the comparisons) that run ``run_name`` stored after
    ``iteration``, and the web tasks over them: what a run killed after writing them but before its
    checkpoint left behind. Returns how many clips were deleted."""
    with store.session() as s:
        rows = s.scalars(select(S.Response).where(S.Response.policy == f"control:{run_name}")).all()
        gone = [r for r in rows if (r.sampling or {}).get("iteration", -1) > iteration]
        gone_ids = {r.id for r in gone}
        if gone_ids:
            prompt_ids = {r.prompt_id for r in gone}
            stale = [t.id for t in s.scalars(select(S.Task).where(S.Task.prompt_id.in_(prompt_ids)))
                     if gone_ids & set(t.response_ids)]
            if stale:
                s.execute(delete(S.Assignment).where(S.Assignment.task_id.in_(stale)))
                s.execute(delete(S.Task).where(S.Task.id.in_(stale)))
        for r in gone:
            s.delete(r)
    return len(gone)
