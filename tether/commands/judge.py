"""`tether judge`: label pairwise comparisons with an AI judge (RLAIF) and report how far to trust it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from tether.commands.common import WorkspaceOpt, console, quiet_transformers, user_errors
from tether.errors import TetherError


def _line(label: str, st: dict) -> str:
    def f(x):
        return "-" if x != x else f"{x:.3f}"  # nan -> "-"

    return (f"{label}: agreement {f(st['agreement'])} over {st['scored_pairs']} pairs (ties count 1/2), "
            f"{f(st['decisive_agreement'])} where the judge decided ({f(st['decided'])} of them); "
            f"position bias {f(st['position_bias_rate'])} (orders disagree), first shown chosen "
            f"{f(st['first_position_rate'])}")


@user_errors
def judge(url: Optional[str] = typer.Option(None, "--url", help="An OpenAI-compatible chat endpoint (llama.cpp "
                                            "server, vLLM), e.g. http://127.0.0.1:8080/v1. Default: a local HF model."),
          model: Optional[str] = typer.Option(None, help="The local judge model ('bundled' (default), a folder, a hub "
                                              "id), or with --url the model name sent to the server."),
          rubric: Optional[Path] = typer.Option(None, help="Rubric / constitution as a text file (default: the "
                                                "built-in rubric)."),
          tasks: bool = typer.Option(True, "--tasks/--no-tasks", help="Judge stored pairwise tasks it has not "
                                     "answered yet (highest priority first)."),
          pairs: int = typer.Option(0, "--pairs", help="Also judge this many new same-prompt pairs of sampled "
                                    "responses (stored as pairwise tasks)."),
          limit: Optional[int] = typer.Option(None, help="Judge at most this many pairs in this run."),
          round: Optional[int] = typer.Option(None, help="Only tasks / responses of this round (default: all)."),
          name: str = typer.Option("ai-judge", help="Labeler name for the verdicts (role 'ai_judge')."),
          batch_size: int = typer.Option(4, "--batch-size", help="Pairs per batch (two prompts each)."),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TETHER_JUDGE_API_KEY",
                                                help="Bearer token for the endpoint, if it needs one."),
          max_tokens: int = typer.Option(1, "--max-tokens", help="Tokens the endpoint may answer with."),
          agreement: bool = typer.Option(True, "--agreement/--no-agreement", help="Report agreement with the gold "
                                         "scorer and with other labelers afterwards."),
          seed: int = typer.Option(0),
          workspace: Path = WorkspaceOpt):
    """Compare two answers to a prompt against a written rubric, asked in both orders (a disagreement
    between the orders is stored as a tie). Verdicts are stored as comparisons by an 'ai_judge'
    labeler, so `tether rm` can train on them; a rerun carries on where the last stopped."""
    import torch

    from tether.feedback.judge import HFBackend, Judge, OpenAIBackend, load_rubric
    from tether.feedback.judge_feedback import judge_agreement, judge_stored_pairs
    from tether.workspace import open_workspace

    quiet_transformers()
    if pairs < 0 or batch_size < 1 or (limit is not None and limit < 0):
        raise TetherError("--pairs and --limit must be >= 0 and --batch-size >= 1")
    ws = open_workspace(workspace)
    torch.set_num_threads(ws.config.threads or os.cpu_count() or 1)
    text = load_rubric(rubric)
    if url:
        backend = OpenAIBackend(url, model=model or "default", api_key=api_key, max_tokens=max_tokens)
    else:
        backend = HFBackend(model or "bundled", batch_size=2 * batch_size)
    store = ws.store()
    columns = [TextColumn("judge"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("judge", total=None)
        counts = judge_stored_pairs(store, Judge(backend, text), name=name, round=round, tasks=tasks, new_pairs=pairs,
                                    limit=limit, seed=seed, batch_size=batch_size,
                                    on_batch=lambda n: bar.advance(task, n))
    done = counts["tasks"] + counts["new_pairs"]
    console.print(Text(f"{name} ({backend.name}) judged {done} pairs ({counts['tasks']} stored tasks, "
                       f"{counts['new_pairs']} new): " + ", ".join(f"{counts.get(c, 0)} {c}"
                                                                   for c in ("a", "b", "tie", "cant_tell"))))
    if agreement:
        rep = judge_agreement(store, name=name)  # every verdict of this judge so far, not only this run's
        if rep["gold"]["pairs"]:
            console.print(Text(_line(f"all {rep['gold']['pairs']} verdicts vs the gold scorer", rep["gold"])))
        for kind, st in rep["labelers"].items():
            if st["scored_pairs"]:
                console.print(Text(_line(f"vs the majority of {kind} labelers", st)))
