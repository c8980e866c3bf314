"""DPO training: tether (`tether.recipes.dpo.train`) against TRL 1.16's `DPOTrainer`, on the same model,
pairs, batch size, max length, learning rate, beta and number of steps, in one run.

    python bench/dpo.py [--steps 6 --batch-size 8 --max-length 128 --threads 2]   # the bundled model
    python bench/dpo.py --tiny --steps 4                                         # smoke test, about a minute
    python bench/dpo.py --micro-batch-size 4   # tether: 2 micro-batches of 4 pairs per step (same update)
    python bench/dpo.py --ranked               # pairs from rankings: each batch holds one prompt's pairs

Each side runs in its own subprocess (so peak memory is its own), one after the other (never two at
once), fp32 (TRL: bf16=False and gradient_checkpointing=False set explicitly), sigmoid DPO, beta 0.1.
TRL runs at its defaults otherwise: it loads a second copy of the model as the reference and runs the
reference forward inside every step (precompute_ref_log_probs=False). tether computes the reference
log-probs once before its loop (no second copy), so its step time excludes them: the headline
throughput therefore charges tether's reference pass to its steps (pairs / (step + reference time per
step)); the loop-only ratio is printed too. Step time is the median over steps after the first. The
pairs are bench/rm.py's: bundled train prompts with answer variants ordered by tether's gold scorer,
the first steps x batch-size of them (shuffled with seed 0) for both sides, one epoch.
`--micro-batch-size M`: tether accumulates gradients over batch-size / M micro-batches of M pairs
inside each optimizer step (`DPOConfig.grad_accum`): the same update and data, less activation memory.
`--ranked`: the pairs as a ranking gives them (every pair of a prompt's 6 variants, up to 15 pairs a
prompt), prompts shuffled, a prompt's pairs consecutive; both sides get the same batches of consecutive
pairs (TRL: `train_sampling_strategy="sequential"`; tether: each batch one group, batches in shuffled
order), so most batches hold one prompt's pairs, as when people rank K answers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def bench_rm():
    """bench/rm.py as a module (its pair builder and peak-memory reader)."""
    spec = importlib.util.spec_from_file_location("bench_rm", Path(__file__).with_name("rm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(folder: Path) -> str:
    """A 2-layer Llama with random weights and the bundled tokenizer (the tests' tiny model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    from tether.models import load_tokenizer

    logging.disable_progress_bar()

    tok = load_tokenizer("bundled")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def run_tether(args, rows, out: Path) -> dict:
    from tether.recipes.dpo import DPOConfig, train
    from tether.recipes.rm import PreferenceExample

    pairs = [PreferenceExample(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"],
                               group=i // args.batch_size if args.ranked else None) for i, r in enumerate(rows)]
    micro = args.micro_batch_size or args.batch_size
    if args.batch_size % micro:
        raise SystemExit(f"--micro-batch-size {micro} must divide --batch-size {args.batch_size}")
    cfg = DPOConfig(model=args.model, loss="dpo", beta=0.1, batch_size=micro, grad_accum=args.batch_size // micro,
                    max_length=args.max_length,
                    lr=args.lr, epochs=1, warmup=0.0, threads=args.threads, log_every=1, checkpoint_every=None,
                    eval_fraction=0.0, out_dir=str(out / "tether"), seed=0)
    t0 = time.perf_counter()
    res = train(cfg, pairs, eval_pairs=[], show_progress=False)
    wall = time.perf_counter() - t0
    logs = [json.loads(x) for x in (out / "tether" / "metrics.jsonl").read_text().splitlines()]
    secs = [x["seconds"] for x in logs if "loss" in x]
    return {"step_s": [b - a for a, b in zip(secs, secs[1:])], "reference_s": res.metrics["reference_seconds"],
            "wall_s": wall, "losses": [x["loss"] for x in logs if "loss" in x],
            "peak_rss_mb": bench_rm().peak_rss_mb()}


def run_trl(args, rows, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tether.models import resolve

    torch.set_num_threads(args.threads)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    cfg = DPOConfig(output_dir=str(out / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                    gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
                    gradient_checkpointing=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                    max_length=args.max_length, beta=0.1, loss_type="sigmoid",
                    train_sampling_strategy="sequential" if args.ranked else "random")
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=resolve(args.model), args=cfg, train_dataset=Dataset.from_list(rows),
                         callbacks=[Timer()])
    reference = type(trainer.ref_model).__name__ if trainer.ref_model is not None else "none"
    trainer.train()
    wall = time.perf_counter() - t0
    return {"step_s": times[1:], "reference_s": 0.0, "wall_s": wall, "reference_model": reference,
            "losses": [x["loss"] for x in trainer.state.log_history if "loss" in x],
            "peak_rss_mb": bench_rm().peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead (smoke test)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--micro-batch-size", type=int, help="tether: pairs per forward/backward (gradient "
                    "accumulation within the optimizer step: the same update, less memory); default: the batch")
    ap.add_argument("--ranked", action="store_true", help="pairs from rankings: a prompt's pairs in one batch")
    ap.add_argument("--side", choices=["tether", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is not timed)")

    from importlib.resources import files

    prompts = [json.loads(r) for r in (files("tether") / "assets" / "prompts.jsonl").read_text().splitlines()]
    train_prompts = [r["prompt"] for r in prompts if r["split"] == "train"]
    if args.ranked:  # prompts shuffled, each prompt's pairs kept together
        random.Random(0).shuffle(train_prompts)
        rows = bench_rm().make_pairs(train_prompts)
    else:
        rows = bench_rm().make_pairs(train_prompts)
        random.Random(0).shuffle(rows)
    rows = rows[:args.steps * args.batch_size]
    if args.side:  # child process: one side, results as JSON on the last line
        res = (run_tether if args.side == "tether" else run_trl)(args, rows, args.out)
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.model = tiny_model(Path(tmp) / "tiny")
        print(f"model={'tiny random Llama' if args.tiny else args.model} steps={args.steps} batch={args.batch_size} "
              f"pairs (tether micro-batch {args.micro_batch_size or args.batch_size}) max_length={args.max_length} "
              f"lr={args.lr} beta=0.1 sigmoid threads={args.threads} fp32 "
              f"torch={torch.__version__}; {len(rows)} pairs{' from rankings' if args.ranked else ''}, one epoch",
              flush=True)
        for side in ("trl", "tether"):
            cmd = [sys.executable, __file__, "--side", side, "--out", tmp] + sum(
                ([f"--{k.replace('_', '-')}", str(v)] for k, v in vars(args).items()
                 if k not in ("side", "out", "tiny", "ranked") and v is not None), []) + (["--ranked"] if args.ranked else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            r = results[side] = json.loads(line[-1][7:])
            r["step"] = statistics.median(r["step_s"])
            r["charged"] = r["step"] + r["reference_s"] / args.steps  # reference pass shared out over the steps
            extra = (f"reference model: {r['reference_model']}, run inside every step" if side == "trl" else
                     f"reference log-probs computed once before the loop: {r['reference_s']:.2f} s")
            print(f"  {side:>6}: median step {r['step']:.2f} s ({args.batch_size / r['charged']:.2f} pairs/s"
                  f"{'' if side == 'trl' else ' with the reference pass'}), peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}; {extra}", flush=True)
    t, p = results["tether"], results["trl"]
    print(f"tether/TRL: throughput x{p['charged'] / t['charged']:.2f} (goal >= 2; loop only x{p['step'] / t['step']:.2f}), "
          f"peak memory x{t['peak_rss_mb'] / p['peak_rss_mb']:.2f} (goal <= 0.6). TRL at its defaults: reference "
          "model copy, reference forward in every step (precompute_ref_log_probs=False).")


if __name__ == "__main__":
    main()
