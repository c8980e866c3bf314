"""`tether rloo` and `tether grpo`: critic-free online RL on the workspace's prompts (one recipe,
tether.recipes.online, with the advantage estimator chosen by name)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from tether.commands.common import (DtypeOpt, WorkspaceOpt, console, launched, quiet_transformers, resolve_dtype, reward_source,
                                    shared_run_dir, tracked, training_prompts, user_errors)

# Options both commands take (one definition, shared like WorkspaceOpt).
RewardModelOpt = typer.Option(None, "--reward-model", help="Reward model folder (default: the latest runs/rm-*/model).")
RewardFnOpt = typer.Option(None, "--reward-fn", help="Reward from a Python function instead: MODULE:NAME or "
                           "FILE.py:NAME, called as f(prompts, responses, finished) -> list of floats.")
PolicyOpt = typer.Option(None, help="Model to start from (default: the workspace policy); also the reference.")
UpdatesOpt = typer.Option(20, help="Iterations; each samples --k responses to each of --prompts-per-update prompts.")
PromptsOpt = typer.Option(4, "--prompts-per-update", help="Prompts per update (each sampled --k times).")
KOpt = typer.Option(4, "--k", "-k", help="Samples per prompt: the group the baseline is taken over (>= 2).")
BetaOpt = typer.Option(0.05, help="KL coefficient to the reference.")
KlInOpt = typer.Option(None, "--kl-in", help="Where the KL goes: 'reward' (RLOO: beta * sum of k1 off each "
                       "sequence reward) or 'loss' (GRPO: beta * k3 on every token's loss). Default: rloo reward, "
                       "grpo loss.")
EpochsOpt = typer.Option(1, "--ppo-epochs", help="Passes over each batch (1: plain REINFORCE with a group baseline).")
LrOpt = typer.Option(None, help="Default 1e-5 (full) or 1e-4 (LoRA).")
LoraOpt = typer.Option(None, "--lora-r", help="Train LoRA adapters of this rank; the reference is the model "
                       "with the adapters disabled.")
MaxNewOpt = typer.Option(64, "--max-new-tokens")
TemperatureOpt = typer.Option(0.7, help="Sampling temperature (training logits are divided by it too).")
NoEosOpt = typer.Option(1.0, "--no-eos-penalty", help="Subtracted from the reward of a response cut off without EOS.")
GoldOpt = typer.Option(True, help="Log the hidden gold scorer beside the reward (never trained on).")
SplitOpt = typer.Option("train", help="Prompts of this split to train on.")
EvalSplitOpt = typer.Option("eval", "--eval-split", help="Held-out prompts for evaluation.")
EvalEveryOpt = typer.Option(None, "--eval-every", help="Updates between evaluations.")
CheckpointOpt = typer.Option(5, "--checkpoint-every", help="Updates between checkpoints (0: none).")
SeedOpt = typer.Option(0)
ResumeOpt = typer.Option(False, help="Continue the latest run of this command from its checkpoint.")


@user_errors
def rloo(reward_model: Optional[Path] = RewardModelOpt, reward_fn: Optional[str] = RewardFnOpt,
         policy: Optional[str] = PolicyOpt, updates: int = UpdatesOpt, prompts_per_update: int = PromptsOpt,
         k: int = KOpt, beta: float = BetaOpt, kl_in: Optional[str] = KlInOpt, ppo_epochs: int = EpochsOpt,
         lr: Optional[float] = LrOpt, lora_r: Optional[int] = LoraOpt, max_new_tokens: int = MaxNewOpt,
         temperature: float = TemperatureOpt, no_eos_penalty: float = NoEosOpt, gold: bool = GoldOpt,
         split: str = SplitOpt, eval_split: str = EvalSplitOpt, eval_every: Optional[int] = EvalEveryOpt,
         checkpoint_every: int = CheckpointOpt, dtype: str = DtypeOpt, seed: int = SeedOpt,
         resume: bool = ResumeOpt, workspace: Path = WorkspaceOpt):
    """Optimise the policy with RLOO (REINFORCE Leave-One-Out, Ahmadian et al. 2024): each response's
    baseline is the mean reward of the other --k responses to its prompt; no value model.

    Logs reward, gold score, KL (k1 and k3, nats per sequence), entropy, clip fraction, length, EOS rate and
    the share of groups with no reward spread to runs/rloo-N/metrics.jsonl and TensorBoard."""
    run("rloo", **locals())


@user_errors
def grpo(reward_model: Optional[Path] = RewardModelOpt, reward_fn: Optional[str] = RewardFnOpt,
         policy: Optional[str] = PolicyOpt, updates: int = UpdatesOpt, prompts_per_update: int = PromptsOpt,
         k: int = KOpt, beta: float = BetaOpt, kl_in: Optional[str] = KlInOpt, ppo_epochs: int = EpochsOpt,
         lr: Optional[float] = LrOpt, lora_r: Optional[int] = LoraOpt, max_new_tokens: int = MaxNewOpt,
         temperature: float = TemperatureOpt, no_eos_penalty: float = NoEosOpt, gold: bool = GoldOpt,
         split: str = SplitOpt, eval_split: str = EvalSplitOpt, eval_every: Optional[int] = EvalEveryOpt,
         checkpoint_every: int = CheckpointOpt, dtype: str = DtypeOpt, seed: int = SeedOpt,
         resume: bool = ResumeOpt, workspace: Path = WorkspaceOpt):
    """Optimise the policy with GRPO (Shao et al. 2024): each response's advantage is its reward
    standardised within the --k responses to its prompt; no value model.

    Logs reward, gold score, KL (k1 and k3, nats per sequence), entropy, clip fraction, length, EOS rate and
    the share of groups with no reward spread to runs/grpo-N/metrics.jsonl and TensorBoard."""
    run("grpo", **locals())


def run(estimator: str, *, reward_model: Optional[Path], reward_fn: Optional[str], policy: Optional[str],
        updates: int, prompts_per_update: int, k: int, beta: float, kl_in: Optional[str], ppo_epochs: int,
        lr: Optional[float], lora_r: Optional[int], max_new_tokens: int, temperature: float, no_eos_penalty: float,
        gold: bool, split: str, eval_split: str, eval_every: Optional[int], checkpoint_every: int, dtype: str,
        seed: int, resume: bool, workspace: Path) -> None:
    """What `tether rloo` and `tether grpo` share: find the reward and prompts, train, report."""
    from tether.feedback.gold import gold_score
    from tether.models import LoraSettings
    from tether.recipes import online as recipe
    from tether.workspace import open_workspace

    quiet_transformers()
    cfg = recipe.OnlineConfig(estimator=estimator, lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r else None,
                              lr=lr, updates=updates, prompts_per_update=prompts_per_update, k=k, beta=beta,
                              kl_in=kl_in, ppo_epochs=ppo_epochs, max_new_tokens=max_new_tokens,
                              temperature=temperature, no_eos_penalty=no_eos_penalty, seed=seed,
                              eval_every=eval_every, checkpoint_every=checkpoint_every or None,
                              dtype=resolve_dtype(dtype))
    recipe.check(cfg)  # a bad --k or --kl-in fails before any model or data is read
    ws = open_workspace(workspace)
    store = ws.store()
    fn, reward_model = reward_source(ws, reward_model, reward_fn)
    prompts, eval_prompts = training_prompts(store, split, eval_split)
    out = shared_run_dir(ws, estimator, resume)  # under `accelerate launch`: one folder, picked by the main process
    main = launched()[0] == 0
    cfg.policy = policy or ws.config.policy
    cfg.reward_model = str(reward_model) if reward_model else None
    cfg.out_dir, cfg.threads = str(out), ws.config.threads or os.cpu_count()
    params = {k: str(v) for k, v in vars(cfg).items()} | {"reward_fn": reward_fn}
    res = tracked(store, estimator, ws.config.round, params, out, main=main, fn=lambda: recipe.train(
        cfg, prompts, reward_fn=fn, eval_prompts=eval_prompts, gold_fn=gold_score if gold else None, resume=resume))
    m = res.metrics
    if not main:  # the main process records and reports the run
        return
    last = m.get("last", {})
    summary = (f"{res.updates} {estimator} updates in {m['seconds'] / 60:.1f} min (KL in the {m['kl_in']}); "
               f"last batch: reward {last.get('reward', 0):.3f}, KL {last.get('kl', 0):.2f} nats")
    if "eval_reward" in m:
        summary += f"; held-out ({m['eval_prompts']} prompts): reward {m['eval_reward']:.3f}, KL {m['eval_kl']:.2f}"
        if "eval_gold" in m:
            summary += f", gold {m['eval_gold']:.3f}"
    console.print(Text(summary))
    console.print(Text(f"policy: {res.model_dir}  (compare it with `tether eval --policy {res.model_dir}`)"))
