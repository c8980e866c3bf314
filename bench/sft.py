"""Supervised fine-tuning: tether (`tether.recipes.sft.train`) against TRL's `SFTTrainer`, on the same
model, demonstrations, batch size, max length, learning rate and number of steps, in one run.

    python bench/sft.py [--steps 8 --batch-size 8 --max-length 256 --threads 2] [--tiny] [--no-packing]
                        [--trl-padding-free]

Each side runs in its own subprocess (so peak memory is its own), fp32 (TRL: bf16=False), no gradient
checkpointing, AdamW, linear decay without warmup, one after the other (never two at once). Both learn
the same thing: TRL gets the demonstrations in its conversational prompt-completion format, so its
loss covers the completion only, as tether's does. Throughput is real (non-pad) tokens of the
demonstrations per second over the steps after the first (TRL's `num_input_tokens_seen`, tether's
logged `tokens`); TRL counts one more token per demonstration (the "\\n" its template writes after
<|im_end|>, which tether does not train on). Held-out loss is the mean NLL per answer token on the
eval-split prompts, scored by the same code (tether's `evaluate`) for both trained models.

The demonstrations are the bundled prompts, two answers each, of 1 to 7 sentences (20 to 150 tokens),
so lengths vary the way written demonstrations do. TRL runs with its defaults otherwise (batches padded
to their longest row); `--trl-padding-free` gives it padding-free batches instead (one flattened row,
position ids restarting per demonstration). `--tiny` swaps the bundled model for a 2-layer random one
(a smoke test in a couple of minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

SENTENCES = [
    "Start by deciding what a good result looks like for {topic}.",
    "Gather what you need before you begin, so you are not interrupted halfway.",
    "Work in small steps and check each one before moving on.",
    "If something goes wrong, go back to the last step that worked and try again more slowly.",
    "Ask someone with experience for a second opinion; it often saves time.",
    "Keep notes as you go, because you will want to remember what worked.",
    "Finally, review the result and write down one thing to improve next time.",
]


def demonstrations(prompts: list[str], per_prompt: int = 2, seed: int = 0) -> list[dict]:
    """TRL conversational prompt-completion rows: `per_prompt` answers of 1-7 sentences per prompt."""
    rng = random.Random(seed)
    rows = []
    for p in prompts:
        topic = p.rstrip("?.!").split(" ", 3)[-1] if len(p.split()) > 3 else p
        for _ in range(per_prompt):
            n = rng.randint(1, len(SENTENCES))
            answer = " ".join(s.format(topic=topic) for s in SENTENCES[:n])
            rows.append({"prompt": [{"role": "user", "content": p}],
                         "completion": [{"role": "assistant", "content": answer}]})
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tether(args, rows, out: Path) -> dict:
    from tether.recipes.sft import Demonstration, SFTConfig, train

    demos = [Demonstration(r["prompt"], r["completion"][0]["content"]) for r in rows]
    cfg = SFTConfig(model=args.model, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
                    max_steps=args.steps, schedule="linear", warmup=0.0, threads=args.threads, log_every=1,
                    checkpoint_every=None, eval_fraction=0.0, samples=0, packing=args.packing,
                    out_dir=str(out / "tether"), seed=0)
    t0 = time.perf_counter()
    res = train(cfg, demos, eval_examples=[], show_progress=False)
    wall = time.perf_counter() - t0
    logs = [json.loads(x) for x in (out / "tether" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in logs if "loss" in x]
    step_s = [b["seconds"] - a["seconds"] for a, b in zip(steps, steps[1:])]
    return {"step_s": step_s, "tokens": [x["tokens"] for x in steps[1:]], "wall_s": wall,
            "model_dir": str(res.model_dir), "peak_rss_mb": peak_rss_mb(), "loss": [x["loss"] for x in steps],
            "computed_fraction": sum(x["computed_fraction"] * x["tokens"] for x in steps)
            / sum(x["tokens"] for x in steps)}


def run_trl(args, rows, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tether.models import resolve

    torch.set_num_threads(args.threads)
    times, seen, losses = [], [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            seen.append(state.num_input_tokens_seen)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    cfg = SFTConfig(output_dir=str(out / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                    gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
                    gradient_checkpointing=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                    packing=False, completion_only_loss=True,  # TRL refuses max_length with padding_free;
                    max_length=None if args.trl_padding_free else args.max_length,  # no demonstration is that long
                    padding_free=args.trl_padding_free,
                    include_num_input_tokens_seen="non_padding")
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=resolve(args.model), args=cfg, train_dataset=Dataset.from_list(rows),
                         callbacks=[Timer()])
    dtype = str(trainer.model.dtype)
    trainer.train()
    wall = time.perf_counter() - t0
    model_dir = out / "trl" / "final"
    trainer.save_model(str(model_dir))
    return {"step_s": times[1:], "tokens": [b - a for a, b in zip(seen, seen[1:])], "wall_s": wall,
            "model_dir": str(model_dir), "peak_rss_mb": peak_rss_mb(), "loss": losses, "dtype": dtype}


def held_out_loss(model_dir: str, rows: list[dict], max_length: int) -> float:
    """Mean NLL per answer token, the same code for both models (tether's encoding and evaluate)."""
    from tether.models import load_policy
    from tether.recipes.sft import Demonstration, _Policy, encode_demonstration, evaluate

    model, tok = load_policy(model_dir)
    enc = [encode_demonstration(tok, Demonstration(r["prompt"], r["completion"][0]["content"]), max_length)[:2]
           for r in rows]
    return evaluate(_Policy(model).eval(), enc, tok.pad_token_id, 8, None)["eval_loss"]


def tiny_model(path: Path) -> str:
    """A 2-layer random Llama with the bundled tokenizer (as in tests/conftest.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tether.models import load_tokenizer

    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random model instead (smoke test)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                    help="tether's prefix-sharing packing (--no-packing: one padded row per demonstration)")
    ap.add_argument("--trl-padding-free", action="store_true", help="TRL with padding_free=True")
    ap.add_argument("--side", choices=["tether", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from importlib.resources import files

    prompts = [json.loads(r) for r in (files("tether") / "assets" / "prompts.jsonl").read_text().splitlines()]
    train_rows = demonstrations([r["prompt"] for r in prompts if r["split"] == "train"])
    eval_rows = demonstrations([r["prompt"] for r in prompts if r["split"] == "eval"], per_prompt=1, seed=1)
    if args.side:  # child process: one side, results as JSON on the last line
        fn = run_tether if args.side == "tether" else run_trl
        print("RESULT " + json.dumps(fn(args, train_rows, args.out)), flush=True)
        return

    import statistics

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.model = tiny_model(Path(tmp) / "tiny")
        print(f"model={'tiny random' if args.tiny else args.model} steps={args.steps} batch={args.batch_size} "
              f"demonstrations max_length={args.max_length} lr={args.lr} threads={args.threads} fp32 "
              f"packing={args.packing} trl_padding_free={args.trl_padding_free} torch={torch.__version__}; "
              f"{len(train_rows)} train demonstrations, "
              f"{len(eval_rows)} held-out", flush=True)
        results = {}
        for side in ("trl", "tether"):
            cmd = [sys.executable, __file__, "--side", side, "--out", tmp, "--model", args.model, "--steps",
                   str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--lr", str(args.lr), "--threads", str(args.threads)]
            cmd += ["--packing" if args.packing else "--no-packing"]
            cmd += ["--trl-padding-free"] if args.trl_padding_free else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            r = results[side] = json.loads(line[-1][7:])
            torch.set_num_threads(args.threads)
            r["held_out"] = held_out_loss(r["model_dir"], eval_rows, args.max_length)
            r["tokens_per_s"] = sum(r["tokens"]) / sum(r["step_s"])
            extra = f", computed/given tokens {r['computed_fraction']:.2f}" if side == "tether" else f", {r['dtype']}"
            print(f"  {side:>6}: median step {statistics.median(r['step_s']):.2f} s, {r['tokens_per_s']:.1f} tokens/s "
                  f"({args.batch_size * len(r['step_s']) / sum(r['step_s']):.2f} demonstrations/s), peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB, train loss {r['loss'][0]:.3f} -> {r['loss'][-1]:.3f}, held-out loss "
                  f"{r['held_out']:.3f}{extra}", flush=True)
    t, p = results["tether"], results["trl"]
    print(f"tether/TRL: throughput x{t['tokens_per_s'] / p['tokens_per_s']:.2f} (goal >= 2), peak memory "
          f"x{t['peak_rss_mb'] / p['peak_rss_mb']:.2f}, held-out loss {t['held_out']:.3f} vs {p['held_out']:.3f} "
          f"(same steps)")


if __name__ == "__main__":
    main()
