"""`tether sample`: K responses per prompt from the current policy, stored with their round.

Reads top to bottom: setup (model, prompts still short of K responses), loop (generate a batch,
store it), save (close the run with its metrics). Each batch is committed as it finishes, so a
killed run keeps its work, and running the command again tops every prompt up to K responses for
this policy and round instead of starting over.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from sqlalchemy import func, select

from tether import models
from tether.config import SampleConfig
from tether.data import schema as S
from tether.errors import TetherError
from tether.rollout import SamplingCopy, generate
from tether.workspace import Workspace


@dataclass
class SampleResult:
    run_id: int | None
    responses_added: int
    prompts_sampled: int
    prompts_complete: int  # already had K responses from this policy in this round
    new_tokens: int
    seconds: float
    finished_fraction: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def set_threads(threads: int | None) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def run(ws: Workspace, cfg: SampleConfig, policy: str | None = None, round: int | None = None,
        model=None, tokenizer=None, show_progress: bool = True, prompt_ids: list[int] | None = None,
        dtype: str = "float32") -> SampleResult:
    """Top each prompt of the split (or only those in `prompt_ids`) up to `cfg.k` responses from `policy`
    in `round`; returns what was added. `dtype` "bfloat16": decode with bf16 weights (`rollout.SamplingCopy`;
    faster where bf16 matmuls are, e.g. CPUs with AMX)."""
    policy = policy or ws.config.policy
    round = ws.config.round if round is None else round
    threads = set_threads(ws.config.threads)
    store = ws.store()

    # --- setup: which prompts still need responses --------------------------------------------
    with store.session() as s:
        q = select(S.Prompt.id, S.Prompt.text, S.Prompt.messages).order_by(S.Prompt.id)
        if cfg.split is not None:
            q = q.where(S.Prompt.split == cfg.split)
        else:  # every split but the control environments' stand-in prompts
            q = q.where(S.Prompt.split != S.CONTROL_SPLIT)
        if prompt_ids is not None:
            q = q.where(S.Prompt.id.in_(prompt_ids))
        prompts = s.execute(q).all()
        have = dict(s.execute(
            select(S.Response.prompt_id, func.count()).where(S.Response.round == round, S.Response.policy == policy,
                                                             S.Response.source == "sample")
            .group_by(S.Response.prompt_id)).all())
    if not prompts:
        store.close()
        where = f" in split '{cfg.split}'" if cfg.split is not None else ""
        raise TetherError(f"no prompts{where} in the workspace: import some with `tether import prompts FILE`")
    todo = [(p, cfg.k - have.get(p.id, 0)) for p in prompts if have.get(p.id, 0) < cfg.k]
    result = SampleResult(None, 0, len(todo), len(prompts) - len(todo), 0, 0.0, 0.0)
    if not todo:
        store.close()
        return result

    if model is None or tokenizer is None:
        model, tokenizer = models.load_policy(policy)
    if dtype == "bfloat16":
        model = SamplingCopy().sync(model)
    checkpoint = str(Path(policy).resolve()) if Path(policy).is_dir() else None
    sampling = cfg.model_dump() | {"threads": threads}
    jobs = [(p.id, models.encode_prompt(tokenizer, p.messages if p.messages is not None else p.text))
            for p, missing in todo for _ in range(missing)]
    run_id = store.start_run("sample", round, sampling | {"policy": policy})
    result.run_id = run_id

    # --- loop: generate a batch, store it -----------------------------------------------------
    columns = [TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tps]} tok/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    finished = 0
    t0 = time.perf_counter()
    try:
        with Progress(*columns, disable=not show_progress, transient=False) as bar:
            task = bar.add_task("sample", total=len(jobs), tps="-")
            for batch in generate(model, tokenizer, jobs, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed):
                with store.session() as s:
                    s.add_all([S.Response(prompt_id=g.key, text=g.text, source="sample", policy=policy,
                                          checkpoint=checkpoint, round=round, sampling=sampling, seed=g.seed,
                                          num_tokens=g.num_tokens, finished=g.finished, run_id=run_id)
                               for g in batch])
                result.responses_added += len(batch)
                result.new_tokens += sum(g.num_tokens for g in batch)
                finished += sum(g.finished for g in batch)
                elapsed = time.perf_counter() - t0
                bar.update(task, advance=len(batch), tps=f"{result.new_tokens / elapsed:.0f}")
    except BaseException:
        store.finish_run(run_id, "failed", {"responses": result.responses_added})
        store.close()
        raise

    # --- save: close the run with its metrics -------------------------------------------------
    result.seconds = time.perf_counter() - t0
    result.finished_fraction = finished / max(result.responses_added, 1)
    store.finish_run(run_id, "done", {"responses": result.responses_added, "new_tokens": result.new_tokens,
                                      "seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
                                      "finished_fraction": result.finished_fraction})
    store.close()
    return result
