"""`tether loop` (rounds of sample -> feedback -> reward model -> policy -> eval) and `tether demo` (the whole
of RLHF on the bundled model: SFT, then the loop with simulated labelers, then the report)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from tether.commands.common import DtypeOpt, WorkspaceOpt, console, quiet_transformers, resolve_dtype, stage_runs, user_errors
from tether.errors import TetherError


@user_errors
def loop(rounds: int = typer.Option(2, help="Rounds of sample -> feedback -> reward model -> policy -> eval."),
         algorithm: str = typer.Option("ppo", help="Policy stage: ppo, rloo, grpo or dpo."),
         feedback: str = typer.Option("simulated", help="Who labels: simulated (labelers judged by the hidden "
                                      "gold scorer), judge (an AI judge on same-prompt pairs), mix (both: the "
                                      "judge also answers the simulated labelers' pairwise tasks) or web (people "
                                      "in `tether serve`; the loop waits for the round's tasks)."),
         web_kind: str = typer.Option("rank", "--web-kind", help="web: the task per prompt (rank the k answers, "
                                      "pairwise, rating, thumbs, flaws)."),
         web_timeout_hours: Optional[float] = typer.Option(None, "--web-timeout-hours", help="web: stop waiting "
                                                           "after this long (--resume waits again)."),
         judge_url: Optional[str] = typer.Option(None, "--judge-url", help="AI judge: an OpenAI-compatible endpoint "
                                                 "(default: a local HF model)."),
         judge_model: Optional[str] = typer.Option(None, "--judge-model", help="AI judge: the local model (default: "
                                                   "bundled) or the endpoint's model name."),
         judge_rubric: Optional[Path] = typer.Option(None, "--judge-rubric", help="AI judge: rubric text file."),
         k: int = typer.Option(4, "--k", help="Answers sampled per training prompt each round."),
         prompts_per_round: Optional[int] = typer.Option(None, "--prompts-per-round", help="Training prompts sampled "
                                                         "and labeled each round, a fresh draw (default: all)."),
         items: Optional[int] = typer.Option(None, help="Labeling items per round (default: one per prompt)."),
         overlap: int = typer.Option(3, help="Labelers per item."),
         rm_train_layers: Optional[int] = typer.Option(4, "--rm-train-layers", help="Reward model: train only the "
                                                       "top N layers and the head (0: all)."),
         rm_heads: int = typer.Option(1, "--rm-heads", help="Reward model ensemble heads."),
         rm_epochs: int = typer.Option(2, "--rm-epochs", help="Reward model: passes over the feedback."),
         rm_lr: Optional[float] = typer.Option(None, "--rm-lr", help="Reward model learning rate (default 5e-5; "
                                               "1e-4 with LoRA)."),
         rm_continue: bool = typer.Option(False, "--rm-continue/--rm-retrain", help="Rounds after the first: "
                                          "retrain the reward model from the SFT model on all feedback so far "
                                          "(default), or continue the last round's on the new feedback only "
                                          "(faster, but it can forget what earlier labels taught)."),
         updates: int = typer.Option(10, help="ppo/rloo/grpo updates per round."),
         batch_size: int = typer.Option(16, "--batch-size", help="Samples per update."),
         kl_coef: float = typer.Option(0.05, "--kl-coef", help="KL coefficient to the round's starting policy."),
         lr: Optional[float] = typer.Option(None, help="Policy learning rate (default: the recipe's)."),
         lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA adapters of this rank (RM and policy)."),
         max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
         eval_samples: int = typer.Option(2, "--eval-samples", help="Answers per held-out prompt and side."),
         dtype: str = DtypeOpt,
         seed: int = typer.Option(0),
         resume: bool = typer.Option(False, help="Continue the newest loop where it stopped (same options)."),
         workspace: Path = WorkspaceOpt):
    """Run rounds of RLHF on the workspace: sample from the current policy, collect feedback, retrain the
    reward model on all feedback so far, optimise the policy, evaluate it against the starting (SFT)
    policy on held-out prompts. State: runs/loop-N/state.json; a killed loop continues with --resume."""
    from tether.recipes import loop as recipe
    from tether.workspace import open_workspace

    quiet_transformers()
    cfg = recipe.LoopConfig(rounds=rounds, algorithm=algorithm, feedback=feedback, web_kind=web_kind,
                            web_timeout_hours=web_timeout_hours, judge_url=judge_url,
                            judge_model=judge_model, judge_rubric=str(judge_rubric) if judge_rubric else None, k=k, prompts_per_round=prompts_per_round,
                            items=items, overlap=overlap,
                            rm_train_layers=rm_train_layers or None, rm_heads=rm_heads, rm_epochs=rm_epochs, rm_lr=rm_lr,
                            rm_continue=rm_continue, updates=updates,
                            batch_size=batch_size, kl_coef=kl_coef, lr=lr, lora_r=lora_r,
                            max_new_tokens=max_new_tokens, eval_samples=eval_samples, dtype=resolve_dtype(dtype),
                            seed=seed)
    recipe.check(cfg)
    ws = open_workspace(workspace)
    res = recipe.run(ws, cfg, resume=resume, say=lambda line: console.rule(line) if not line.startswith(" ")
                     else console.print(Text(line)))
    _summary(res)


def _summary(res) -> None:
    table = Table(title=f"loop {res.out_dir.name}: each round's policy against the starting policy, held-out prompts")
    for col in ("round", "policy", "gold win rate (95 % CI)", "gold", "start gold", "KL (nats)", "minutes"):
        table.add_column(col)
    for rnd in res.state["rounds"]:
        e = rnd.get("eval")
        if not e:
            continue
        minutes = sum(rnd[s].get("seconds", 0) for s in ("sample", "feedback", "rm", "policy", "eval")) / 60
        table.add_row(str(rnd["round"]), rnd["policy"]["model"],
                      f"{e['gold_win_rate']:.1%} ({e['gold_ci'][0]:.0%}-{e['gold_ci'][1]:.0%})",
                      f"{e['gold']:.3f}", f"{e['sft_gold']:.3f}", f"{e['kl']:.2f}", f"{minutes:.1f}")
    console.print(table)
    console.print(Text(f"loop state: {res.out_dir / 'state.json'}; the final policy is now the workspace policy"))


# the demo's policy stage: (learning rate, KL coefficient) by algorithm. GRPO at 5e-5 with beta 0.001 (KL in the
# loss, to the round's starting policy) reached the demo's best gold win rate in the runs of bench/RESULTS.md.
DEMO_POLICY = {"grpo": (5e-5, 0.001), "rloo": (5e-5, 0.001), "ppo": (2e-5, 0.05), "dpo": (None, 0.05)}


@user_errors
def demo(directory: Path = typer.Option(Path("demo-workspace"), "--dir", help="Workspace folder for the demo."),
         prompts: int = typer.Option(40, help="Training prompts (of the bundled 112) sampled and labeled each round."),
         rounds: int = typer.Option(2, help="Loop rounds after SFT."),
         algorithm: str = typer.Option("grpo", help="Policy stage: grpo, ppo, rloo or dpo."),
         updates: int = typer.Option(16, help="Policy updates per round."),
         lr: Optional[float] = typer.Option(None, help="Policy learning rate (default: 5e-5 for grpo and rloo, "
                                            "2e-5 for ppo, the recipe's own for dpo)."),
         kl_coef: Optional[float] = typer.Option(None, "--kl-coef", help="KL coefficient to the round's starting "
                                                 "policy: ppo's kl_coef (default 0.05), rloo/grpo's beta (default "
                                                 "0.001)."),
         eval_prompts: int = typer.Option(40, "--eval-prompts", help="Held-out prompts (of the bundled 40)."),
         max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
         sft_epochs: int = typer.Option(2, "--sft-epochs", help="Passes over the bundled demonstrations."),
         model: Optional[str] = typer.Option(None, help="Start from this model instead of the bundled one "
                                             "(a hub id or a local HF folder)."),
         fresh: bool = typer.Option(False, help="Delete the demo workspace first (else a killed demo resumes)."),
         dtype: str = DtypeOpt,
         seed: int = typer.Option(0)):
    """The whole of RLHF on the bundled model, on a laptop CPU: SFT on the bundled demonstrations, then
    rounds of sampling, feedback from simulated labelers, reward model, policy optimisation and held-out
    evaluation; ends by printing where the report is."""
    from tether.commands.sft import stored_demonstrations
    from tether.data.io import import_demonstrations, import_prompts
    from tether.recipes import loop as recipe
    from tether.recipes import sft
    from tether.workspace import init_workspace, open_workspace

    quiet_transformers()
    default_lr, default_kl = DEMO_POLICY.get(algorithm, (None, 0.05))
    # reward model: the loop's 2 epochs at 5e-5, over the top 8 layers (each prompt's pairs one batch element): on
    # round 0's feedback of a demo run it agreed with gold on 66.8 % of held-out answer pairs, against 62.4 % for 1
    # epoch of pairs at 1e-5, in 70 s instead of 96 s (bench/RESULTS.md)
    cfg = recipe.LoopConfig(rounds=rounds, algorithm=algorithm, updates=updates, prompts_per_round=prompts,
                            items=3 * prompts, max_new_tokens=max_new_tokens, dtype=resolve_dtype(dtype),
                            lr=default_lr if lr is None else lr, rm_train_layers=8,
                            kl_coef=default_kl if kl_coef is None else kl_coef,
                            seed=seed)  # 3 labeling items per prompt
    recipe.check(cfg)
    started = time.perf_counter()
    if fresh and directory.exists():
        shutil.rmtree(directory)
    ws = open_workspace(directory) if (directory / "tether.yaml").exists() else init_workspace(directory, policy=model)
    store = ws.store()

    console.rule("1. bundled prompts and demonstrations")
    assets = files("tether") / "assets"
    rows = [json.loads(line) for line in (assets / "prompts.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "train"] + [r for r in rows if r["split"] == "eval"][:eval_prompts]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (Path(tmp) / "demos.jsonl").write_text((assets / "demos.jsonl").read_text())
        import_prompts(store, Path(tmp) / "prompts.jsonl")  # 112 train + up to 40 held-out (eval) prompts
        import_demonstrations(store, Path(tmp) / "demos.jsonl")  # a labeler-written answer to each train prompt
    console.print(Text(f"{len(store.prompts('train'))} training prompts, {len(store.prompts('eval'))} held-out "
                       f"prompts, {store.counts().get('responses', 0)} demonstrations and answers stored"))

    console.rule("2. supervised fine-tuning on the demonstrations")
    sft_runs = stage_runs(ws.root, "sft")
    if sft_runs and (sft_runs[-1] / "model" / "config.json").is_file():
        console.print(Text(f"already done: {(sft_runs[-1] / 'model').resolve()}"))
    else:  # a demo killed during SFT continues from the SFT checkpoint
        resume = bool(sft_runs) and (sft_runs[-1] / "checkpoint" / "tether_state.json").is_file()
        train, held = stored_demonstrations(store)
        scfg = sft.SFTConfig(model=ws.config.policy, epochs=sft_epochs, threads=ws.config.threads or os.cpu_count(),
                             dtype=cfg.dtype,
                             seed=seed, out_dir=str(sft_runs[-1] if resume else ws.new_run_dir("sft")))
        res = sft.train(scfg, train, held or None, resume=resume)
        ws.config.policy = str(res.model_dir.resolve())
        ws.save()
        console.print(Text(f"SFT model: {ws.config.policy}"))

    console.rule(f"3. {rounds} rounds: sample -> simulated feedback -> reward model -> {algorithm} -> eval")
    loops = stage_runs(ws.root, "loop")
    if loops and (loops[-1] / "state.json").is_file() and \
            json.loads((loops[-1] / "state.json").read_text())["config"] != dataclasses.asdict(cfg):
        raise TetherError(f"{directory} holds a demo run with other options: start over with `tether demo --fresh`"
                          " (or repeat the same options to continue it)")
    res = recipe.run(ws, cfg, resume=True, say=lambda line: console.rule(line) if not line.startswith(" ")
                     else console.print(Text(line)))
    _summary(res)

    console.rule("4. report")
    report = _report(ws)
    minutes = (time.perf_counter() - started) / 60
    console.print(Text(f"demo finished in {minutes:.1f} min; report: {report}"))


def _report(ws) -> Path | str:
    try:
        from tether.eval.report import write_report
    except ImportError:  # the report module is optional until it lands
        return "(no report module yet; see runs/eval-*/report.json)"
    return write_report(ws.root, ws.root / "report.html")
