"""`tether dpo`: Direct Preference Optimization of the policy on preference pairs, no reward model.

Reads top to bottom: setup (accelerator, policy, encoded pairs, the batch plan, and the reference
log-probabilities, computed once and cached), loop (one forward per micro-batch, weighted preference
loss, AdamW), save (held-out preference accuracy and loss, the policy as a plain HF folder).

The losses are pure functions in `tether.algos.losses`, chosen by name: "dpo" (Rafailov et al. 2023,
eq. 7), "ipo" (Azar et al. 2023, eq. 17, on token-averaged log-probs as in TRL) and "cdpo" (Mitchell
2023, "A note on DPO with noisy preferences": eq. 7 with labels flipped with probability ε).

How this departs from the paper and from TRL's DPOTrainer:
- The reference is the starting policy. Its log-probs log π_ref(y|x) are computed before training, in
  no-grad passes, and cached in out_dir/reference.pt (a resumed run reads them back). The loop runs the
  policy only; no second copy of the model is ever held (with LoRA the reference pass runs with the
  adapter disabled). TRL by default keeps a reference copy and runs it on every batch.
- Chosen and rejected go through one forward pass, and by default share one row: prompt‖chosen‖rejected
  with a 4-D attention mask under which rejected tokens see the prompt but not chosen, and positions
  that restart after the prompt, so the prompt is computed once per pair instead of twice. Pairs of one
  prompt in a batch share one row too, each distinct response in it once: a ranking of K answers gives
  K(K-1)/2 pairs but K responses to compute. The log-probs equal those of two separate rows per pair
  (tested against TRL). `share_prompt=False` uses TRL's layout (2B rows). (`tether.recipes.pairs.collate`.)
- Only response positions go through the LM head, in chunks whose logits are recomputed in backward
  (`logprobs_from_hidden`): the (tokens x vocabulary) logits, the largest activation of a small model,
  are never held whole.
- Pairs carry weights (flagged labelers down-weighted): loss = 1/B Σ_i w_i ℓ_i. Pairs of one ranking
  (one `group`) share a batch. A cut-off response is encoded without an end-of-turn token.
- Longer than `max_length` (prompt + one response): the prompt loses tokens from the left (its BOS is
  kept, a quarter of `max_length` stays), then responses lose their end. TRL cuts only the end.
A "step" is one optimizer step = `grad_accum` micro-batches of `batch_size` pairs on each process; the
batch plan for all epochs is drawn up front, so a resumed run ends at the same step count.
"""

from __future__ import annotations

import contextlib
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

from tether import models
from tether.algos.losses import dpo_loss, ipo_loss, logprobs_from_hidden, logprobs_from_logits
from tether.errors import TetherError
from tether.models import BUNDLED, LoraSettings
from tether.recipes.common import (accumulating, all_sum, grad_norm_value, make_accelerator, save_checkpoint,
                                   step_micro_batches)
from tether.recipes.pairs import (PairTokens, collate, encode_pair, read_pairs,  # noqa: F401 (read_pairs: the CLI's)
                                  response_counts)
from tether.recipes.batching import batches_keeping_groups, split_eval
from tether.recipes.rm import PreferenceExample
from tether.rollout import plain_head


@dataclass
class DPOConfig:
    model: str = BUNDLED  # policy to start from; it is also the reference
    loss: str = "dpo"  # "dpo" (sigmoid, eq. 7), "ipo" (eq. 17, token-averaged log-probs), "cdpo" (label smoothing)
    beta: float = 0.1  # β: how strongly the policy is held to the reference (IPO: the paper's τ)
    label_smoothing: float | None = None  # cdpo's ε, the assumed chance a label is flipped (None: 0.1); cdpo only
    lora: LoraSettings | None = None  # train LoRA adapters; the reference is the model with the adapter disabled
    lr: float | None = None  # None: 5e-6 full fine-tuning (TRL's 1e-6 barely moved the bundled model in 40 steps), 1e-5 LoRA
    epochs: int = 1
    batch_size: int = 8  # pairs per micro-batch (chosen and rejected of a pair share one forward pass)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # tokens of prompt + one response; longer: the prompt's left goes, then responses' ends
    share_prompt: bool = True  # one row per pair, prompt computed once; False: TRL's chosen rows + rejected rows
    bucket: bool = True  # batch pairs of similar length together (less padding), batch order still random
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps of linear warmup, then linear decay to 0
    seed: int = 0
    eval_fraction: float = 0.1  # pairs (whole groups) held out when no eval set is given
    eval_every: int | None = None  # steps; evaluation always runs at the end
    ref_batch_size: int | None = None  # pairs per no-grad batch for the reference and evaluation (None: 2 x batch)
    threads: int | None = None  # torch CPU threads (None: leave as is)
    dtype: str = "float32"  # or "bfloat16": autocast (weights stay float32)
    log_every: int = 10
    checkpoint_every: int | None = 100  # steps; None/0: no checkpoints
    out_dir: str = "runs/dpo"
    stop_after: int | None = None  # testing hook: return after this many steps as if killed


@dataclass
class DPOResult:
    model: object  # the trained policy (LoRA merged), eval mode
    tokenizer: object
    metrics: dict
    steps: int
    total_steps: int
    out_dir: Path
    model_dir: Path | None  # None when stopped early (stop_after)
    completed: bool


# --- losses by name (pure functions in tether.algos.losses) --------------------------------------

LOSSES = {  # name -> f(policy chosen, policy rejected, ref chosen, ref rejected, beta, eps) -> losses (B,)
    "dpo": lambda pc, pr, rc, rr, beta, eps: dpo_loss(pc, pr, rc, rr, beta)[0],  # Rafailov et al. 2023, eq. 7
    "ipo": lambda pc, pr, rc, rr, beta, eps: ipo_loss(pc, pr, rc, rr, beta)[0],  # Azar et al. 2023, eq. 17
    "cdpo": lambda pc, pr, rc, rr, beta, eps: dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)[0],  # Mitchell
}
PER_TOKEN = {"ipo"}  # losses fed token-averaged log-probs (as TRL does for IPO)


def check_config(cfg: DPOConfig) -> float:
    """Errors a user can cause, before anything loads; returns the label smoothing in use."""
    if cfg.loss not in LOSSES:
        raise TetherError(f"dpo: unknown loss '{cfg.loss}': choose one of {', '.join(LOSSES)}")
    if not cfg.beta > 0:
        raise TetherError(f"dpo: beta must be > 0, got {cfg.beta}")
    if cfg.loss != "cdpo" and cfg.label_smoothing:
        raise TetherError("dpo: label smoothing is conservative DPO: use loss 'cdpo' to set it")
    eps = (0.1 if cfg.label_smoothing is None else cfg.label_smoothing) if cfg.loss == "cdpo" else 0.0
    if not 0.0 <= eps < 0.5:
        raise TetherError(f"dpo: label smoothing must be in [0, 0.5), got {eps}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise TetherError(f"dpo: dtype must be 'float32' or 'bfloat16', not '{cfg.dtype}'")
    if cfg.max_length < 8:
        raise TetherError(f"dpo: max_length must be at least 8 tokens, got {cfg.max_length}")
    return eps


def batch_loss(cfg: DPOConfig, eps: float, logps: torch.Tensor, ref: torch.Tensor, counts: torch.Tensor,
               weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss 1/B Σ w_i ℓ_i of one batch, and summed stats. `logps`, `ref`: (B, 2) summed response
    log-probs [chosen, rejected] of policy and reference; `counts`: (B, 2) response tokens; `weights`: (B,).
    Implicit rewards β (log π - log π_ref) are sums over tokens whatever the loss (as TRL logs them)."""
    lp, rf = (logps / counts.clamp_min(1), ref / counts.clamp_min(1)) if cfg.loss in PER_TOKEN else (logps, ref)
    losses = LOSSES[cfg.loss](lp[:, 0], lp[:, 1], rf[:, 0], rf[:, 1], cfg.beta, eps)  # (B,)
    loss = (losses * weights).mean()  # ()
    with torch.no_grad():
        rewards = cfg.beta * (logps - ref)  # (B, 2)
        stats = {"loss": loss.item() * len(weights), "reward_chosen": rewards[:, 0].sum().item(),
                 "reward_rejected": rewards[:, 1].sum().item(),
                 "margin": (rewards[:, 0] - rewards[:, 1]).sum().item(),
                 "accuracy": (rewards[:, 0] > rewards[:, 1]).float().sum().item(),
                 "logp_chosen": logps[:, 0].sum().item(), "logp_rejected": logps[:, 1].sum().item(),
                 "pairs": len(weights)}
    return loss, stats


class _PairLogps(torch.nn.Module):
    """The policy behind one forward(batch) -> (B, 2) summed response log-probs [chosen, rejected], so
    DDP/FSDP wrap the call that trains. Runs the backbone, then the LM head on response positions only;
    a model that scales or caps its logits after the head runs its own full forward instead."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, src, tgt, seg, pick):
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if attention_mask.dim() == 4 and inner.config._attn_implementation == "eager":  # eager adds the mask
            attention_mask = torch.zeros(attention_mask.shape, dtype=inner.dtype, device=attention_mask.device
                                         ).masked_fill(~attention_mask, torch.finfo(inner.dtype).min)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        weight = plain_head(inner)
        if weight is not None:
            hidden = getattr(inner, inner.base_model_prefix)(**kwargs).last_hidden_state  # (R, T, D)
            logps = logprobs_from_hidden(hidden.flatten(0, 1)[src], weight, tgt)  # (N,) the (N, V) logits never whole
        else:  # a head that scales or caps its logits: the model's own forward applies it, on every position
            logits = self.model(**kwargs).logits.flatten(0, 1)[src]  # (N, V)
            logps = logprobs_from_logits(logits[None], tgt[None], ignore_index=None)[0]  # (N,)
        per_response = logps.new_zeros(pick.numel()).index_add(0, seg, logps)  # (<= 2B,) summed per response
        return per_response[pick]  # (B, 2)


@torch.no_grad()
def pair_logps(module, toks: list[PairTokens], batch_size: int, pad: int, share_prompt: bool, device,
               accelerator=None, progress=None) -> torch.Tensor:
    """(N, 2) summed response log-probs of every pair, no gradients, in batches of `batch_size` pairs:
    the pairs of one prompt side by side (so `collate` computes their shared responses once), longest
    prompts' pairs first. With several processes each computes a share and the shares are summed."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    out = torch.zeros((len(toks), 2), dtype=torch.float32)
    longest: dict[tuple, int] = {}
    for t in toks:
        key = tuple(t.prompt)
        longest[key] = max(longest.get(key, 0), len(t.prompt) + len(t.chosen) + len(t.rejected))
    order = sorted(range(len(toks)), key=lambda i: (-longest[tuple(toks[i].prompt)], toks[i].prompt))
    for start in range(rank * batch_size, len(order), batch_size * world):
        idx = order[start:start + batch_size]
        b = collate([toks[i] for i in idx], pad, share_prompt)
        out[idx] = module(**{k: v.to(device) for k, v in b.items()}).float().cpu()
        if progress:
            progress(len(idx) * world)
    if world > 1:
        out = accelerator.reduce(out.to(accelerator.device), "sum").cpu()
    return out


def _model_stamp(name: str) -> list:
    """What identifies the reference: its name, and for a local folder its files' sizes and times."""
    folder = Path(models.resolve(name)) if name == BUNDLED or Path(name).is_dir() else None
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder else []
    return [name] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


_FREE_ON_RESUME = ("threads", "log_every", "checkpoint_every", "eval_every", "stop_after", "out_dir",
                   "ref_batch_size")


def train(cfg: DPOConfig, pairs: list[PreferenceExample], eval_pairs: list[PreferenceExample] | None = None,
          resume: bool = False, show_progress: bool = True) -> DPOResult:
    """Train the policy with DPO/IPO/cDPO and save it to out_dir/model (metrics: out_dir/metrics.json,
    metrics.jsonl, tb/; reference log-probs: out_dir/reference.pt).

    `eval_pairs`: held-out pairs (None: `cfg.eval_fraction` of `pairs`, whole groups). `resume`: continue
    from out_dir/checkpoint if there is one (same data and settings, else a TetherError), otherwise start
    afresh. Cached reference log-probs are reused whenever model and tokens match. A completed run
    deletes its checkpoint."""
    from accelerate.utils import set_seed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from torch.utils.tensorboard import SummaryWriter
    from transformers import get_linear_schedule_with_warmup

    # --- setup ----------------------------------------------------------------------------------
    eps = check_config(cfg)
    if not pairs:
        raise TetherError("dpo: no preference pairs to train on (collect feedback, or pass TRL-format pairs)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    accelerator = make_accelerator(cfg.dtype, "dpo")
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    out = Path(cfg.out_dir)
    ckpt, ref_file = out / "checkpoint", out / "reference.pt"
    set_seed(cfg.seed)
    model, tok = models.load_policy(cfg.model, lora=cfg.lora)
    model.eval()  # dropout off throughout (policy and reference alike); gradients flow all the same
    lr = cfg.lr or (1e-5 if cfg.lora else 5e-6)
    if eval_pairs is None:
        pairs, eval_pairs = split_eval(pairs, cfg.eval_fraction, cfg.seed) if cfg.eval_fraction > 0 else (pairs, [])
    toks = [encode_pair(tok, p, cfg.max_length) for p in pairs]
    eval_toks = [encode_pair(tok, p, cfg.max_length) for p in eval_pairs]
    counts, eval_counts = response_counts(toks), response_counts(eval_toks)  # (N, 2), (M, 2)
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)  # (N,)
    pad, ref_bs = tok.pad_token_id if tok.pad_token_id is not None else 0, cfg.ref_batch_size or 2 * cfg.batch_size

    rng = random.Random(cfg.seed)
    size = [len(t.prompt) + len(t.chosen) + len(t.rejected) for t in toks]
    plan = [b for _ in range(cfg.epochs)
            for b in batches_keeping_groups([p.group for p in pairs], cfg.batch_size, rng, size if cfg.bucket else None)]
    per_step = cfg.grad_accum * world
    total_steps = math.ceil(len(plan) / per_step)
    token_lists = [[t.prompt, t.chosen, t.rejected] for t in toks + eval_toks]
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE_ON_RESUME}
    settings["grad_accum"] = per_step  # the global batch: resumable on another process count that keeps it
    fingerprint = hashlib.sha256(json.dumps([settings, plan, token_lists, weights.tolist()]).encode()).hexdigest()
    ref_key = hashlib.sha256(json.dumps([_model_stamp(cfg.model), cfg.dtype, token_lists]).encode()).hexdigest()

    params = [p for p in model.parameters() if p.requires_grad]
    try:  # fused AdamW: no full-size temporaries at the step (lower peak memory)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, foreach=False)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * total_steps), total_steps)
    policy, optimizer = accelerator.prepare(_PairLogps(model), optimizer)
    accelerator.register_for_checkpointing(scheduler)
    device, inner = accelerator.device, accelerator.unwrap_model(policy)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]

    saved = ckpt / "tether_state.json"
    state = json.loads(saved.read_text()) if resume and saved.is_file() else None
    if state and state["fingerprint"] != fingerprint:
        raise TetherError(f"dpo: {ckpt} was written for other data or settings (or another global batch: "
                          f"batch_size x grad_accum x processes); remove it or run without resume")

    # the reference: log-probs of the starting policy (adapter disabled), once, before any update or resume
    cached = torch.load(ref_file) if ref_file.is_file() else None
    ref_seconds, ref_reused = 0.0, bool(cached and cached["key"] == ref_key)
    if ref_reused:
        ref, eval_ref = cached["train"], cached["eval"]
    else:
        t_ref = time.perf_counter()
        no_adapter = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with Progress(*columns, disable=not (show_progress and main)) as bar, no_adapter, \
                accelerator.autocast():
            task = bar.add_task("reference log-probs", total=len(toks) + len(eval_toks))
            ref, eval_ref = (pair_logps(inner, t, ref_bs, pad, cfg.share_prompt, device, accelerator,
                                        lambda n: bar.advance(task, n)) for t in (toks, eval_toks))
        ref_seconds = time.perf_counter() - t_ref
        if main:
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"key": ref_key, "train": ref, "eval": eval_ref}, ref_file)

    step = 0
    if state:  # after the reference pass, which must see the starting weights
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
                    writer.add_scalar(k.replace("eval_", "eval/") if k.startswith("eval_") else f"train/{k}", v,
                                      record["step"])

    def eval_now() -> dict:  # held-out loss and preference accuracy (implicit reward of chosen > rejected)
        if not eval_toks:
            return {}
        with accelerator.autocast():
            logps = pair_logps(inner, eval_toks, ref_bs, pad, cfg.share_prompt, device, accelerator)
        s = batch_loss(cfg, eps, logps, eval_ref, eval_counts, torch.ones(len(eval_toks)))[1]
        n = s.pop("pairs")
        return {"eval_pairs": n} | {f"eval_{k}": v / n for k, v in s.items()}

    # --- loop -----------------------------------------------------------------------------------
    window, t_log = {}, time.perf_counter()
    columns[3:3] = [TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[acc]}")]
    with Progress(*columns, disable=not (show_progress and main)) as bar:
        task = bar.add_task("dpo", total=total_steps, completed=step, loss="-", acc="-")
        while step < total_steps:
            micro, n_step = step_micro_batches(step, per_step, len(plan), rank, world)
            lr_now = scheduler.get_last_lr()[0]
            for k, (m, real) in enumerate(micro):
                batch = plan[m]
                b = collate([toks[i] for i in batch], pad, cfg.share_prompt)
                with accumulating(accelerator, policy, k == len(micro) - 1):
                    with accelerator.autocast():
                        logps = policy(**{key: v.to(device) for key, v in b.items()})  # (B, 2)
                    loss, stats = batch_loss(cfg, eps, logps.float(), ref[batch].to(device), counts[batch].to(device),
                                             weights[batch].to(device))
                    accelerator.backward(loss * (real * world / n_step))  # the mean over the step's micro-batches
                for key, v in stats.items():
                    window[key] = window.get(key, 0.0) + v * real
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if not math.isfinite(window["loss"]):
                raise TetherError(f"dpo: the loss became {window['loss']} at step {step}; try a lower lr or float32")

            if step % cfg.log_every == 0 or step == total_steps:
                window = all_sum(accelerator, window)  # over all processes
                now, n = time.perf_counter(), window.pop("pairs")
                log({"step": step} | {key: v / n for key, v in window.items()} | {
                    "lr": lr_now, "grad_norm": grad_norm_value(grad_norm), "seconds": now - t0,
                    "pairs_per_s": n / max(now - t_log, 1e-9)})
                bar.update(task, loss=f"{window['loss'] / n:.3f}", acc=f"{window['accuracy'] / n:.2f}")
                window, t_log = {}, now
            bar.update(task, completed=step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                log({"step": step} | eval_now())
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint(accelerator, ckpt, {"step": step, "total_steps": total_steps,
                                                     "fingerprint": fingerprint})
            if cfg.stop_after and step >= cfg.stop_after and step < total_steps:  # simulated crash
                if writer:
                    writer.close()
                return DPOResult(inner.model, tok, {}, step, total_steps, out, None, False)

    # --- save -----------------------------------------------------------------------------------
    metrics = eval_now()
    model = inner.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # in place: no second copy of the weights
    model.eval()
    model_dir = out / "model"
    if main:
        models.save_model(model, tok, model_dir)
    accelerator.wait_for_everyone()
    metrics |= {"steps": step, "total_steps": total_steps, "train_pairs": len(pairs), "loss_type": cfg.loss,
                "reference_seconds": ref_seconds, "reference_reused": ref_reused,
                "seconds": time.perf_counter() - t0, "config": dataclasses.asdict(cfg)}
    if main:
        if eval_toks:
            log({"step": step} | {k: v for k, v in metrics.items() if k.startswith("eval_")})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        writer.close()
        shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: out_dir/model replaces it
        if show_progress:
            bar.console.print(f"dpo policy: {model_dir} (metrics: {out / 'metrics.json'})", markup=False, soft_wrap=True)
    return DPOResult(model, tok, metrics, step, total_steps, out, model_dir, True)
