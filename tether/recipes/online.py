"""`tether rloo` / `tether grpo`: critic-free online RL, K samples per prompt, a group baseline.

Reads top to bottom: setup (accelerator, policy, reference, reward, prompt stream), loop (sample k
responses for each of `prompts_per_update` prompts → score them → sequence advantages within each
group → clipped policy-gradient steps), save (held-out evaluation, the policy as an HF folder, metrics).

The advantage estimator is a pure function chosen by name (`ESTIMATORS`):
- `rloo`: REINFORCE Leave-One-Out, A_i = r_i - mean_{j != i} r_j (Ahmadian et al. 2024, eq. 9).
- `grpo`: group-relative, A_i = (r_i - mean r) / std r (Shao et al. 2024, DeepSeekMath, eq. 3).
KL to the frozen reference goes where one of the two papers puts it (`kl_in`):
- "reward" (RLOO): r_i = score_i - beta * sum_t k1_t, k1_t = log pi(y_t) - log pi_ref(y_t), the
  KL-shaped reward of the RLHF objective, then the baseline (Ahmadian et al. 2024, eq. 9 on it).
- "loss" (GRPO, Shao et al. 2024, eq. 3 with the k3 estimator of eq. 4): beta * k3_t,
  k3_t = pi_ref/pi - log(pi_ref/pi) - 1, is added to every token's loss (gradient through pi).
Defaults: rloo → "reward", grpo → "loss" (as in each paper and in TRL 1.16).

The policy loss is PPO's clipped surrogate (`ppo_policy_loss`, Schulman et al. 2017, eq. 7) with the
sequence advantage broadcast over the response tokens, as in GRPO eq. 3 and TRL's GRPOTrainer; with
one pass over fresh samples the ratio is 1 and it is REINFORCE with a group baseline. (TRL 1.16's
RLOOTrainer takes one ratio per *sequence*, exp(sum_t log-ratio), and averages per sequence instead.)
Loss normalisation: the token mean over all response tokens of the optimizer step (DAPO, Yu et al.
2025, sec. 3.3 "Token-Level Policy Gradient Loss"; TRL GRPO's default `loss_type="dapo"`), not GRPO
eq. 3's per-sequence mean, which weighs a token of a short answer more than one of a long answer.
The k3 term is averaged the same way. Gradients are accumulated over `micro_batch_size` chunks, each
weighted by its share of the step's tokens, so micro-batching bounds memory without changing the update.
Under `accelerate launch`, `prompts_per_update` is per process, each sample is drawn from its own seed
(the samples do not depend on the process count), the token mean is over the tokens of all processes,
and metrics are over the global batch.

Training log-probs (loss, ratio, KL terms) use logits / temperature, matching the sampler (Huang et
al. 2022); KL is *reported* as nats per sequence, summed over response tokens, from the raw logits,
averaged over the policy's own samples: `kl` (k1) and `kl_k3`. A response cut off without EOS loses
`no_eos_penalty`. Work saved, same maths: with one optimizer step per batch (the defaults)
micro-batches hold whole groups, in order, whose prompt runs once for its k responses
(`rollout.group_hidden`); the policy's log-probs before the update are read off the KV-cached decoding
(float32; `rollout.generate(with_states=True)`) or, under bf16, are the training forward's own,
detached (RLOO's KL-shaped rewards and baselines are then computed per micro-batch, from them), so an
update costs one reference pass and one training forward/backward (TRL's RLOOTrainer adds a no-grad
policy pass). The training forward never holds the (B, T, V) logits whole (`rollout.head_logprobs`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tether import models, rollout, rollout_vllm
from tether.algos.advantages import grpo_advantages, masked_mean, rloo_advantages
from tether.algos.kl import kl_k3
from tether.algos.offpolicy import truncated_importance_weights
from tether.algos.losses import logprobs_from_logits, ppo_policy_loss
from tether.errors import TetherError
from tether.models import prompt_text
from tether.recipes import rl
from tether.recipes.common import (GoldFn, MetricsLog, Prompt, RewardFn, accumulating, all_sum, gather_cpu,
                                   grad_norm_value, make_accelerator, prompt_order, save_checkpoint)
from tether.rollout import ResponseLogits, group_logits, pack

ESTIMATORS = {"rloo": rloo_advantages, "grpo": grpo_advantages}  # name -> f(rewards (B,), k) -> (B,)
KL_PLACEMENT = {"rloo": "reward", "grpo": "loss"}  # each paper's default


@dataclass
class OnlineConfig:
    estimator: str = "rloo"  # "rloo" or "grpo" (a key of ESTIMATORS)
    policy: str = models.BUNDLED  # the SFT model to start from; also the frozen reference
    reward_model: str | None = None  # a reward model folder from `tether rm` (or pass reward_fn to train)
    lora: models.LoraSettings | None = None  # train LoRA adapters; reference = adapters disabled
    lr: float | None = None  # None: 1e-5 for full fine-tuning, 1e-4 with LoRA
    updates: int = 20  # iterations; each samples k responses to each of prompts_per_update prompts
    prompts_per_update: int = 4  # per process
    k: int = 4  # samples per prompt (the group of the baseline), >= 2
    mini_batch_size: int | None = None  # samples per optimizer step; None: the whole batch, one step per epoch
    micro_batch_size: int = 8  # samples per forward/backward (gradient accumulation): bounds memory only
    ppo_epochs: int = 1  # passes over each batch (ratio != 1 only from the second optimizer step on)
    max_new_tokens: int = 64
    max_prompt_length: int = 256  # prompts longer than this (in tokens) are left out
    temperature: float = 0.7  # sampling temperature; training logits are divided by it too
    beta: float = 0.05  # KL coefficient
    kl_in: str | None = None  # "reward" or "loss"; None: the estimator's default (KL_PLACEMENT)
    clip_eps: float = 0.2  # policy ratio clip
    no_eos_penalty: float = 1.0  # subtracted from the score of a response cut off without EOS
    max_grad_norm: float = 1.0
    anneal_lr: bool = True  # linear decay to 0 over the updates
    rm_max_length: int = 512  # tokens of prompt‖response the reward model reads
    seed: int = 0
    dtype: str = "float32"  # or "bfloat16": autocast, decoding too (fast on GPUs, AVX512-BF16, AMX)
    rollout_backend: str = "hf"  # "hf" (transformers) or "vllm" (CUDA + vllm; rollout_vllm.py), TIS-corrected
    tis_cap: float = 2.0  # vllm: truncation C of the importance weights (algos.offpolicy)
    threads: int | None = None  # torch CPU threads (None: leave as is)
    log_every: int = 1
    eval_every: int | None = None  # updates between held-out evaluations (always at the end)
    checkpoint_every: int | None = 5  # updates; None/0: no checkpoints
    out_dir: str = "runs/online"
    stop_after: int | None = None  # testing hook: return after this many updates as if killed


@dataclass
class OnlineResult:
    model: object  # the trained policy (LoRA merged when saved)
    tokenizer: object
    metrics: dict
    updates: int
    out_dir: Path
    model_dir: Path | None  # None when stopped early (stop_after)
    completed: bool


@dataclass
class Samples:
    """One batch: groups of k consecutive samples per prompt; P = prompt width, T = response width."""

    prompts: list[Prompt]  # (B,) prompt of each sample, group order
    texts: list[str]  # decoded responses (EOS not included)
    finished: torch.Tensor  # (B,) bool: ended with EOS
    input_ids: torch.Tensor  # (B, P + T) prompt (left-padded) ‖ response incl. EOS (right-padded)
    attention_mask: torch.Tensor  # (B, P + T)
    mask: torch.Tensor  # (B, T) bool: real response tokens
    logprobs: torch.Tensor  # (B, T) policy before the update, logits / temperature
    raw_logprobs: torch.Tensor  # (B, T) the same from raw logits (reporting)
    ref_logprobs: torch.Tensor  # (B, T) reference, logits / temperature
    ref_raw_logprobs: torch.Tensor  # (B, T) reference, raw logits (reporting)
    scores: torch.Tensor  # (B,) reward of each response, no-EOS penalty applied
    rm_scores: torch.Tensor  # (B,) reward before the penalty
    engine_logprobs: torch.Tensor | None = None  # (B, T) the vLLM engine's log-probs of the samples (TIS)

    @property
    def width(self) -> int:
        return self.input_ids.shape[1] - self.mask.shape[1]

    def kl(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k1, k3) per sequence (B,), nats, summed over response tokens, from the raw logits."""
        k1 = torch.where(self.mask, self.raw_logprobs - self.ref_raw_logprobs, 0.0).sum(-1)
        k3 = torch.where(self.mask, kl_k3(self.raw_logprobs, self.ref_raw_logprobs), 0.0).sum(-1)
        return k1, k3


def check(cfg: OnlineConfig) -> str:
    """Refuse settings that cannot work; returns the KL placement."""
    if cfg.estimator not in ESTIMATORS:
        raise TetherError(f"online: unknown estimator '{cfg.estimator}'; choose one of {', '.join(ESTIMATORS)}")
    kl_in = cfg.kl_in or KL_PLACEMENT[cfg.estimator]
    if kl_in not in ("reward", "loss"):
        raise TetherError(f"{cfg.estimator}: kl_in must be 'reward' or 'loss', not '{kl_in}'")
    if cfg.k < 2:
        raise TetherError(f"{cfg.estimator}: k (samples per prompt) must be at least 2 for a group baseline, got {cfg.k}")
    if cfg.prompts_per_update < 1 or cfg.micro_batch_size < 1 or cfg.ppo_epochs < 1:
        raise TetherError(f"{cfg.estimator}: prompts_per_update, micro_batch_size and ppo_epochs must be >= 1")
    batch = cfg.prompts_per_update * cfg.k
    if cfg.mini_batch_size is not None and (cfg.mini_batch_size < 1 or batch % cfg.mini_batch_size):
        raise TetherError(f"{cfg.estimator}: mini_batch_size ({cfg.mini_batch_size}) must divide prompts_per_update "
                          f"* k ({batch})")
    if cfg.temperature <= 0:
        raise TetherError(f"{cfg.estimator}: temperature must be > 0 (online RL needs sampled responses)")
    if cfg.beta < 0:
        raise TetherError(f"{cfg.estimator}: beta must be >= 0, got {cfg.beta}")
    return kl_in


def train(cfg: OnlineConfig, prompts: list[Prompt], reward_fn: RewardFn | None = None,
          eval_prompts: list[Prompt] | None = None, gold_fn: GoldFn | None = None,
          resume: bool = False, show_progress: bool = True) -> OnlineResult:
    """Optimise the policy with RLOO or GRPO; the result lands in out_dir/model (metrics.json/.jsonl, tb/).

    The reward is `cfg.reward_model` (a tether RM, normalised ensemble mean) or `reward_fn(prompts,
    responses, finished) -> floats`. `gold_fn(prompt_text, response, finished)`, when given, is logged
    beside the reward and never trained on. `resume`: continue from out_dir/checkpoint (same prompts
    and settings, else a TetherError) and end at the same update count."""
    from accelerate.utils import set_seed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import get_linear_schedule_with_warmup

    # --- setup ----------------------------------------------------------------------------------
    kl_in, name = check(cfg), cfg.estimator
    rollout_vllm.check_backend(cfg.rollout_backend, name)
    if (reward_fn is None) == (cfg.reward_model is None):
        raise TetherError(f"{name}: give exactly one reward: a reward model folder or a reward function")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    accelerator = make_accelerator(cfg.dtype, name)
    main, world, rank, device = (accelerator.is_main_process, accelerator.num_processes,
                                 accelerator.process_index, accelerator.device)
    out = Path(cfg.out_dir)
    ckpt = out / "checkpoint"
    set_seed(cfg.seed)
    ms = rl.load_models(cfg, device)  # policy, frozen reference and reward model, vLLM engine
    model, tok, ref_model = ms.model, ms.tok, ms.ref
    batch_size = cfg.prompts_per_update * cfg.k  # samples per update and process
    mini = cfg.mini_batch_size or batch_size
    one_step = cfg.ppo_epochs == 1 and mini == batch_size  # one optimizer step per batch: groups stay together
    # With one optimizer step per batch, the "old" log-probs are the training forward's own, detached (the ratio
    # is 1 on that step). Unless decoding already gave them (float32) or vLLM's importance weights need them
    # first, they come from that forward instead of a no-grad pass of their own; KL in the reward (RLOO) is then
    # shaped, and the baseline taken, per micro-batch, which holds whole groups.
    defer_logprobs = one_step and ms.engine is None and cfg.dtype != "float32"
    prompts, encoded, eval_prompts = rl.keep_prompts(tok, prompts, eval_prompts, cfg.max_prompt_length, name)

    policy = ResponseLogits(model)
    # bf16 on CPU: sample from a bf16 copy (autocast would recast every weight at every decoding step)
    sampling_copy = rollout.SamplingCopy() if cfg.dtype == "bfloat16" and device.type == "cpu" else None
    lr = cfg.lr or (1e-4 if cfg.lora else 1e-5)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, eps=1e-5,
                                  fused=True)  # one kernel per step: measured 0.46 -> 0.12 s for 135M on CPU
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, cfg.updates if cfg.anneal_lr else 10**12)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    fingerprint = rl.fingerprint(cfg, encoded, reward_fn, ("micro_batch_size",),  # global batch:
                                 {"prompts_per_update": cfg.prompts_per_update * world,
                                  "mini_batch_size": cfg.mini_batch_size and cfg.mini_batch_size * world})
    state = rl.resume_state(accelerator, ckpt, resume, fingerprint, name, "prompts_per_update x processes")
    update = state["update"] if state is not None else 0
    if main and update == 0:
        shutil.rmtree(ckpt, ignore_errors=True)
    metrics_log = MetricsLog(out, update, main)

    @torch.no_grad()
    def collect(batch: list[Prompt], ids: list[list[int]], seed: int, k: int = 1,
                seeds: list[int] | None = None, policy_logprobs: bool = True) -> Samples:
        """Sample one response per row (rows keep their order; groups of k share a prompt); the policy's
        log-probs come from the decoding itself (float32), so the only extra no-grad pass is the reference's.
        `policy_logprobs=False`: leave them to the training forward (`defer_logprobs`)."""
        inner = accelerator.unwrap_model(policy).model
        reuse = cfg.dtype == "float32" and ms.engine is None  # else recompute them as training will see them
        gens = rl.sample(ms, inner, sampling_copy, accelerator, ids, cfg, seed, seeds, with_states=reuse)
        gens.sort(key=lambda g: g.key)  # generation sorts by prompt length; groups stay consecutive
        responses = [g.token_ids + ([g.stop_token] if g.finished else []) for g in gens]
        input_ids, attention, mask = pack(ids, responses, ms.pad)
        B, T = mask.shape
        width = input_ids.shape[1] - T
        labels = input_ids[:, width:]  # (B, T)
        cols = {c: torch.zeros((B, T)) for c in ("lp", "raw", "ref", "ref_raw")}
        if reuse:
            for row, g in enumerate(gens):
                cols["lp"][row, :g.num_tokens], cols["raw"][row, :g.num_tokens] = g.logprobs, g.logprobs_raw
        step = max(1, cfg.micro_batch_size // k) * k  # whole groups
        for s in range(0, B, step):
            sl = slice(s, s + step)
            x, a, y = input_ids[sl].to(device), attention[sl].to(device), labels[sl].to(device)
            with accelerator.autocast():
                if ref_model is not None:
                    ref_logits = group_logits(ref_model, x, a, width, k)  # (b, T, V)
                else:
                    with inner.disable_adapter():
                        ref_logits = group_logits(inner, x, a, width, k)
            cols["ref"][sl] = logprobs_from_logits(ref_logits.float() / cfg.temperature, y).cpu()
            cols["ref_raw"][sl] = logprobs_from_logits(ref_logits.float(), y).cpu()
            if not reuse and policy_logprobs:
                logits = policy(x, a, width, k).float()  # (b, T, V)
                cols["lp"][sl] = logprobs_from_logits(logits / cfg.temperature, y).cpu()
                cols["raw"][sl] = logprobs_from_logits(logits, y).cpu()
        texts, finished = [g.text for g in gens], [g.finished for g in gens]
        rm_scores = rl.score(ms, reward_fn, accelerator, batch, texts, finished, cfg.micro_batch_size,
                             cfg.rm_max_length, name)[0]
        fin = torch.tensor(finished)
        scores = rm_scores - cfg.no_eos_penalty * (~fin).float()  # (B,)
        eng = rl.engine_logprobs(gens, cols["lp"]) if ms.engine is not None else None
        return Samples(list(batch), texts, fin, input_ids, attention, mask, cols["lp"], cols["raw"], cols["ref"],
                       cols["ref_raw"], scores, rm_scores, eng)

    def shaped(ro: Samples, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, advantages), one per sequence (b,), of the whole groups in `rows`."""
        r = ro.scores[rows]  # (b,)
        if kl_in == "reward":  # RLOO: r = score - beta * sum_t k1_t (logits / temperature), then the baseline
            r = r - cfg.beta * torch.where(ro.mask[rows], ro.logprobs[rows] - ro.ref_logprobs[rows], 0.0).sum(-1)
        return r, ESTIMATORS[name](r, cfg.k)

    def golds(ro: Samples) -> list[float]:
        return [gold_fn(prompt_text(p), t, bool(f)) for p, t, f in zip(ro.prompts, ro.texts, ro.finished)]

    def evaluate() -> dict:
        """Held-out prompts, one sample each at the training temperature: reward, gold, KL, length, EOS."""
        if not eval_prompts:
            return {}
        ids = [models.encode_prompt(tok, p) for p in eval_prompts]
        ros = [collect(eval_prompts[s:s + batch_size], ids[s:s + batch_size], cfg.seed + 1_000_003 + s)
               for s in range(0, len(ids), batch_size)]
        n = len(ids)
        res = {"eval_reward": sum(float(r.rm_scores.sum()) for r in ros) / n,
               "eval_kl": sum(float(r.kl()[0].sum()) for r in ros) / n,
               "eval_length": sum(float(r.mask.sum()) for r in ros) / n,
               "eval_eos": sum(float(r.finished.sum()) for r in ros) / n, "eval_prompts": n}
        if gold_fn is not None:
            res["eval_gold"] = sum(sum(golds(r)) for r in ros) / n
        return res

    # --- loop -----------------------------------------------------------------------------------
    columns = [TextColumn(name), BarColumn(), MofNCompleteColumn(), TextColumn("reward {task.fields[r]}"),
               TextColumn("kl {task.fields[kl]}"), TimeElapsedColumn()]
    mb_gen = torch.Generator().manual_seed(cfg.seed)
    with Progress(*columns, disable=not (show_progress and main)) as bar:
        task = bar.add_task(name, total=cfg.updates, completed=update, r="-", kl="-")
        while update < cfg.updates:
            t_update = time.perf_counter()
            idx = prompt_order(len(prompts), cfg.prompts_per_update, update, rank, world, cfg.seed)
            idx = [i for i in idx for _ in range(cfg.k)]  # k consecutive samples per prompt, as the estimators expect
            first = (update * world + rank) * batch_size  # this process's place in the stream of samples
            ro = collect([prompts[i] for i in idx], [encoded[i] for i in idx], cfg.seed, cfg.k,
                         [rollout.batch_seed(cfg.seed, first + j) for j in range(batch_size)],
                         policy_logprobs=not defer_logprobs)
            t_sample = time.perf_counter() - t_update

            # (B,) each; deferred log-probs: filled in per micro-batch of whole groups, from its training forward
            rewards, advantages = (ro.scores.clone(), torch.zeros(batch_size)) if defer_logprobs else shaped(ro, slice(None))
            tis, w = {}, torch.ones(ro.mask.shape)  # (B, T) per-token weights: 1, or TIS when vLLM sampled
            if ro.engine_logprobs is not None:  # truncated importance sampling (Yao et al. 2025)
                w, tis = truncated_importance_weights(ro.logprobs, ro.engine_logprobs, ro.mask, cfg.tis_cap)

            mb_gen.manual_seed(cfg.seed * 1_000_003 + update)  # minibatch order reproducible on resume
            if one_step:  # micro-batches of whole groups, in order: each prompt runs once for its k responses
                steps = [torch.arange(batch_size).split(max(1, cfg.micro_batch_size // cfg.k) * cfg.k)]
            else:
                steps = [mb.split(cfg.micro_batch_size) for _ in range(cfg.ppo_epochs)
                         for mb in torch.randperm(batch_size, generator=mb_gen).split(mini)]
            stats: dict[str, float] = {}
            local = {str(j): ro.mask[torch.cat(micros)].sum() for j, micros in enumerate(steps)}
            n_toks = all_sum(accelerator, local)  # response tokens of each optimizer step, all processes
            for j, micros in enumerate(steps):  # one optimizer step each
                n_tok = torch.tensor(max(n_toks[str(j)], 1.0))  # tokens in this optimizer step
                for i_micro, micro in enumerate(micros):
                    with accumulating(accelerator, policy, i_micro == len(micros) - 1):  # one all-reduce per step
                        x, a, width, t = rl.trim(ro.input_ids, ro.attention_mask, ro.mask, micro)
                        y = ro.input_ids[micro, ro.width:ro.width + t].to(device)  # (b, t)
                        m = ro.mask[micro, :t].to(device)  # (b, t)
                        new_lp, ent, raw_lp = policy(x.to(device), a.to(device), width, cfg.k if one_step else 1,
                                                     targets=y, temperature=cfg.temperature,
                                                     raw=defer_logprobs)  # (b, t) each
                        if defer_logprobs:  # the policy before this batch's one step is this forward's own
                            ro.logprobs[micro, :t] = new_lp.detach().float().cpu()
                            ro.raw_logprobs[micro, :t] = raw_lp.cpu()
                            rewards[micro], advantages[micro] = shaped(ro, micro)
                        adv = advantages[micro].to(device).unsqueeze(1) * w[micro, :t].to(device)  # (b, t) broadcast
                        pg, pg_stats = ppo_policy_loss(new_lp, ro.logprobs[micro, :t].to(device), adv, m,
                                                       cfg.clip_eps)  # token mean over the micro-batch
                        share = m.sum() / n_tok.to(device)  # -> token mean over the optimizer step
                        lp_m = torch.where(m, new_lp, 0.0)  # padding zeroed before exp (no inf * 0)
                        ref_m = torch.where(m, ro.ref_logprobs[micro, :t].to(device), 0.0)
                        k3 = masked_mean(kl_k3(lp_m, ref_m), m)  # () GRPO eq. 4, logits / temperature
                        loss = (pg + cfg.beta * k3 if kl_in == "loss" else pg) * share  # GRPO eq. 3: + beta * D_KL
                        accelerator.backward(loss * world)  # DDP averages over processes
                    entropy = masked_mean(ent, m)
                    for k, v in [("policy_loss", pg), ("kl_loss", k3), ("entropy", entropy)] + list(pg_stats.items()):
                        stats[k] = stats.get(k, 0.0) + float(v.detach()) * float(share) / len(steps)
                grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                stats["grad_norm"] = stats.get("grad_norm", 0.0) + grad_norm_value(grad_norm) / len(steps) / world
            lr_now = scheduler.get_last_lr()[0]
            scheduler.step()
            update += 1
            stats = all_sum(accelerator, stats)  # token-weighted means over all processes
            if not all(math.isfinite(stats[k]) for k in ("policy_loss", "grad_norm")):
                raise TetherError(f"{name}: the loss became non-finite at update {update}; try a lower lr or float32")

            k1, k3 = ro.kl()  # (B,), (B,)
            g = {k: gather_cpu(accelerator, v.float()) for k, v in {  # (B * world,) the global batch
                "rm": ro.rm_scores, "score": ro.scores, "k1": k1, "k3": k3, "adv": advantages.abs(),
                "len": ro.mask.sum(-1), "eos": ro.finished, "shaped": rewards - ro.scores,
                "gold": torch.tensor(golds(ro) if gold_fn is not None else [0.0] * len(ro.texts))}.items()}
            spread = g["score"].view(-1, cfg.k)  # (G, k) the score each group's baseline sees (before any KL)
            record = {"step": update, "reward": float(g["rm"].mean()), "reward_std": float(g["rm"].std()),
                      "score": float(g["score"].mean()), "kl": float(g["k1"].mean()), "kl_k3": float(g["k3"].mean()),
                      "beta": cfg.beta, "advantage_abs": float(g["adv"].mean()),
                      "zero_std_groups": float((spread.max(1).values == spread.min(1).values).float().mean()),
                      "length": float(g["len"].mean()), "eos": float(g["eos"].mean()),
                      "lr": lr_now, "sample_seconds": t_sample, "seconds": time.perf_counter() - t0,
                      "samples_per_s": len(g["rm"]) / (time.perf_counter() - t_update)}
            if kl_in == "reward":
                record["non_score_reward"] = float(g["shaped"].mean())
            record |= stats | {k: v / world for k, v in all_sum(accelerator, tis).items()}
            if gold_fn is not None:
                record["gold"] = float(g["gold"].mean())
            if update % cfg.log_every == 0 or update == cfg.updates:
                metrics_log.log(record)
            bar.update(task, completed=update, r=f"{record['reward']:.3f}", kl=f"{record['kl']:.2f}")
            if cfg.eval_every and update % cfg.eval_every == 0 and update < cfg.updates:
                metrics_log.log({"step": update} | evaluate())
            if cfg.checkpoint_every and update % cfg.checkpoint_every == 0 and update < cfg.updates:
                save_checkpoint(accelerator, ckpt, {"update": update, "fingerprint": fingerprint})
            if cfg.stop_after and update >= cfg.stop_after and update < cfg.updates:  # simulated crash
                metrics_log.close()
                return OnlineResult(accelerator.unwrap_model(policy).model, tok, {}, update, out, None, False)

    # --- save -----------------------------------------------------------------------------------
    optimizer.state.clear()  # Adam's moments are not needed any more: free them before evaluating and saving
    metrics = evaluate()
    inner = accelerator.unwrap_model(policy).model
    model_dir = out / "model"
    if main:
        models.save_model(inner, tok, model_dir)
    accelerator.wait_for_everyone()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]) if main else {}
    metrics |= {"updates": update, "seconds": time.perf_counter() - t0, "config": dataclasses.asdict(cfg),
                "kl_in": kl_in, "last": last, "prompts": len(prompts)}
    if main:
        if eval_prompts:
            metrics_log.log({"step": update} | {k: v for k, v in metrics.items() if k.startswith("eval_")})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: out_dir/model replaces it
        if show_progress:
            bar.console.print(f"policy: {model_dir} (metrics: {out / 'metrics.json'})", markup=False, soft_wrap=True)
    metrics_log.close()
    return OnlineResult(inner, tok, metrics, update, out, model_dir, True)
