"""`tether dpo`: train the policy on preference pairs with DPO (or IPO, cDPO), no reward model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import (DtypeOpt, WorkspaceOpt, console, launched, parse_rounds, quiet_transformers, resolve_dtype, shared_run_dir,
                                    user_errors)
from tether.errors import TetherError


@user_errors
def dpo(data: Optional[Path] = typer.Option(None, "--data", help="Train on this TRL-format preference JSONL "
                                            "instead of the workspace's stored feedback."),
        model: Optional[str] = typer.Option(None, help="Start from this model (default: the workspace policy). "
                                            "It is also the reference."),
        loss: str = typer.Option("dpo", help="dpo (sigmoid), ipo, or cdpo (DPO with label smoothing)."),
        beta: float = typer.Option(0.1, help="How strongly the policy is held to the reference (IPO: tau)."),
        label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing",
                                                        help="cdpo only: assumed chance a label is flipped "
                                                        "(default 0.1)."),
        lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Train LoRA adapters of this rank; the "
                                             "reference is the model with the adapter disabled."),
        epochs: int = typer.Option(1), batch_size: int = typer.Option(8, "--batch-size", help="Pairs per step."),
        lr: Optional[float] = typer.Option(None, help="Default 5e-6 (full) or 1e-5 (LoRA)."),
        max_length: int = typer.Option(512, "--max-length", help="Tokens of prompt + one response."),
        labelers: str = typer.Option("downweight", help="Flagged labelers: downweight, exclude or keep."),
        judge_weight: float = typer.Option(1.0, "--judge-weight", help="Weight of AI-judge labels (0: leave out)."),
        rounds: Optional[str] = typer.Option(None, help="Comma-separated rounds of feedback (default: all)."),
        dtype: str = DtypeOpt,
        resume: bool = typer.Option(False, help="Continue the latest dpo run from its checkpoint."),
        workspace: Path = WorkspaceOpt):
    """Train the policy with DPO on all stored feedback (every kind, as weighted pairs) or on --data."""
    from tether.models import LoraSettings
    from tether.recipes import dpo as recipe
    from tether.workspace import open_workspace

    quiet_transformers()
    if labelers not in ("downweight", "exclude", "keep"):
        raise TetherError(f"--labelers: expected downweight, exclude or keep, got {labelers!r}")
    if data is not None and rounds is not None:
        raise TetherError("--rounds selects stored feedback; it cannot be combined with --data")
    ws = open_workspace(workspace)
    store = ws.store()
    cfg = recipe.DPOConfig(model=model or ws.config.policy, loss=loss, beta=beta, label_smoothing=label_smoothing,
                           epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, dtype=resolve_dtype(dtype),
                           threads=ws.config.threads or os.cpu_count(),
                           lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r else None)
    recipe.check_config(cfg)  # a bad --loss or --beta fails before any data or model is read
    if data is not None:
        pairs = recipe.read_pairs(data)
        console.print(Text(f"{len(pairs)} pairs from {data}"))
    else:
        from tether.feedback.collect import collect_pairs, preference_examples

        collected = collect_pairs(store, parse_rounds(rounds), labeler_policy=labelers, judge_weight=judge_weight)
        for f in collected.flags:
            console.print(Text(f"flagged labeler {collected.labelers.get(f.labeler, f.labeler)}: {f.reason} "
                               f"({f.value:.2f} over {f.n})"))
        if not collected.pairs:
            raise TetherError("dpo: no preference pairs in this workspace: collect feedback (`tether label`), "
                              "import pairs (`tether import prefs`), or pass --data FILE.jsonl")
        console.print(Text(f"{len(collected.pairs)} pairs ({', '.join(f'{n} from {k}s' for k, n in collected.by_kind.items())}); "
                           f"{collected.n_ties} ties and {collected.n_cant_tell} can't-tell carry no preference"))
        pairs = preference_examples(store, collected)
    out = shared_run_dir(ws, "dpo", resume)  # under `accelerate launch`: one folder, picked by the main process
    main = launched()[0] == 0
    cfg.out_dir = str(out)
    run_id = store.start_run("dpo", ws.config.round, {k: str(v) for k, v in vars(cfg).items()}
                             | {"data": str(data) if data else "feedback"}, str(out)) if main else None
    try:
        res = recipe.train(cfg, pairs, resume=resume)
    except BaseException:
        if main:
            store.finish_run(run_id, "failed")
        raise
    if not main:  # the main process records and reports the run
        return
    store.finish_run(run_id, "done", res.metrics)
    m = res.metrics
    held_out = (f"held-out preference accuracy {m['eval_accuracy']:.3f} on {m['eval_pairs']} pairs, "
                f"eval loss {m['eval_loss']:.3f}; " if "eval_accuracy" in m else "")
    console.print(Text(f"{held_out}policy: {res.model_dir}"))
