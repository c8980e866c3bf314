"""What the sampling RL recipes (`ppo.py`, `online.py` for RLOO/GRPO) share, step by step: the models
they load, the prompts they keep, the run fingerprint that guards `--resume`, scoring responses,
drawing samples (transformers or vLLM), and trimming a minibatch's padding.

Each function is one stage of those recipes, lifted out so both read the same way; the algorithms
(advantages, losses, KL) stay in each recipe and in `tether/algos/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tether import models, reward, rollout, rollout_vllm
from tether.errors import TetherError
from tether.recipes.common import (Prompt, RewardFn, accelerate_broadcast, frozen, load_checkpoint_state,
                                   training_attention)


@dataclass
class Models:
    model: object  # the policy being trained (a PeftModel under LoRA)
    tok: object
    ref: object | None  # the frozen reference; None under LoRA (the adapters disabled are the reference)
    rm: object | None  # the frozen reward model, or None when a reward function scores
    rm_tok: object | None
    pad: int  # the pad token id of `tok`
    engine: object | None  # a vLLM engine when cfg.rollout_backend == "vllm"


def load_models(cfg, device: torch.device) -> Models:
    """The policy (eager attention on CPU for training), the frozen reference and reward model (bf16
    linear weights under bf16, `common.frozen`), and the vLLM engine when asked for."""
    model, tok = models.load_policy(cfg.policy, lora=cfg.lora, attn_implementation=training_attention(device))
    ref = None if cfg.lora else frozen(models.load_model(cfg.policy), device, cfg.dtype)
    rm = rm_tok = None
    if cfg.reward_model is not None:
        rm, rm_tok = reward.load_reward_model(cfg.reward_model)
        rm = frozen(rm, device, cfg.dtype)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    engine = rollout_vllm.VLLMRollout(models.resolve(cfg.policy), tok, seed=cfg.seed) \
        if cfg.rollout_backend == "vllm" else None
    return Models(model, tok, ref, rm, rm_tok, pad, engine)


def keep_prompts(tok, prompts: list[Prompt], eval_prompts: list[Prompt] | None, max_length: int,
                 name: str) -> tuple[list[Prompt], list[list[int]], list[Prompt]]:
    """(training prompts, their token ids, held-out prompts), leaving out prompts over `max_length` tokens."""
    encoded = [models.encode_prompt(tok, p) for p in prompts]
    keep = [i for i, ids in enumerate(encoded) if len(ids) <= max_length]
    if not keep:
        raise TetherError(f"{name}: no prompts of at most {max_length} tokens to train on")
    held_out = [p for p in eval_prompts or [] if len(models.encode_prompt(tok, p)) <= max_length]
    return [prompts[i] for i in keep], [encoded[i] for i in keep], held_out


def fingerprint(cfg, encoded: list[list[int]], reward_fn: RewardFn | None, ignore: tuple[str, ...],
                global_batch: dict) -> str:
    """A hash of what a resumed run must share with the killed one: the settings (less `ignore`, with
    the per-process batch fields replaced by their global values `global_batch`), the prompts' token ids
    and the reward function's name."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("threads", "log_every", "eval_every", "checkpoint_every", "out_dir", "stop_after",
                             "rollout_backend") + ignore}
    return hashlib.sha256(json.dumps([settings | global_batch, encoded, getattr(reward_fn, "__name__", None)],
                                     default=str).encode()).hexdigest()


def resume_state(accelerator, ckpt: Path, resume: bool, fingerprint: str, name: str, batch: str) -> dict | None:
    """The checkpoint's tether state after loading model, optimizer and scheduler from it (every
    process), or None for a fresh start; a TetherError when it was written for another run (`batch`
    names the global batch size's parts in the message)."""
    state = load_checkpoint_state(ckpt) if resume and accelerator.is_main_process else None
    if resume and accelerator.num_processes > 1:
        state = accelerate_broadcast(state)
    if state is None:
        return None
    if state["fingerprint"] != fingerprint:
        raise TetherError(f"{name}: {ckpt} was written for other prompts or settings (or another global batch: "
                          f"{batch}); remove it or run without --resume")
    accelerator.load_state(str(ckpt))
    return state


def score(ms: Models, reward_fn: RewardFn | None, accelerator, ps: list[Prompt], texts: list[str],
          finished: list[bool], batch_size: int, max_length: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward (B,), ensemble spread (B,)): the reward model's normalised ensemble mean and spread, or the
    function's values (spread 0), which must be one finite number per response."""
    if ms.rm is not None:
        with accelerator.autocast():
            r = reward.score_texts(ms.rm, ms.rm_tok, list(zip(ps, texts, finished)), batch_size, max_length)  # (B, H)
        return reward.ensemble_stats(r)
    values = list(reward_fn(ps, texts, finished))
    if len(values) != len(texts) or not all(math.isfinite(float(v)) for v in values):
        raise TetherError(f"{name}: the reward function must return {len(texts)} finite numbers, got {values[:4]}...")
    return torch.tensor([float(v) for v in values], dtype=torch.float32), torch.zeros(len(texts))


def sample(ms: Models, policy, sampling_copy, accelerator, ids: list[list[int]], cfg, seed: int,
           seeds: list[int] | None, with_states: bool) -> list[rollout.Generation]:
    """One response per row of `ids` from the current `policy` (an unwrapped HF model): through vLLM
    after pushing the weights to it, or `rollout.generate` in one batch, from the bf16 `sampling_copy`
    when there is one (refreshed, then released for the training step). In generation order (longest
    prompt first); each Generation's `key` is its row."""
    if ms.engine is not None:
        ms.engine.load_weights(policy)
        return ms.engine.generate(list(enumerate(ids)), temperature=cfg.temperature,
                                  max_new_tokens=cfg.max_new_tokens, seeds=seeds or [seed + j for j in range(len(ids))],
                                  stop_ids=rollout.eos_ids(policy, ms.tok))
    sampler = sampling_copy.sync(policy) if sampling_copy else policy
    with accelerator.autocast() if not sampling_copy else contextlib.nullcontext():
        gens = next(rollout.generate(sampler, ms.tok, list(enumerate(ids)), temperature=cfg.temperature,
                                     max_new_tokens=cfg.max_new_tokens, batch_size=len(ids), seed=seed,
                                     with_states=with_states, seeds=seeds))
    if sampling_copy:
        sampling_copy.release()
    return gens


def engine_logprobs(gens: list[rollout.Generation], trainer: torch.Tensor) -> torch.Tensor:
    """(B, T) the vLLM engine's log-probs of the samples (rows in `gens` order), beside the trainer's
    `trainer` (B, T); a token the engine did not report takes the trainer's (no correction)."""
    eng = torch.zeros(trainer.shape)
    for row, g in enumerate(gens):
        eng[row, :g.num_tokens] = g.logprobs
    return torch.where(eng.isnan(), trainer, eng)


def trim(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor):
    """Rows `idx` of a batch (prompt ‖ response, (B, P + T), response mask (B, T)) without the columns
    that are padding in every one of them: (input_ids, attention_mask, width, t), t = response columns kept."""
    width = input_ids.shape[1] - mask.shape[1]
    attn, m = attention_mask[idx], mask[idx]
    first = int(attn[:, :width].any(0).long().argmax())  # first prompt column anyone uses
    t = int(m.any(0).nonzero().max()) + 1
    return input_ids[idx, first:width + t], attn[:, first:width + t], width - first, t
