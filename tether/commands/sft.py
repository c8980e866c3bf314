"""`tether sft`: fine-tune the policy on the workspace's demonstrations (and/or a JSONL file).

Registered in tether/cli.py with `app.command()(sft)`. The recipe is tether/recipes/sft.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import (DtypeOpt, WorkspaceOpt, console, launched, quiet_transformers, resolve_dtype, shared_run_dir, stage_runs,
                                    user_errors)
from tether.errors import TetherError

EVAL_SPLITS = ("eval", "test", "validation")


def stored_demonstrations(store, rewrites: bool = True) -> tuple[list, list]:
    """(train, eval) Demonstrations from the database, oldest first: responses with source
    'demonstration' (and labelers' 'rewrite's). A prompt in an eval/test/validation split goes to eval.
    A prompt stored without messages (TRL's standard format) is used raw."""
    from sqlalchemy import select

    from tether.data import schema as S
    from tether.recipes.sft import Demonstration

    sources = ("demonstration", "rewrite") if rewrites else ("demonstration",)
    with store.session() as s:
        rows = s.execute(select(S.Response.id, S.Response.text, S.Response.source, S.Prompt.text, S.Prompt.messages,
                                S.Prompt.split).join(S.Prompt, S.Response.prompt_id == S.Prompt.id)
                         .where(S.Response.source.in_(sources)).order_by(S.Response.id)).all()
    train, held = [], []
    for rid, answer, source, text, messages, split in rows:
        prompt = list(messages) if messages is not None else text
        demo = Demonstration(prompt, answer, f"stored {source} (response {rid})")
        (held if split in EVAL_SPLITS else train).append(demo)
    return train, held


def file_demonstrations(path: Path) -> tuple[list, list]:
    """(train, eval) Demonstrations from JSONL rows {"messages": [...]} (checked line by line);
    rows with "split": "eval"/"test"/"validation" go to eval."""
    from tether.data.io import read_demonstrations
    from tether.recipes.sft import Demonstration

    train, held = [], []
    for n, (prompt, answer) in enumerate(read_demonstrations(path), start=1):
        demo = Demonstration(prompt.messages, answer, f"{path}, demonstration {n}")
        (held if prompt.split in EVAL_SPLITS else train).append(demo)
    return train, held


@user_errors
def sft(model: Optional[str] = typer.Option(None, help="Start from this model (default: the workspace policy)."),
        data: Optional[Path] = typer.Option(None, "--data",
                                            help='Also train on this JSONL of {"messages": [...]} rows.'),
        stored: bool = typer.Option(True, "--stored/--no-stored",
                                    help="Use the demonstrations (and rewrites) stored in the workspace."),
        lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Train LoRA adapters of this rank (saved merged)."),
        epochs: int = typer.Option(3, help="Passes over the demonstrations."),
        batch_size: int = typer.Option(8, "--batch-size", help="Demonstrations per step."),
        lr: Optional[float] = typer.Option(None, help="Default 2e-5 (full) or 2e-4 (LoRA)."),
        max_length: int = typer.Option(512, "--max-length", help="Tokens per demonstration (prompt + answer)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Train exactly this many steps."),
        dtype: str = DtypeOpt,
        set_policy: bool = typer.Option(True, "--set-policy/--no-set-policy",
                                        help="Make the trained model the workspace policy (tether.yaml)."),
        resume: bool = typer.Option(False, help="Continue the latest sft run from its checkpoint."),
        workspace: Path = WorkspaceOpt):
    """Supervised fine-tuning on demonstrations: loss on the answers only, packed batches, resumable.
    The model is saved in HF format under runs/sft-N/model and becomes the workspace policy."""
    from tether.config import save_config
    from tether.models import LoraSettings
    from tether.recipes import sft as recipe
    from tether.workspace import CONFIG_NAME, open_workspace

    quiet_transformers()
    ws = open_workspace(workspace)
    store = ws.store()
    train, held = stored_demonstrations(store) if stored else ([], [])
    if data is not None:
        more_train, more_held = file_demonstrations(data)
        train, held = train + more_train, held + more_held
    if not train:
        where = " in the workspace" + (f" or in {data}" if data else "")
        raise TetherError(f"no demonstrations to train on{where}: add some with `tether import demos FILE` "
                          "or pass --data FILE.jsonl")
    start = model or ws.config.policy
    console.print(Text(f"{len(train)} demonstrations to train on, {len(held)} held out by their split"
                       + ("" if held else " (a fraction of the training ones will be held out instead)")
                       + f"; starting from {start}"))
    cfg = recipe.SFTConfig(model=start, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
                           max_steps=max_steps, dtype=resolve_dtype(dtype), threads=ws.config.threads or os.cpu_count(),
                           lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r else None)
    recipe.check_config(cfg)  # before a run folder is made
    runs = stage_runs(ws.root, "sft")
    if resume and not (runs and (runs[-1] / "checkpoint" / "tether_state.json").is_file()):
        why = f"{runs[-1]} has no checkpoint" if runs else "there is no sft run yet"
        raise TetherError(f"nothing to resume: {why}; run `tether sft` without --resume")
    out = cfg.out_dir = str(shared_run_dir(ws, "sft", resume))  # under `accelerate launch`: one folder
    main = launched()[0] == 0
    run_id = store.start_run("sft", ws.config.round, {k: str(v) for k, v in vars(cfg).items()}, str(out)) if main else None
    try:
        res = recipe.train(cfg, train, held or None, resume=resume)
    except BaseException:
        if main:
            store.finish_run(run_id, "failed")
        raise
    if not res.completed:  # stopped early (SFTConfig.stop_after)
        if main:
            store.finish_run(run_id, "failed")
        raise TetherError(f"stopped at step {res.steps} of {res.total_steps}; continue with `tether sft --resume`")
    if not main:  # the main process records the run and sets the policy
        return
    store.finish_run(run_id, "done", res.metrics)
    model_dir = res.model_dir.resolve()
    m = res.metrics
    if "eval_loss" in m:
        console.print(Text(f"held-out loss {m['eval_loss']:.3f} per answer token on {m['eval_demonstrations']} "
                           f"demonstrations (perplexity {m['eval_perplexity']:.2f})"))
    note = ""
    if set_policy:
        previous = ws.config.policy
        ws.config.policy = str(model_dir)
        save_config(ws.config, ws.root / CONFIG_NAME)
        note = f"; it is now the policy in {CONFIG_NAME} (was {previous})"
    console.print(Text(f"SFT model: {model_dir}{note}"))
