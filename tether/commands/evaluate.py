"""`tether eval`: a trained policy against its reference on held-out prompts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from tether.commands.common import WorkspaceOpt, console, latest_model, quiet_transformers, user_errors
from tether.errors import TetherError

STAGES = ("ppo", "rloo", "grpo", "dpo", "sft")


@user_errors
def evaluate(policy: Optional[str] = typer.Option(None, help="Policy to evaluate (default: the newest trained "
                                                  "runs/<ppo|rloo|grpo|dpo|sft>-N/model)."),
             reference: Optional[str] = typer.Option(None, help="Policy to compare with (default: the workspace "
                                                     "policy in tether.yaml)."),
             split: str = typer.Option("eval", help="Held-out prompts of this split."),
             samples: int = typer.Option(2, help="Answers per prompt and policy."),
             max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
             temperature: float = typer.Option(0.7),
             reward_model: Optional[str] = typer.Option(None, "--reward-model", help="Also score with this reward "
                                                        "model (default: the latest runs/rm-*/model, if any)."),
             gold: bool = typer.Option(True, help="Score with the hidden gold scorer."),
             seed: int = typer.Option(0),
             out: Optional[Path] = typer.Option(None, help="Write the report (with every answer) as JSON here "
                                                "(default: runs/eval-N/report.json)."),
             workspace: Path = WorkspaceOpt):
    """Gold win rate, gold score, reward, KL to the reference (nats per sequence), length and EOS rate."""
    import torch

    from tether.eval.compare import compare
    from tether.feedback.gold import gold_score
    from tether.workspace import open_workspace

    quiet_transformers()
    ws = open_workspace(workspace)
    torch.set_num_threads(ws.config.threads or os.cpu_count() or 1)
    store = ws.store()
    if policy is None:
        found = [m for m in (latest_model(ws.root, s) for s in STAGES) if m is not None]
        if not found:
            raise TetherError("no trained policy in this workspace: run `tether ppo` (or dpo, sft), or pass --policy")
        policy = str(max(found, key=lambda m: m.stat().st_mtime))
    reference = reference or ws.config.policy
    if reward_model is None and latest_model(ws.root, "rm") is not None:
        reward_model = str(latest_model(ws.root, "rm"))
    prompts = store.prompts(split)
    if not prompts:
        raise TetherError(f"no prompts in split '{split}': import held-out prompts with "
                          f"`tether import prompts FILE --split {split}`")
    run_dir = ws.new_run_dir("eval")
    run_id = store.start_run("eval", ws.config.round, {"policy": policy, "reference": reference, "split": split,
                                                       "samples": samples, "seed": seed}, str(run_dir))
    try:
        report = compare(policy, reference, prompts, samples=samples, temperature=temperature,
                         max_new_tokens=max_new_tokens, seed=seed, reward_model=reward_model,
                         gold_fn=gold_score if gold else None)
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    path = out or run_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    store.finish_run(run_id, "done", {k: v for k, v in report.items() if k != "answers"})

    table = Table(title=f"{len(prompts)} '{split}' prompts x {samples} answers, temperature {temperature}")
    table.add_column("")
    for name in ("policy", "reference"):
        table.add_column(f"{name}\n{report[name]['policy']}", overflow="fold")
    for key, label in (("gold", "gold score"), ("reward", "reward"), ("kl", "KL to reference (nats/seq)"),
                       ("length", "length (tokens)"), ("eos", "ended with EOS")):
        if key in report["policy"] or key in report["reference"]:
            cells = []
            for name in ("policy", "reference"):
                v = report[name].get(key)
                se = report[name].get(f"{key}_se")
                cells.append("-" if v is None else f"{v:.3f}" + (f" ± {se:.3f}" if se else ""))
            table.add_row(label, *cells)
    console.print(table)
    for key in ("gold", "reward"):
        if key in report:
            w = report[key]
            console.print(Text(f"{key} win rate of the policy: {w['win_rate']:.1%} (95 % CI {w['ci_low']:.1%}-"
                               f"{w['ci_high']:.1%}; {w['wins']} wins, {w['ties']} ties, {w['losses']} losses)"))
    console.print(Text(f"report with every answer: {path}"))


@user_errors
def bon(n: int = typer.Option(4, "--n", help="Samples per prompt; the reward model keeps the best."),
        policy: Optional[str] = typer.Option(None, help="Policy to sample (default: the workspace policy)."),
        reward_model: Optional[str] = typer.Option(None, "--reward-model", help="Reward model folder "
                                                   "(default: the latest runs/rm-*/model)."),
        split: str = typer.Option("eval", help="Prompts of this split."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
        temperature: float = typer.Option(0.7),
        gold: bool = typer.Option(True, help="Score with the hidden gold scorer."),
        seed: int = typer.Option(0),
        workspace: Path = WorkspaceOpt):
    """Best-of-N: sample N answers per prompt, keep the reward model's favourite. Reports its gold win
    rate over a single sample and its analytic KL, log N - (N-1)/N, the baseline for PPO/DPO/RLOO."""
    import torch

    from tether.feedback.gold import gold_score
    from tether.recipes.bon import BoNConfig, run
    from tether.workspace import open_workspace

    quiet_transformers()
    ws = open_workspace(workspace)
    torch.set_num_threads(ws.config.threads or os.cpu_count() or 1)
    store = ws.store()
    reward_model = reward_model or (str(latest_model(ws.root, "rm")) if latest_model(ws.root, "rm") else None)
    if reward_model is None:
        raise TetherError("no reward model in this workspace: train one with `tether rm`, or pass --reward-model")
    prompts = store.prompts(split)
    if not prompts:
        raise TetherError(f"no prompts in split '{split}'")
    run_dir = ws.new_run_dir("bon")
    cfg = BoNConfig(policy=policy or ws.config.policy, reward_model=reward_model, n=n, temperature=temperature,
                    max_new_tokens=max_new_tokens, seed=seed)
    run_id = store.start_run("bon", ws.config.round, {k: str(v) for k, v in vars(cfg).items()}, str(run_dir))
    try:
        report = run(cfg, prompts, gold_score if gold else None)
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    store.finish_run(run_id, "done", {k: v for k, v in report.items() if k != "answers"})
    line = (f"best-of-{n} on {report['prompts']} '{split}' prompts: reward {report['reward_best']:.3f} "
            f"(one sample: {report['reward_single']:.3f}), analytic KL {report['kl_analytic']:.3f} nats")
    if "gold" in report:
        w = report["gold"]
        line += (f"; gold {report['gold_best']:.3f} vs {report['gold_single']:.3f}, win rate {w['win_rate']:.1%} "
                 f"(95 % CI {w['ci_low']:.1%}-{w['ci_high']:.1%})")
    console.print(Text(line))
    console.print(Text(f"report with every answer: {run_dir / 'report.json'}"))
