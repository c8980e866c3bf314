"""`tether ppo`: PPO against a reward model (or any Python function of the text) under a KL penalty.

Reads top to bottom: setup (accelerator, policy with a value head, reference, reward, prompt stream),
loop (sample a batch → score it → per-token rewards and GAE → PPO epochs over minibatches → KL
controller), save (held-out evaluation, the policy as a plain HF folder, metrics).

The method is Ziegler et al. 2019 / Ouyang et al. 2022 (InstructGPT, eq. 2) with the details of
Huang et al. 2022 ("The N implementation details of RLHF with PPO"): the reward is the RM score on
the last response token minus beta * k1 KL to the frozen reference on every token; gamma = 1;
logits are divided by the sampling temperature; dropout is off (HF models load in eval mode and
PPO never switches it on); advantages are whitened per batch; a response cut off without EOS loses
`no_eos_penalty`; the RM's rewards are normalised (mean 0, std 1 on the SFT policy's samples, stored
in the RM by `tether rm`). How this departs from InstructGPT:

- The value function is a linear head on the policy's last hidden state (shared backbone),
  initialised to zero and weighted by `vf_coef`, instead of a separate value model initialised from
  the RM: one forward and backward per minibatch instead of two. (OpenAI's lm-human-preferences
  used the same shared layout.)
- Logits are computed only for the response positions (the prompt's are never needed), and
  rollout forwards run in minibatches, so peak memory stays at one minibatch of (B, T, V) logits. In
  the training step they are never held whole: log-probs come from the hidden states through a
  chunked output layer whose chunks are recomputed in backward (`rollout.head_logprobs`).
- The "old" log-probs and values are read off the KV-cached decoding (float32; with bf16 autocast
  they are recomputed): the rollout's only extra forward pass is the reference's.
- With LoRA, the reference is the same model with its adapters disabled: no second copy in memory.

KL is reported as nats per sequence, summed over response tokens, from the *raw* logits (not divided
by the temperature), averaged over the policy's own samples: `kl` (k1) and `kl_k3`.
`batch_size` and `mini_batch_size` are per process; under `accelerate launch` each process samples its
own share of the global batch, each sample from its own seed (so the samples do not depend on the
process count), and advantages are whitened, losses token-averaged and metrics taken over the global
batch. Minibatches are drawn within each process's share, so with mini_batch_size < batch_size their
composition (not their distribution) depends on the process count.
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
from tether.models import prompt_text
from tether.recipes import rl
from tether.rollout import head_logprobs, pack, response_hidden, response_logits
from tether.algos.advantages import gae, kl_penalty_rewards, masked_mean
from tether.algos.kl import AdaptiveKLController, FixedKLController, kl_k3
from tether.algos.offpolicy import truncated_importance_weights
from tether.algos.losses import logprobs_from_logits, ppo_policy_loss, value_loss
from tether.errors import TetherError
from tether.recipes.common import (GoldFn, MetricsLog, Prompt, RewardFn, all_sum, gather_cpu, grad_norm_value,
                                   make_accelerator, masked_moments, prompt_order, save_checkpoint, whiten_across)


@dataclass
class PPOConfig:
    policy: str = models.BUNDLED  # the SFT model to start from; also the frozen reference
    reward_model: str | None = None  # a reward model folder from `tether rm` (or pass reward_fn to train)
    lora: models.LoraSettings | None = None  # train LoRA adapters; reference = adapters disabled
    lr: float | None = None  # None: 1e-5 for full fine-tuning, 1e-4 with LoRA
    updates: int = 20  # PPO iterations; each samples batch_size responses and trains on them
    batch_size: int = 16  # prompts per update (one response each), per process
    mini_batch_size: int = 8  # responses per optimizer step
    ppo_epochs: int = 2  # passes over each batch of samples
    max_new_tokens: int = 64
    max_prompt_length: int = 256  # prompts longer than this (in tokens) are left out
    temperature: float = 0.7  # sampling temperature; training logits are divided by it too
    kl_coef: float = 0.05  # beta of the per-token KL penalty (initial value when adaptive)
    kl_target: float | None = None  # nats per sequence; set it to adapt beta (Ziegler et al. 2019)
    kl_horizon: float = 10_000.0  # adaptive controller horizon, in samples
    gamma: float = 1.0
    lam: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip
    vf_coef: float = 0.1  # value loss weight
    ent_coef: float = 0.0  # entropy bonus weight (entropy is always logged)
    no_eos_penalty: float = 1.0  # subtracted from the score of a response cut off without EOS
    whiten_rewards: bool = False  # whiten the per-token rewards (mean kept) before GAE
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
    out_dir: str = "runs/ppo"
    stop_after: int | None = None  # testing hook: return after this many updates as if killed


@dataclass
class PPOResult:
    model: object  # the trained policy (LoRA merged when saved)
    tokenizer: object
    metrics: dict
    updates: int
    out_dir: Path
    model_dir: Path | None  # None when stopped early (stop_after)
    completed: bool


@dataclass
class Rollout:
    """One batch of samples and everything PPO needs; P = prompt width, T = response width."""

    prompts: list[Prompt]  # in sample order
    texts: list[str]  # decoded responses (EOS not included)
    finished: torch.Tensor  # (B,) bool: ended with EOS
    input_ids: torch.Tensor  # (B, P + T) prompt (left-padded) ‖ response incl. EOS (right-padded)
    attention_mask: torch.Tensor  # (B, P + T)
    mask: torch.Tensor  # (B, T) bool: real response tokens
    logprobs: torch.Tensor  # (B, T) policy, logits / temperature (PPO's "old" log-probs)
    ref_logprobs: torch.Tensor  # (B, T) reference, logits / temperature
    kl_raw: torch.Tensor  # (B, T) k1 from raw logits (reporting)
    kl3_raw: torch.Tensor  # (B, T) k3 from raw logits (reporting)
    values: torch.Tensor  # (B, T) V(s_t) before the update
    scores: torch.Tensor  # (B,) reward of each response, no-EOS penalty applied
    rm_scores: torch.Tensor  # (B,) reward before the penalty
    rm_std: torch.Tensor  # (B,) ensemble spread (0 for one head or a function)
    engine_logprobs: torch.Tensor | None = None  # (B, T) the vLLM engine's log-probs of the samples (TIS)

    @property
    def width(self) -> int:
        return self.input_ids.shape[1] - self.mask.shape[1]


class PolicyWithValue(torch.nn.Module):
    """The policy and a scalar value head on its last hidden state, behind one forward, so DDP/FSDP
    wrap the call that trains."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        d = model.config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(d, 1)
        torch.nn.init.zeros_(self.value_head.weight)  # Huang et al. 2022: value head starts at 0
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, width: int, targets=None, temperature: float = 1.0,
                entropy_grad: bool = False):
        """(logits (B, T, V), values (B, T)); with the response `targets` (B, T), for training, (their
        log-probs under logits / temperature (B, T), entropy (B, T), values (B, T)) through
        `rollout.head_logprobs`, which never holds the (B, T, V) logits whole."""
        hidden = response_hidden(self.model, input_ids, attention_mask, width)  # (B, T, D)
        values = self.value_head(hidden).squeeze(-1).float()  # (B, T)
        if targets is None:
            inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            return inner.get_output_embeddings()(hidden), values
        return *head_logprobs(self.model, hidden, targets, temperature, entropy_grad)[:2], values


def train(cfg: PPOConfig, prompts: list[Prompt], reward_fn: RewardFn | None = None,
          eval_prompts: list[Prompt] | None = None, gold_fn: GoldFn | None = None,
          resume: bool = False, show_progress: bool = True) -> PPOResult:
    """Optimise the policy with PPO; the result lands in out_dir/model (metrics: metrics.json/.jsonl, tb/).

    The reward is `cfg.reward_model` (a tether RM, normalised ensemble mean) or `reward_fn(prompts,
    responses, finished) -> floats`. `gold_fn(prompt_text, response, finished)`, when given, is
    logged beside the reward and never trained on. `resume`: continue from out_dir/checkpoint (same
    prompts and settings, else a TetherError) and end at the same update count."""
    from accelerate.utils import set_seed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import get_linear_schedule_with_warmup

    # --- setup ----------------------------------------------------------------------------------
    if (reward_fn is None) == (cfg.reward_model is None):
        raise TetherError("ppo: give exactly one reward: a reward model folder or a reward function")
    if cfg.mini_batch_size > cfg.batch_size or cfg.batch_size % cfg.mini_batch_size:
        raise TetherError(f"ppo: batch_size ({cfg.batch_size}) must be a multiple of mini_batch_size "
                          f"({cfg.mini_batch_size})")
    if cfg.temperature <= 0:
        raise TetherError("ppo: temperature must be > 0 (PPO needs sampled responses)")
    rollout_vllm.check_backend(cfg.rollout_backend, "ppo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    accelerator = make_accelerator(cfg.dtype, "ppo")
    main, world, rank, device = (accelerator.is_main_process, accelerator.num_processes,
                                 accelerator.process_index, accelerator.device)
    out = Path(cfg.out_dir)
    ckpt = out / "checkpoint"
    set_seed(cfg.seed)
    ms = rl.load_models(cfg, device)  # policy, frozen reference and reward model, vLLM engine
    model, tok, ref_model, rm = ms.model, ms.tok, ms.ref, ms.rm
    prompts, encoded, eval_prompts = rl.keep_prompts(tok, prompts, eval_prompts, cfg.max_prompt_length, "ppo")

    policy = PolicyWithValue(model)
    # bf16 on CPU: sample from a bf16 copy (autocast would recast every weight at every decoding step)
    sampling_copy = rollout.SamplingCopy() if cfg.dtype == "bfloat16" and device.type == "cpu" else None
    lr = cfg.lr or (1e-4 if cfg.lora else 1e-5)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, eps=1e-5,
                                  fused=True)  # one kernel per step: measured 0.46 -> 0.12 s for 135M on CPU
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, cfg.updates if cfg.anneal_lr else 10**12)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
              else FixedKLController(cfg.kl_coef))
    fingerprint = rl.fingerprint(cfg, encoded, reward_fn, (), {"batch_size": cfg.batch_size * world,
                                                              "mini_batch_size": cfg.mini_batch_size * world})
    update = 0
    state = rl.resume_state(accelerator, ckpt, resume, fingerprint, "ppo", "batch_size x processes")
    if state is not None:
        kl_ctl.load_state_dict(state["kl_ctl"])
        update = state["update"]
    if main and update == 0:
        shutil.rmtree(ckpt, ignore_errors=True)
    metrics_log = MetricsLog(out, update, main)

    @torch.no_grad()
    def collect(batch: list[Prompt], ids: list[list[int]], seed: int, seeds: list[int] | None = None) -> Rollout:
        """Sample one response per prompt (`seeds`: one per prompt); log-probs and values come from the
        decoding itself (float32), so the only extra no-grad pass is the reference's."""
        inner = accelerator.unwrap_model(policy)
        reuse = cfg.dtype == "float32" and ms.engine is None  # else recompute them as training will see them
        gens = rl.sample(ms, inner.model, sampling_copy, accelerator, ids, cfg, seed, seeds, with_states=reuse)
        order = [g.key for g in gens]  # generation sorts by prompt length
        responses = [g.token_ids + ([g.stop_token] if g.finished else []) for g in gens]
        input_ids, attention, mask = pack([ids[i] for i in order], responses, ms.pad)
        B, T = mask.shape
        width = input_ids.shape[1] - T
        labels = input_ids[:, width:]  # (B, T)
        cols = {k: torch.zeros((B, T)) for k in ("lp", "ref", "raw", "ref_raw", "v")}
        if reuse:
            for row, g in enumerate(gens):
                n = g.num_tokens
                cols["lp"][row, :n], cols["raw"][row, :n] = g.logprobs, g.logprobs_raw
                cols["v"][row, :n] = inner.value_head(g.hidden.to(device)).squeeze(-1).float().cpu()
        for s in range(0, B, cfg.mini_batch_size):
            sl = slice(s, s + cfg.mini_batch_size)
            x, a, y = input_ids[sl].to(device), attention[sl].to(device), labels[sl].to(device)
            if not reuse:
                logits, values = policy(x, a, width)  # (b, T, V), (b, T)
                cols["lp"][sl] = logprobs_from_logits(logits.float() / cfg.temperature, y).cpu()
                cols["raw"][sl] = logprobs_from_logits(logits.float(), y).cpu()
                cols["v"][sl] = values.cpu()
            with accelerator.autocast():
                if ref_model is not None:
                    ref_logits, _ = response_logits(ref_model, x, a, width)
                else:
                    with inner.model.disable_adapter():
                        ref_logits, _ = response_logits(inner.model, x, a, width)
            cols["ref"][sl] = logprobs_from_logits(ref_logits.float() / cfg.temperature, y).cpu()
            cols["ref_raw"][sl] = logprobs_from_logits(ref_logits.float(), y).cpu()
        texts, finished = [g.text for g in gens], [g.finished for g in gens]
        ps = [batch[i] for i in order]
        rm_scores, rm_std = rl.score(ms, reward_fn, accelerator, ps, texts, finished, cfg.mini_batch_size,
                                     cfg.rm_max_length, "ppo")
        fin = torch.tensor(finished)
        scores = rm_scores - cfg.no_eos_penalty * (~fin).float()  # (B,)
        kl_raw = torch.where(mask, cols["raw"] - cols["ref_raw"], 0.0)
        kl3 = torch.where(mask, kl_k3(cols["raw"], cols["ref_raw"]), 0.0)
        eng = rl.engine_logprobs(gens, cols["lp"]) if ms.engine is not None else None
        return Rollout(ps, texts, fin, input_ids, attention, mask, cols["lp"], cols["ref"], kl_raw, kl3,
                       cols["v"], scores, rm_scores, rm_std, eng)

    def golds(ro: Rollout) -> list[float]:
        return [gold_fn(prompt_text(p), t, bool(f)) for p, t, f in zip(ro.prompts, ro.texts, ro.finished)]

    def evaluate() -> dict:
        """Held-out prompts, one sample each at the training temperature: reward, gold, KL, length, EOS."""
        if not eval_prompts:
            return {}
        ids = [models.encode_prompt(tok, p) for p in eval_prompts]
        ros = [collect(eval_prompts[s:s + cfg.batch_size], ids[s:s + cfg.batch_size], cfg.seed + 1_000_003 + s)
               for s in range(0, len(ids), cfg.batch_size)]
        n = len(ids)
        res = {"eval_reward": sum(float(r.rm_scores.sum()) for r in ros) / n,
               "eval_kl": sum(float(r.kl_raw.sum()) for r in ros) / n,
               "eval_length": sum(float(r.mask.sum()) for r in ros) / n,
               "eval_eos": sum(float(r.finished.sum()) for r in ros) / n, "eval_prompts": n}
        if gold_fn is not None:
            res["eval_gold"] = sum(sum(golds(r)) for r in ros) / n
        return res

    # --- loop -----------------------------------------------------------------------------------
    columns = [TextColumn("ppo"), BarColumn(), MofNCompleteColumn(), TextColumn("reward {task.fields[r]}"),
               TextColumn("kl {task.fields[kl]}"), TimeElapsedColumn()]
    mb_gen = torch.Generator().manual_seed(cfg.seed)
    with Progress(*columns, disable=not (show_progress and main)) as bar:
        task = bar.add_task("ppo", total=cfg.updates, completed=update, r="-", kl="-")
        while update < cfg.updates:
            t_update = time.perf_counter()
            idx = prompt_order(len(prompts), cfg.batch_size, update, rank, world, cfg.seed)
            first = (update * world + rank) * cfg.batch_size  # this process's place in the prompt stream
            ro = collect([prompts[i] for i in idx], [encoded[i] for i in idx], cfg.seed,
                         [rollout.batch_seed(cfg.seed, first + j) for j in range(cfg.batch_size)])
            t_sample = time.perf_counter() - t_update

            # per-token rewards: -beta * k1 on every token, the score on the last (InstructGPT eq. 2)
            rewards, kl = kl_penalty_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.mask, kl_ctl.value)  # (B, T)
            if cfg.whiten_rewards:
                rewards = whiten_across(accelerator, rewards, ro.mask, shift_mean=False)
            advantages, returns = gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)  # (B, T), (B, T)
            advantages = whiten_across(accelerator, advantages, ro.mask)  # (B, T) over the global batch
            tis = {}
            if ro.engine_logprobs is not None:  # sampled by vLLM: truncated importance sampling (Yao et al. 2025)
                w, tis = truncated_importance_weights(ro.logprobs, ro.engine_logprobs, ro.mask, cfg.tis_cap)
                advantages = advantages * w  # (B, T) = weighting each token's clipped loss by w

            stats: dict[str, float] = {}
            mb_gen.manual_seed(cfg.seed * 1_000_003 + update)  # minibatch order reproducible on resume
            mbs = [mb for _ in range(cfg.ppo_epochs)
                   for mb in torch.randperm(len(ro.texts), generator=mb_gen).split(cfg.mini_batch_size)]
            local = {str(j): ro.mask[mb].sum() for j, mb in enumerate(mbs)}
            glob = all_sum(accelerator, local)  # response tokens of each minibatch on all processes
            for j, mb in enumerate(mbs):
                share = float(local[str(j)]) / max(glob[str(j)], 1.0)  # token means -> over the global minibatch
                x, a, width, t = rl.trim(ro.input_ids, ro.attention_mask, ro.mask, mb)
                m = ro.mask[mb, :t].to(device)
                new_lp, ent, values = policy(x.to(device), a.to(device), width,  # (b, t) each
                                             targets=ro.input_ids[mb, ro.width:ro.width + t].to(device),
                                             temperature=cfg.temperature, entropy_grad=bool(cfg.ent_coef))
                pg, pg_stats = ppo_policy_loss(new_lp, ro.logprobs[mb, :t].to(device),
                                               advantages[mb, :t].to(device), m, cfg.clip_eps)
                vf, vf_stats = value_loss(values, ro.values[mb, :t].to(device), returns[mb, :t].to(device), m,
                                          cfg.vf_clip)
                entropy = masked_mean(ent, m)
                loss = pg + cfg.vf_coef * vf - cfg.ent_coef * entropy
                accelerator.backward(loss * (share * world))  # DDP averages over processes
                grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for k, v in [("policy_loss", pg), ("value_loss", vf), ("entropy", entropy)] + \
                        list(pg_stats.items()) + list(vf_stats.items()):
                    stats[k] = stats.get(k, 0.0) + float(v.detach()) * share / len(mbs)
                stats["grad_norm"] = stats.get("grad_norm", 0.0) + grad_norm_value(grad_norm) / len(mbs) / world
            lr_now = scheduler.get_last_lr()[0]
            scheduler.step()
            seq_kl = ro.kl_raw.sum(-1)  # (B,) nats per sequence, raw logits
            kl_coef = kl_ctl.value
            # per-sample quantities of the global batch (B * world,), for the controller and the log
            g = {k: gather_cpu(accelerator, v.float()) for k, v in {
                "rm": ro.rm_scores, "score": ro.scores, "kl": seq_kl, "k3": ro.kl3_raw.sum(-1),
                "pen": torch.where(ro.mask, kl, 0.0).sum(-1), "len": ro.mask.sum(-1), "eos": ro.finished,
                "std": ro.rm_std, "gold": torch.tensor(golds(ro) if gold_fn is not None else [0.0] * len(ro.texts))}.items()}
            kl_ctl.update(float(g["pen"].mean()), len(g["pen"]))
            update += 1
            stats = all_sum(accelerator, stats)  # token-weighted means over the global minibatches
            if not all(math.isfinite(stats[k]) for k in ("policy_loss", "value_loss")):
                raise TetherError(f"ppo: the loss became non-finite at update {update}; try a lower lr or float32")

            explained = 1 - masked_moments(accelerator, returns - ro.values, ro.mask)[1] / max(
                masked_moments(accelerator, returns, ro.mask)[1], 1e-8)
            record = {"step": update, "reward": float(g["rm"].mean()), "reward_std": float(g["rm"].std()),
                      "score": float(g["score"].mean()), "kl": float(g["kl"].mean()), "kl_k3": float(g["k3"].mean()),
                      "kl_coef": kl_coef, "non_score_reward": float(-kl_coef * g["pen"].mean()),
                      "length": float(g["len"].mean()), "eos": float(g["eos"].mean()),
                      "explained_variance": float(explained),
                      "lr": lr_now, "sample_seconds": t_sample, "seconds": time.perf_counter() - t0,
                      "samples_per_s": len(g["rm"]) / (time.perf_counter() - t_update)}
            record |= stats | {k: v / world for k, v in all_sum(accelerator, tis).items()}
            if rm is not None and rm.config.num_labels > 1:
                record["reward_uncertainty"] = float(g["std"].mean())
            if gold_fn is not None:
                record["gold"] = float(g["gold"].mean())
            if update % cfg.log_every == 0 or update == cfg.updates:
                metrics_log.log(record)
            bar.update(task, completed=update, r=f"{record['reward']:.3f}", kl=f"{record['kl']:.2f}")
            if cfg.eval_every and update % cfg.eval_every == 0 and update < cfg.updates:
                metrics_log.log({"step": update} | evaluate())
            if cfg.checkpoint_every and update % cfg.checkpoint_every == 0 and update < cfg.updates:
                save_checkpoint(accelerator, ckpt, {"update": update, "fingerprint": fingerprint,
                                                    "kl_ctl": kl_ctl.state_dict()})
            if cfg.stop_after and update >= cfg.stop_after and update < cfg.updates:  # simulated crash
                metrics_log.close()
                return PPOResult(accelerator.unwrap_model(policy).model, tok, {}, update, out, None, False)

    # --- save -----------------------------------------------------------------------------------
    metrics = evaluate()
    inner = accelerator.unwrap_model(policy).model
    model_dir = out / "model"
    if main:
        models.save_model(inner, tok, model_dir)
    accelerator.wait_for_everyone()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]) if main else {}
    metrics |= {"updates": update, "seconds": time.perf_counter() - t0, "config": dataclasses.asdict(cfg),
                "last": last, "prompts": len(prompts)}
    if main:
        if eval_prompts:
            metrics_log.log({"step": update} | {k: v for k, v in metrics.items() if k.startswith("eval_")})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: out_dir/model replaces it
        if show_progress:
            bar.console.print(f"policy: {model_dir} (metrics: {out / 'metrics.json'})", markup=False, soft_wrap=True)
    metrics_log.close()
    return PPOResult(inner, tok, metrics, update, out, model_dir, True)
