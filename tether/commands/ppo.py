"""`tether ppo`: the policy stage of classic RLHF, on the workspace's prompts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import (DtypeOpt, WorkspaceOpt, console, launched, quiet_transformers, resolve_dtype, reward_source,
                                    shared_run_dir, tracked, training_prompts, user_errors)


@user_errors
def ppo(reward_model: Optional[Path] = typer.Option(None, "--reward-model",
                                                     help="Reward model folder (default: the latest runs/rm-*/model)."),
        reward_fn: Optional[str] = typer.Option(None, "--reward-fn", help="Reward from a Python function instead: "
                                                "MODULE:NAME or FILE.py:NAME, called as f(prompts, responses, finished) "
                                                "-> list of floats."),
        policy: Optional[str] = typer.Option(None, help="Model to start from (default: the workspace policy)."),
        updates: int = typer.Option(20, help="PPO iterations (each samples --batch-size responses)."),
        batch_size: int = typer.Option(16, "--batch-size", help="Prompts per update."),
        mini_batch_size: int = typer.Option(8, "--mini-batch-size", help="Responses per optimizer step."),
        ppo_epochs: int = typer.Option(2, "--ppo-epochs", help="Passes over each batch."),
        lr: Optional[float] = typer.Option(None, help="Default 1e-5 (full) or 1e-4 (LoRA)."),
        kl_coef: float = typer.Option(0.05, "--kl-coef", help="Beta of the per-token KL penalty to the reference."),
        kl_target: Optional[float] = typer.Option(None, "--kl-target", help="Adapt beta towards this KL "
                                                  "(nats per sequence)."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
        temperature: float = typer.Option(0.7),
        no_eos_penalty: float = typer.Option(1.0, "--no-eos-penalty", help="Subtracted from the reward of a "
                                             "response cut off without EOS."),
        lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Train LoRA adapters of this rank."),
        gold: bool = typer.Option(True, help="Log the hidden gold scorer beside the reward (never trained on)."),
        split: str = typer.Option("train", help="Prompts of this split to train on."),
        eval_split: str = typer.Option("eval", "--eval-split", help="Held-out prompts for evaluation."),
        eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Updates between evaluations."),
        checkpoint_every: int = typer.Option(5, "--checkpoint-every", help="Updates between checkpoints (0: none)."),
        seed: int = typer.Option(0),
        dtype: str = DtypeOpt,
        rollout_backend: str = typer.Option("hf", "--rollout-backend", help="hf (transformers) or vllm (needs "
                                            "CUDA and vllm; its log-prob mismatch is corrected by truncated "
                                            "importance sampling)."),
        threads: Optional[int] = typer.Option(None, help="Torch CPU threads per process (default: tether.yaml's, "
                                              "else all cores)."),
        resume: bool = typer.Option(False, help="Continue the latest ppo run from its checkpoint."),
        workspace: Path = WorkspaceOpt):
    """Optimise the policy with PPO against the reward model, under a KL penalty to the starting model.

    Logs reward, gold score, KL (k1 and k3, nats per sequence), entropy, clip fractions, value loss
    and response length to runs/ppo-N/metrics.jsonl and TensorBoard; --resume continues a killed run."""
    from tether.feedback.gold import gold_score
    from tether.models import LoraSettings
    from tether.recipes import ppo as recipe
    from tether.workspace import open_workspace

    quiet_transformers()
    ws = open_workspace(workspace)
    store = ws.store()
    fn, reward_model = reward_source(ws, reward_model, reward_fn)
    prompts, eval_prompts = training_prompts(store, split, eval_split)
    out = shared_run_dir(ws, "ppo", resume)  # under `accelerate launch`: one folder, picked by the main process
    main = launched()[0] == 0
    cfg = recipe.PPOConfig(policy=policy or ws.config.policy, reward_model=str(reward_model) if reward_model else None,
                           lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r else None, lr=lr, updates=updates,
                           batch_size=batch_size, mini_batch_size=mini_batch_size, ppo_epochs=ppo_epochs,
                           max_new_tokens=max_new_tokens, temperature=temperature, kl_coef=kl_coef,
                           kl_target=kl_target, no_eos_penalty=no_eos_penalty, seed=seed, eval_every=eval_every,
                           checkpoint_every=checkpoint_every or None, out_dir=str(out), dtype=resolve_dtype(dtype),
                           rollout_backend=rollout_backend, threads=threads or ws.config.threads or os.cpu_count())
    params = {k: str(v) for k, v in vars(cfg).items()} | {"reward_fn": reward_fn}
    res = tracked(store, "ppo", ws.config.round, params, out, main=main, fn=lambda: recipe.train(
        cfg, prompts, reward_fn=fn, eval_prompts=eval_prompts, gold_fn=gold_score if gold else None, resume=resume))
    m = res.metrics
    if not main:  # the main process records and reports the run
        return
    last = m.get("last", {})
    summary = f"{res.updates} updates in {m['seconds'] / 60:.1f} min; last batch: reward {last.get('reward', 0):.3f}, " \
              f"KL {last.get('kl', 0):.2f} nats"
    if "eval_reward" in m:
        summary += f"; held-out ({m['eval_prompts']} prompts): reward {m['eval_reward']:.3f}, KL {m['eval_kl']:.2f}"
        if "eval_gold" in m:
            summary += f", gold {m['eval_gold']:.3f}"
    console.print(Text(summary))
    console.print(Text(f"policy: {res.model_dir}  (compare it with `tether eval --policy {res.model_dir}`)"))
