"""`tether sft`: supervised fine-tuning on demonstrations (InstructGPT's first stage).

Reads top to bottom: setup (accelerator, model, encoded demonstrations, the whole batch plan), loop
(packed rows, summed next-token NLL on the answer tokens, AdamW with warmup + decay), save (held-out
loss, a few greedy samples, plain HF model folder, metrics).

As in InstructGPT (Ouyang et al. 2022, §3.5): the policy learns labeler demonstrations with a
cosine-decayed learning rate over a few epochs. The loss covers only the answer (the usual
completion-only loss, TRL's `completion_only_loss`), which ends with the chat template's end-of-turn
token so the model learns to stop. How it departs, to run fast on CPUs:
- Prefix-sharing packing. The demonstrations of a micro-batch are sorted and packed into rows as a
  token trie: a prefix shared by several of them (the template's system prompt, a prompt answered
  twice) is computed once, and each token attends only to its own prefix through a block (tree) mask,
  with position ids = depth. It is RadixAttention's prefix sharing (SGLang, Zheng et al. 2024) applied
  to training; each token sees exactly what it would see alone, so the per-token loss is unchanged
  (tests/test_sft.py checks it against separate forwards). Rows of about `pack_length` tokens keep the
  dense masked attention cheap; the only padding left is at the end of the shorter rows. On the bundled
  model and bench/sft.py's demonstrations (batch 8), one packed row cost 0.67x the CPU time of one padded
  row per demonstration. `packing=False` gives each demonstration its own (padded) row. (The packing
  lives in tether/recipes/packing.py.)
- Only answer positions reach the output layer (49k-word vocabulary: the largest single matmul of a
  small model), through a chunked fused linear cross-entropy (as in Liger Kernel, Hsu et al. 2024;
  `tether.algos.losses.LinearNLL`):
  the logits of one chunk exist at a time and the gradients are formed in the same pass.
- The loss is the mean over all answer tokens of an optimizer step (every micro-batch and process),
  so batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same step.
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

from tether.algos.losses import LinearNLL
from tether.errors import TetherError
from tether.models import BUNDLED, LoraSettings, encode_prompt
from tether.recipes.packing import pack, shared_prefix
from tether.rollout import plain_head


@dataclass
class Demonstration:
    prompt: list[dict] | str  # the conversation before the answer, or a raw prompt (base-model style)
    answer: str  # the assistant's answer to learn
    source: str | None = None  # where it came from ("file.jsonl, line 7", "response 12"), for error messages


@dataclass
class SFTConfig:
    model: str = BUNDLED  # 'bundled', a hub id or a local HF folder to start from
    lora: LoraSettings | None = None  # LoRA adapters instead of full fine-tuning
    merge_lora: bool = True  # save LoRA merged into plain weights (False: the adapter only, needs peft + base)
    lr: float | None = None  # None: 2e-5 full fine-tuning, 2e-4 with LoRA
    schedule: str = "cosine"  # after warmup: cosine (InstructGPT) or linear decay to 0, or constant
    warmup: float = 0.03  # fraction of the steps with linear warmup
    epochs: int = 3  # passes over the demonstrations (InstructGPT: 16, picked by reward-model score)
    max_steps: int | None = None  # train exactly this many optimizer steps (epochs repeat as needed)
    batch_size: int = 8  # demonstrations per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # tokens per demonstration (prompt + answer); longer ones lose their end
    packing: bool = True  # prefix-sharing packed rows; False: one padded row per demonstration
    pack_length: int = 1024  # tokens per packed row (at least the longest demonstration of the batch)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # gradient clipping (None: off)
    seed: int = 0
    eval_fraction: float = 0.05  # demonstrations held out when no eval set is given (0: none)
    eval_every: int | None = None  # steps; the held-out loss is always measured at the end
    samples: int = 3  # greedy generations for held-out prompts, logged at the end (0: none)
    sample_max_new_tokens: int = 64
    threads: int | None = None  # torch CPU threads (None: leave as is)
    dtype: str = "float32"  # or "bfloat16": autocast (weights stay float32); only fast on CPUs with AMX
    log_every: int = 10
    checkpoint_every: int | None = 100  # steps; None/0: no checkpoints
    out_dir: str = "runs/sft"
    stop_after: int | None = None  # testing hook: return after this many steps as if killed


@dataclass
class SFTResult:
    model: object  # the trained policy (LoRA merged unless merge_lora=False), eval mode
    tokenizer: object
    metrics: dict
    steps: int
    total_steps: int
    out_dir: Path
    model_dir: Path | None  # None when stopped early (stop_after)
    completed: bool


# --- demonstrations -> tokens ------------------------------------------------------------------

def as_demonstration(item, index: int) -> Demonstration:
    """A Demonstration from itself, a list of messages ending with the assistant's answer, or a
    {"messages": [...]} row; a TetherError names the demonstration otherwise."""
    where = getattr(item, "source", None) or f"demonstration #{index}"
    if isinstance(item, dict) and "messages" in item:
        item = item["messages"]
    if isinstance(item, list):
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in item):
            raise TetherError(f"sft: {where}: expected a list of {{role, content}} messages")
        if not item or item[-1]["role"] != "assistant":
            raise TetherError(f"sft: {where}: no assistant turn at the end (the answer to learn)")
        if len(item) < 2:
            raise TetherError(f"sft: {where}: no prompt turn before the assistant's answer")
        item = Demonstration(item[:-1], item[-1]["content"], where)
    if not isinstance(item, Demonstration):
        raise TetherError(f"sft: {where}: expected messages or a Demonstration, got {type(item).__name__}")
    if not isinstance(item.answer, str) or not item.answer.strip():
        raise TetherError(f"sft: {where}: the answer is empty")
    return item


def encode_demonstration(tok, demo: Demonstration, max_length: int, stop_ids: set[int] | None = None):
    """(input ids, labels, truncated): labels are the ids on the answer and -100 on the prompt.

    A conversation is rendered once by the model's own chat template; the prompt part is what the
    template writes with the generation prompt (`encode_prompt`, one BOS), the rest is the answer,
    kept up to and including its end-of-turn token (anything the template writes after it, like
    SmolLM2's "\\n", is never generated, so it is dropped). A raw prompt gets the answer's tokens plus
    EOS. Longer than `max_length`: cut at the end (TRL does the same), so the answer may lose its EOS.
    """
    stop = (stop_ids or set()) | {tok.eos_token_id}
    prompt = encode_prompt(tok, demo.prompt)
    if isinstance(demo.prompt, str) or not getattr(tok, "chat_template", None):
        ids = prompt + tok(demo.answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        k = len(prompt)
    else:
        text = tok.apply_chat_template(demo.prompt + [{"role": "assistant", "content": demo.answer}], tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
        if prompt[:1] == [tok.bos_token_id] and ids[:1] != prompt[:1]:
            ids = prompt[:1] + ids
        k = shared_prefix(prompt, ids)
        ends = [j for j in range(k, len(ids)) if ids[j] in stop]
        ids = ids[:ends[-1] + 1] if ends else ids + [tok.eos_token_id]
    labels = [-100] * k + ids[k:]
    return ids[:max_length], labels[:max_length], len(ids) > max_length


# --- loss --------------------------------------------------------------------------------------

class _Policy(torch.nn.Module):
    """The model behind one forward(packed inputs) -> (summed NLL, per-token NLL (M,)), so DDP/FSDP
    wrap the call that trains. Fast path: decoder hidden states at the answer positions only, then
    the fused output layer. Models whose head is not a plain linear layer, or that scale or cap their
    logits, go through their own full forward instead."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, mask, rows, cols, targets):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if base.config._attn_implementation not in ("sdpa", "eager"):
            raise TetherError(f"sft: the packed (tree) attention mask needs sdpa or eager attention, not "
                              f"{base.config._attn_implementation}")
        if base.config._attn_implementation == "eager":  # eager adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=base.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(base.dtype).min)
        weight = plain_head(base)
        kwargs = dict(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False)
        if weight is not None and base.base_model is not base:
            hidden = base.base_model(**kwargs).last_hidden_state  # (R, L, H)
            return LinearNLL.apply(hidden[rows, cols], weight, targets, 128)
        logits = self.model(**kwargs).logits[rows, cols].float()  # (M, V)
        per_token = F.cross_entropy(logits, targets, reduction="none")  # (M,)
        return per_token.sum(), per_token.detach()


@torch.no_grad()
def evaluate(policy, encoded: list, pad_id: int, batch_size: int, capacity: int | None) -> dict:
    """Mean NLL per answer token over held-out (ids, labels) pairs, and its perplexity."""
    total, count, device = 0.0, 0, next(policy.parameters()).device
    for start in range(0, len(encoded), batch_size):
        packed = pack(encoded[start:start + batch_size], pad_id, capacity)
        total += policy(*(x.to(device) for x in packed.inputs()))[0].item()
        count += len(packed.targets)
    loss = total / max(count, 1)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": count,
            "eval_demonstrations": len(encoded)}


def check_config(cfg: SFTConfig) -> None:
    """TetherError naming the first bad field."""
    rules = [("batch_size", cfg.batch_size >= 1, "at least 1"), ("grad_accum", cfg.grad_accum >= 1, "at least 1"),
             ("epochs", cfg.epochs >= 1, "at least 1"), ("max_length", cfg.max_length >= 2, "at least 2"),
             ("max_steps", cfg.max_steps is None or cfg.max_steps >= 1, "at least 1 (or None)"),
             ("pack_length", cfg.pack_length >= 1, "at least 1"),
             ("lr", cfg.lr is None or cfg.lr > 0, "positive (or None for the default)"),
             ("warmup", 0 <= cfg.warmup < 1, "in [0, 1)"), ("eval_fraction", 0 <= cfg.eval_fraction < 1, "in [0, 1)"),
             ("schedule", cfg.schedule in ("cosine", "linear", "constant"), "cosine, linear or constant"),
             ("dtype", cfg.dtype in ("float32", "bfloat16"), "float32 or bfloat16"),
             ("samples", cfg.samples >= 0, "0 or more"), ("log_every", cfg.log_every >= 1, "at least 1")]
    for name, ok, want in rules:
        if not ok:
            raise TetherError(f"sft: {name} must be {want}, got {getattr(cfg, name)!r}")


_FREE_ON_RESUME = ("threads", "log_every", "checkpoint_every", "eval_every", "stop_after", "out_dir", "samples",
                   "sample_max_new_tokens")


def train(cfg: SFTConfig, examples: list, eval_examples: list | None = None, resume: bool = False,
          show_progress: bool = True) -> SFTResult:
    """Fine-tune `cfg.model` on demonstrations and save it to out_dir/model (plain HF format; metrics:
    out_dir/metrics.json, metrics.jsonl, tb/).

    `examples` / `eval_examples`: Demonstrations, message lists ending with the answer, or
    {"messages": [...]} rows. No eval set: `cfg.eval_fraction` of the examples is held out. `resume`:
    continue from out_dir/checkpoint if there is one (same data and settings, else a TetherError),
    ending at the same step as an uninterrupted run. A completed run deletes its checkpoint."""
    from accelerate.utils import set_seed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from torch.utils.tensorboard import SummaryWriter
    from transformers import get_scheduler

    from tether.models import add_lora, load_policy, save_model
    from tether.recipes.common import (accumulating, all_sum, grad_norm_value, make_accelerator, save_checkpoint,
                                       step_micro_batches)
    from tether.rollout import eos_ids, generate

    # --- setup ----------------------------------------------------------------------------------
    check_config(cfg)
    demos = [as_demonstration(x, i) for i, x in enumerate(examples)]
    if not demos:
        raise TetherError("sft: no demonstrations to train on (import some with `tether import demos FILE`)")
    held = [as_demonstration(x, i) for i, x in enumerate(eval_examples)] if eval_examples is not None else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    accelerator = make_accelerator(cfg.dtype, "sft")
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    out, ckpt = Path(cfg.out_dir), Path(cfg.out_dir) / "checkpoint"
    set_seed(cfg.seed)
    model, tok = load_policy(cfg.model)
    if cfg.lora is not None:
        model = add_lora(model, cfg.lora)
    lr = cfg.lr or (2e-4 if cfg.lora else 2e-5)
    if held is None:
        order = random.Random(cfg.seed).sample(range(len(demos)), len(demos))
        n_held = min(round(cfg.eval_fraction * len(demos)), len(demos) - 1)
        held, demos = [demos[i] for i in sorted(order[:n_held])], [demos[i] for i in sorted(order[n_held:])]
    stop = eos_ids(model, tok)

    def encode(ds: list[Demonstration]) -> tuple[list, int]:  # (ids, labels) with an answer token left; truncated
        enc = [encode_demonstration(tok, d, cfg.max_length, stop) for d in ds]
        return [(i, y) for i, y, _ in enc if any(t != -100 for t in y[1:])], sum(cut for *_, cut in enc)

    (train_set, truncated), eval_set = encode(demos), encode(held)[0]
    if not train_set:
        raise TetherError(f"sft: every demonstration's prompt fills max_length={cfg.max_length}: nothing to learn")
    capacity = cfg.pack_length if cfg.packing else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    rng = random.Random(cfg.seed)
    per_step = cfg.grad_accum * world

    def epoch() -> list[list[int]]:
        order = rng.sample(range(len(train_set)), len(train_set))
        return [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    plan = [b for _ in range(cfg.epochs) for b in epoch()]
    while cfg.max_steps and len(plan) < cfg.max_steps * per_step:
        plan += epoch()
    plan = plan[:cfg.max_steps * per_step] if cfg.max_steps else plan
    total_steps = math.ceil(len(plan) / per_step)
    n_labels = [sum(y != -100 for y in labels[1:]) for _, labels in train_set]
    step_labels = [sum(n_labels[i] for b in plan[s * per_step:(s + 1) * per_step] for i in b)
                   for s in range(total_steps)]  # answer tokens per optimizer step, all processes
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE_ON_RESUME}
    settings["grad_accum"] = per_step  # the global batch: resumable on another process count that keeps it
    digest = hashlib.sha256(json.dumps([settings, plan]).encode())
    for ids, labels in train_set:
        digest.update(json.dumps([ids, labels]).encode())
    fingerprint = digest.hexdigest()

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=True)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    scheduler = get_scheduler(name, optimizer, int(cfg.warmup * total_steps), total_steps)
    policy, optimizer = accelerator.prepare(_Policy(model), optimizer)
    accelerator.register_for_checkpointing(scheduler)
    device = accelerator.device

    step = 0
    if resume and (ckpt / "tether_state.json").is_file():
        state = json.loads((ckpt / "tether_state.json").read_text())
        if state["fingerprint"] != fingerprint:
            raise TetherError(f"sft: {ckpt} was written for other data or settings (or another global batch: "
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
                    writer.add_scalar(k.replace("eval_", "eval/") if k.startswith("eval_") else f"train/{k}", v,
                                      record["step"])

    def eval_now() -> dict:
        inner = accelerator.unwrap_model(policy).eval()
        metrics = evaluate(inner, eval_set, pad, 2 * cfg.batch_size, capacity) if eval_set else {}
        inner.train()
        return metrics

    # --- loop -----------------------------------------------------------------------------------
    policy.train()
    window = {"loss": 0.0, "labels": 0, "tokens": 0, "computed": 0}
    t_log = time.perf_counter()
    columns = [TextColumn("sft"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn()]
    with Progress(*columns, disable=not (show_progress and main)) as bar:
        task = bar.add_task("sft", total=total_steps, completed=step, loss="-")
        while step < total_steps:
            micro, _ = step_micro_batches(step, per_step, len(plan), rank, world)
            lr_now = scheduler.get_last_lr()[0]
            for k, (m, real) in enumerate(micro):
                packed = pack([train_set[i] for i in plan[m]], pad, capacity)
                with accumulating(accelerator, policy, k == len(micro) - 1):
                    loss_sum, _ = policy(*(x.to(device) for x in packed.inputs()))
                    accelerator.backward(loss_sum * (real * world / step_labels[step]))  # mean over the step's answer tokens
                if not real:
                    continue
                window["loss"] += loss_sum.item()
                window["labels"] += len(packed.targets)
                window["tokens"] += packed.tokens
                window["computed"] += packed.input_ids.numel()
            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if not math.isfinite(window["loss"]):
                raise TetherError(f"sft: the loss became {window['loss']} at step {step}; try a lower lr or float32")

            if step % cfg.log_every == 0 or step == total_steps:
                now, window = time.perf_counter(), all_sum(accelerator, window)  # over all processes
                record = {"step": step, "loss": window["loss"] / max(window["labels"], 1), "lr": lr_now,
                          "grad_norm": grad_norm_value(grad_norm), "seconds": now - t0, "tokens": window["tokens"],
                          "tokens_per_s": window["tokens"] / max(now - t_log, 1e-9),
                          "computed_fraction": window["computed"] / max(window["tokens"], 1)}
                log(record)
                bar.update(task, loss=f"{record['loss']:.3f}")
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
                return SFTResult(accelerator.unwrap_model(policy).model, tok, {}, step, total_steps, out, None, False)

    # --- save -----------------------------------------------------------------------------------
    metrics = eval_now()
    model = accelerator.unwrap_model(policy).model.eval()
    if cfg.lora is not None and cfg.merge_lora:
        model = model.merge_and_unload()
    shown = (held or demos)[:cfg.samples]
    samples = []
    if shown and main:
        prompts = [(i, encode_prompt(tok, d.prompt)) for i, d in enumerate(shown)]
        gens = {g.key: g for batch in generate(model, tok, prompts, temperature=0.0, batch_size=len(prompts),
                                               max_new_tokens=cfg.sample_max_new_tokens, seed=cfg.seed) for g in batch}
        for i, d in enumerate(shown):
            text = d.prompt if isinstance(d.prompt, str) else d.prompt[-1]["content"]
            samples.append({"prompt": text, "response": gens[i].text, "finished": gens[i].finished,
                            "reference": d.answer})
    model_dir = out / "model"
    if main:
        save_model(model, tok, model_dir, merge_lora=cfg.merge_lora)
    accelerator.wait_for_everyone()
    metrics |= {"steps": step, "total_steps": total_steps, "train_demonstrations": len(train_set),
                "dropped": len(demos) - len(train_set), "truncated": truncated,
                "seconds": time.perf_counter() - t0, "config": dataclasses.asdict(cfg)}
    if main:
        log({"step": step} | {k: v for k, v in metrics.items() if k.startswith("eval_")} | {"samples": samples})
        writer.add_text("samples", "\n\n".join(f"**{s['prompt']}**\n\n{s['response']}" for s in samples) or "-", step)
        (out / "metrics.json").write_text(json.dumps(metrics | {"samples": samples}, indent=2))
        writer.close()
        shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: out_dir/model replaces it
        if show_progress:
            bar.console.print(f"SFT model: {model_dir} (metrics: {out / 'metrics.json'})", markup=False, soft_wrap=True)
    return SFTResult(model, tok, metrics | {"samples": samples}, step, total_steps, out, model_dir, True)
