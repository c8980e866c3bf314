"""`tether rm`: train a reward model on preference pairs (Bradley-Terry), optionally an ensemble.

Reads top to bottom: setup (accelerator, model, encoded pairs, the whole batch plan), loop (one
forward over chosen‖rejected‖rated rows per micro-batch, weighted Bradley-Terry loss per head,
AdamW), save (held-out evaluation, normalisation on the SFT policy's samples, model folder, metrics).

How it departs from InstructGPT (Ouyang et al. 2022, eq. 1): pairs carry weights and optional
margins (Llama 2, Touvron et al. 2023, eq. 2); H > 1 heads over one backbone form an ensemble in
which head h weighs pair i by its bootstrap count (each head sees its own resample, so the heads
disagree where data is thin); ratings can add an MSE term on the mean head. Pairs of one ranking
(one `group`) always share a batch, as in InstructGPT, but are not collapsed into one K-way loss.
With `by_prompt` (the default) all pairs of one prompt share a micro-batch, and every distinct response
in a micro-batch is forwarded once, however many pairs it is in: InstructGPT (sec. 3.5) trains on a
prompt's K-choose-2 comparisons as one batch element, which needs one forward pass per completion and,
it reports, overfits less than showing each completion in K-1 separate updates. In the demo (3
labelers per item, some items rankings of 4) a prompt's ~14 pairs a round cover its 4 answers.
A "step" is one optimizer step = `grad_accum` micro-batches of `batch_size` pairs on each process.
The batch plan for all epochs is drawn up front from the seed, so a resumed run skips exactly the
steps it already took and ends at the same step count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tether import reward
from tether.algos.losses import bradley_terry_loss
from tether.errors import TetherError
from tether.models import BUNDLED, LoraSettings
from tether.recipes.batching import batches_keeping_groups, bootstrap_weights, distinct_rows, pair_groups, split_eval
from tether.recipes.common import (accumulating, all_sum, grad_norm_value, make_accelerator, save_checkpoint,
                                   step_micro_batches, training_attention)


@dataclass
class PreferenceExample:
    prompt: list[dict] | str
    chosen: str
    rejected: str
    chosen_finished: bool = True
    rejected_finished: bool = True
    weight: float = 1.0
    group: int | None = None  # pairs from one ranking share a group and are kept in the same batch
    margin: float | None = None  # e.g. from a rating gap (Llama 2 margin loss); used if cfg.use_margin


@dataclass
class RatingExample:
    prompt: list[dict] | str
    response: str
    finished: bool
    target: float  # a per-labeler-normalised rating; regressed by the mean head (MSE)


@dataclass
class RMConfig:
    model: str = BUNDLED  # policy/SFT model to start from (fresh head), or a saved reward model
    num_heads: int = 1  # ensemble size; > 1: each head trains on its own bootstrap resample
    lora: LoraSettings | None = None  # LoRA adapters (+ the head) instead of full fine-tuning
    train_layers: int | None = None  # train only the top N transformer layers (+ final norm, head); no backward below
    lr: float | None = None  # None: 1e-5 full fine-tuning (InstructGPT used 9e-6), 1e-4 with LoRA
    epochs: int = 1  # InstructGPT: one epoch; more overfits
    batch_size: int = 8  # pairs per micro-batch (their distinct responses are the rows of one forward)
    by_prompt: bool = True  # all pairs of a prompt in one micro-batch (a prompt with more pairs than batch_size
    # gets one of its own); held-out pairs are whole prompts. False: pairs are batched alone (or by `group`)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # tokens per row; longer rows lose the left of the prompt
    bucket: bool = True  # batch pairs of similar length together (less padding), batch order still random
    weight_decay: float = 0.0
    warmup: float = 0.05  # fraction of steps of linear warmup, then linear decay to 0
    seed: int = 0
    eval_fraction: float = 0.1  # pairs (whole groups) held out when no eval set is given
    eval_every: int | None = None  # steps; evaluation always runs at the end
    regression_weight: float = 1.0  # weight of the rating MSE (only when ratings are given)
    use_margin: bool = True  # subtract PreferenceExample.margin where it is set
    threads: int | None = None  # torch CPU threads (None: leave as is)
    dtype: str = "float32"  # or "bfloat16": autocast (weights stay float32)
    log_every: int = 10
    checkpoint_every: int | None = 100  # steps; None/0: no checkpoints
    out_dir: str = "runs/rm"
    stop_after: int | None = None  # testing hook: return after this many steps as if killed


@dataclass
class RMResult:
    model: object  # the trained reward model (LoRA merged), eval mode, normalisation set
    tokenizer: object
    metrics: dict
    steps: int
    total_steps: int
    out_dir: Path
    model_dir: Path | None  # None when stopped early (stop_after)
    completed: bool


# --- pure helpers ------------------------------------------------------------------------------

def weighted_bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None,
                     margin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Bradley-Terry loss over pairs and heads (InstructGPT eq. 1; margin: Llama 2 eq. 2).

    loss = 1/(B·H) Σ_b Σ_h w_bh · -log σ(c_bh - r_bh - m_b), rewards (B, H) or (B,), weights (B, H)
    or (B,), margin (B,). Dividing by B (not Σw) keeps an unbiased estimate of the weighted risk,
    so bootstrap counts and pair weights act as multiplicities. With unit weights this is
    `bradley_terry_loss`. accuracy: detached fraction of pairs where the mean head prefers chosen.
    """
    if chosen.dim() == 1:
        chosen, rejected = chosen[:, None], rejected[:, None]  # (B, 1)
    diff = chosen - rejected  # (B, H)
    if margin is not None:
        diff = diff - margin.reshape(-1, 1)
    losses = -F.logsigmoid(diff)  # (B, H)
    if weights is not None:
        losses = losses * (weights if weights.dim() == 2 else weights[:, None])
    accuracy = (chosen.mean(-1) > rejected.mean(-1)).float().mean().detach()  # ()
    return losses.mean(), accuracy


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE = Σ_k (n_k / N) |mean(labels in bin k) - mean(probs in bin k)|, equal-width bins on [0, 1]
    (Guo et al. 2017); p = 1 falls into the last bin."""
    probs, labels = probs.float().flatten(), labels.float().flatten()  # (N,)
    which = (probs * bins).long().clamp(0, bins - 1)  # (N,)
    ece = 0.0
    for k in range(bins):
        inside = which == k
        if inside.any():
            ece += inside.float().mean().item() * abs(labels[inside].mean().item() - probs[inside].mean().item())
    return ece


@torch.no_grad()
def evaluate_ratings(model, tokenizer, ratings: list[RatingExample], batch_size: int = 16,
                     max_length: int = 512) -> dict:
    """Held-out ratings: MSE of the mean head's raw reward against the normalised rating, and the
    Spearman rank correlation between the two."""
    import numpy as np

    r = reward.score_texts(model, tokenizer, [(x.prompt, x.response, x.finished) for x in ratings], batch_size,
                           max_length, normalise_scores=False).mean(-1)  # (R,)
    t = torch.tensor([x.target for x in ratings])  # (R,)
    ranks = lambda v: torch.from_numpy(np.argsort(np.argsort(v.numpy())).astype("float64"))  # noqa: E731
    rho = torch.corrcoef(torch.stack([ranks(r), ranks(t)]))[0, 1].item() if len(ratings) > 1 else float("nan")
    return {"eval_ratings": len(ratings), "eval_mse": ((r - t) ** 2).mean().item(), "eval_spearman": rho}


@torch.no_grad()
def evaluate(model, tokenizer, pairs: list[PreferenceExample], batch_size: int = 16, max_length: int = 512) -> dict:
    """Held-out metrics on raw (unnormalised) rewards: accuracy and BT loss of the mean head, mean
    margin, calibration of P(chosen) = σ(r_c - r_r) (ECE over both orders of each pair, so labels are
    not all 1; Brier score), per-head accuracy and the mean ensemble std over all responses."""
    def enc(prompt, response, finished):
        return reward.encode_pair_text(tokenizer, prompt, response, finished, max_length=max_length)

    rows, c_at, r_at = distinct_rows([enc(p.prompt, p.chosen, p.chosen_finished) for p in pairs],
                                     [enc(p.prompt, p.rejected, p.rejected_finished) for p in pairs])
    scores = reward.score_ids(model, rows, batch_size)  # (U, H) raw, each distinct response once
    rc, rr = scores[c_at], scores[r_at]  # (N, H) each
    (mc, sc), (mr, sr) = reward.ensemble_stats(rc), reward.ensemble_stats(rr)  # (N,) each
    loss, accuracy = bradley_terry_loss(mc, mr)
    p = torch.sigmoid(mc - mr)  # (N,)
    both = torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)])  # (2N,)
    return {"eval_pairs": len(pairs), "eval_accuracy": accuracy.item(), "eval_loss": loss.item(),
            "eval_margin": (mc - mr).mean().item(), "eval_ece": expected_calibration_error(*both),
            "eval_brier": ((p - 1) ** 2).mean().item(), "eval_ensemble_std": torch.cat([sc, sr]).mean().item(),
            "eval_head_accuracy": (rc > rr).float().mean(0).tolist()}


class _Scorer(torch.nn.Module):
    """The model behind one forward(input_ids, attention_mask) -> (B, H), so DDP/FSDP wrap the call
    that trains (calling the backbone directly would bypass their hooks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return reward.reward_forward(self.model, input_ids, attention_mask)


_FREE_ON_RESUME = ("threads", "log_every", "checkpoint_every", "eval_every", "stop_after", "out_dir")


def train(cfg: RMConfig, pairs: list[PreferenceExample], eval_pairs: list[PreferenceExample] | None = None,
          ratings: list[RatingExample] | None = None, normalise_on: list[tuple] | None = None,
          resume: bool = False, show_progress: bool = True) -> RMResult:
    """Train a reward model and save it to out_dir/model (metrics: out_dir/metrics.json, metrics.jsonl, tb/).

    `eval_pairs`: held-out pairs (None: `cfg.eval_fraction` of `pairs`, whole groups). `normalise_on`:
    (prompt, response, finished) samples of the SFT policy whose rewards define mean 0 / std 1 per
    head. `resume`: continue from out_dir/checkpoint if there is one (same data and settings, else a
    TetherError), otherwise start afresh. A completed run deletes its checkpoint."""
    from accelerate.utils import set_seed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from torch.utils.tensorboard import SummaryWriter
    from transformers import get_linear_schedule_with_warmup

    # --- setup ----------------------------------------------------------------------------------
    if not pairs and not ratings:
        raise TetherError("rm: no preference pairs or ratings to train on")
    ratings_only = not pairs  # then the reward model is a regression on the normalised ratings
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    accelerator = make_accelerator(cfg.dtype, "rm")
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    out, heads = Path(cfg.out_dir), cfg.num_heads
    ckpt = out / "checkpoint"
    set_seed(cfg.seed)
    model, tok = reward.load_reward_model(cfg.model, num_heads=heads,
                                          attn_implementation=training_attention(accelerator.device))
    lr = cfg.lr or (1e-4 if cfg.lora else 1e-5)
    if cfg.lora is not None and cfg.train_layers is not None:
        raise TetherError("rm: choose LoRA or train_layers, not both")
    if cfg.lora is not None:
        model = reward.add_reward_lora(model, cfg.lora)
    if cfg.train_layers is not None:
        reward.freeze_below(model, cfg.train_layers)
    if eval_pairs is None:
        pairs, eval_pairs = (split_eval(pairs, cfg.eval_fraction, cfg.seed, cfg.by_prompt) if cfg.eval_fraction > 0
                             else (pairs, []))
    eval_ratings: list[RatingExample] = []
    if ratings_only and cfg.eval_fraction > 0 and len(ratings) > 1:  # hold out ratings instead
        held = set(random.Random(cfg.seed).sample(range(len(ratings)), max(1, round(cfg.eval_fraction * len(ratings)))))
        ratings, eval_ratings = ([r for i, r in enumerate(ratings) if i not in held],
                                 [r for i, r in enumerate(ratings) if i in held])

    def enc(prompt, response, finished):
        return reward.encode_pair_text(tok, prompt, response, finished, max_length=cfg.max_length)

    chosen = [enc(p.prompt, p.chosen, p.chosen_finished) for p in pairs]
    rejected = [enc(p.prompt, p.rejected, p.rejected_finished) for p in pairs]
    rows, c_at, r_at = distinct_rows(chosen, rejected)
    rated = [enc(r.prompt, r.response, r.finished) for r in ratings or []]
    targets = torch.tensor([r.target for r in ratings or []], dtype=torch.float32)  # (R,)
    weights = torch.tensor([p.weight for p in pairs])[:, None]  # (N, 1)
    weights = weights * bootstrap_weights(len(pairs), heads, cfg.seed) if pairs else torch.zeros((0, heads))  # (N, H)
    margins = torch.tensor([p.margin or 0.0 for p in pairs]) if cfg.use_margin else None  # (N,)

    rng = random.Random(cfg.seed)
    lengths = [max(len(c), len(r)) for c, r in zip(chosen, rejected)] if cfg.bucket else None
    if ratings_only:  # batches of ratings, a fresh order each epoch
        order = [i for _ in range(cfg.epochs) for i in rng.sample(range(len(rated)), len(rated))]
        plan = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    else:
        plan = [b for _ in range(cfg.epochs)
                for b in batches_keeping_groups(pair_groups(pairs, cfg.by_prompt), cfg.batch_size, rng, lengths)]
    per_step = cfg.grad_accum * world
    total_steps = math.ceil(len(plan) / per_step)
    rating_order = rng.sample(range(len(rated)), len(rated))
    per_rating_batch = min(cfg.batch_size, len(rated))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE_ON_RESUME}
    settings["grad_accum"] = per_step  # the global batch: resumable on another process count that keeps it
    inputs = [settings, plan, chosen, rejected, rated, weights.tolist(), targets.tolist(),
              [p.margin for p in pairs]]
    fingerprint = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * total_steps), total_steps)
    scorer, optimizer = accelerator.prepare(_Scorer(model), optimizer)
    accelerator.register_for_checkpointing(scheduler)
    device, pad = accelerator.device, tok.pad_token_id or 0

    step = 0
    if resume and (ckpt / "tether_state.json").is_file():
        state = json.loads((ckpt / "tether_state.json").read_text())
        if state["fingerprint"] != fingerprint:
            raise TetherError(f"rm: {ckpt} was written for other data or settings (or another global batch: "
                              f"batch_size x grad_accum x processes); remove it or run without resume")
        accelerator.load_state(str(ckpt))
        step = state["step"]
    if main:  # a fresh run starts clean; a resumed one forgets what the crash lost after its checkpoint
        out.mkdir(parents=True, exist_ok=True)
        if step == 0:
            shutil.rmtree(ckpt, ignore_errors=True)
        old = (out / "metrics.jsonl").read_text().splitlines() if step and (out / "metrics.jsonl").exists() else []
        (out / "metrics.jsonl").write_text("".join(f"{ln}\n" for ln in old if json.loads(ln)["step"] <= step))
    writer = SummaryWriter(str(out / "tb"), purge_step=step or None) if main else None

    def log(record: dict) -> None:
        if main:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    tag = k.replace("eval_", "eval/") if k.startswith("eval_") else f"train/{k}"
                    writer.add_scalar(tag, v, record["step"])

    def eval_now() -> dict:
        inner = accelerator.unwrap_model(scorer).model.eval()
        metrics = evaluate(inner, tok, eval_pairs, 2 * cfg.batch_size, cfg.max_length) if eval_pairs else {}
        if eval_ratings:
            metrics |= evaluate_ratings(inner, tok, eval_ratings, 2 * cfg.batch_size, cfg.max_length)
        inner.train()
        return metrics

    # --- loop -----------------------------------------------------------------------------------
    scorer.train()
    window = {"loss": 0.0, "accuracy": 0.0, "mse": 0.0, "n": 0, "pairs": 0}
    t_log = time.perf_counter()
    columns = [TextColumn("reward model"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("acc {task.fields[acc]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not (show_progress and main)) as bar:
        task = bar.add_task("rm", total=total_steps, completed=step, loss="-", acc="-")
        while step < total_steps:
            micro, n_step = step_micro_batches(step, per_step, len(plan), rank, world)
            lr_now = scheduler.get_last_lr()[0]
            for k, (m, real) in enumerate(micro):
                batch, n = ([], 0) if ratings_only else (plan[m], len(plan[m]))
                extra = plan[m] if ratings_only else [rating_order[(m * per_rating_batch + j) % len(rated)]
                                                      for j in range(per_rating_batch)]
                distinct = list(dict.fromkeys([c_at[i] for i in batch] + [r_at[i] for i in batch]))  # U rows
                where = {row: j for j, row in enumerate(distinct)}
                input_ids, mask = reward.pad_batch([rows[u] for u in distinct] + [rated[j] for j in extra],
                                                   pad)  # (U + R, T)
                with accumulating(accelerator, scorer, k == len(micro) - 1):
                    r = scorer(input_ids.to(device), mask.to(device))  # (U + R, H)
                    rc = r[[where[c_at[i]] for i in batch]]  # (B, H)
                    rr = r[[where[r_at[i]] for i in batch]]  # (B, H)
                    loss, acc = weighted_bt_loss(rc, rr, weights[batch].to(device),
                                                 margins[batch].to(device) if margins is not None else None) \
                        if n else (r.new_zeros(()), r.new_zeros(()))
                    if extra:
                        mse = ((r[len(distinct):].mean(-1) - targets[extra].to(device)) ** 2).mean()  # ()
                        loss = loss + (1.0 if ratings_only else cfg.regression_weight) * mse
                        window["mse"] += mse.item() * real
                    accelerator.backward(loss * (real * world / n_step))  # the mean over the step's micro-batches
                for key, value in (("loss", loss.item()), ("accuracy", acc.item()), ("n", 1), ("pairs", n)):
                    window[key] += value * real
            grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if not math.isfinite(window["loss"]):
                raise TetherError(f"rm: the loss became {window['loss']} at step {step}; try a lower lr or float32")

            if step % cfg.log_every == 0 or step == total_steps:
                now, window = time.perf_counter(), all_sum(accelerator, window)  # over all processes
                record = {"step": step, "loss": window["loss"] / window["n"], "lr": lr_now,
                          "grad_norm": grad_norm_value(grad_norm), "seconds": now - t0,
                          "pairs_per_s": window["pairs"] / max(now - t_log, 1e-9)}
                if not ratings_only:
                    record["accuracy"] = window["accuracy"] / window["n"]
                if rated:
                    record["mse"] = window["mse"] / window["n"]
                log(record)
                bar.update(task, loss=f"{record['loss']:.3f}", acc=f"{record.get('accuracy', float('nan')):.2f}")
                window, t_log = {key: 0 for key in window}, now
            bar.update(task, completed=step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                log({"step": step} | eval_now())
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint(accelerator, ckpt, {"step": step, "total_steps": total_steps,
                                                     "fingerprint": fingerprint})
            if cfg.stop_after and step >= cfg.stop_after and step < total_steps:  # simulated crash
                if writer:
                    writer.close()
                return RMResult(accelerator.unwrap_model(scorer).model, tok, {}, step, total_steps, out, None, False)

    # --- save -----------------------------------------------------------------------------------
    metrics = eval_now()
    model = accelerator.unwrap_model(scorer).model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    mean, std = [0.0] * heads, [1.0] * heads
    if normalise_on:
        raw = reward.score_texts(model, tok, normalise_on, 2 * cfg.batch_size, cfg.max_length, normalise_scores=False)
        mean = raw.mean(0).tolist()  # (H,)
        std = raw.std(0).clamp_min(1e-6).tolist() if len(raw) > 1 else [1.0] * heads  # (H,)
    model_dir = out / "model"
    if main:
        reward.save_reward_model(model, tok, model_dir, mean, std)
    else:
        model.config.tether_reward = {"mean": mean, "std": std, "heads": heads}
    accelerator.wait_for_everyone()
    metrics |= {"steps": step, "total_steps": total_steps, "train_pairs": len(pairs), "train_ratings": len(rated),
                "seconds": time.perf_counter() - t0, "norm_mean": mean, "norm_std": std,
                "config": dataclasses.asdict(cfg)}
    if main:
        if eval_pairs:
            log({"step": step} | {k: v for k, v in metrics.items() if k.startswith("eval_")})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        writer.close()
        shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: out_dir/model replaces it
        if show_progress:
            bar.console.print(f"reward model: {model_dir} (metrics: {out / 'metrics.json'})", markup=False, soft_wrap=True)
    return RMResult(model, tok, metrics, step, total_steps, out, model_dir, True)
