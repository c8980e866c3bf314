"""Reward-model training: tether (`tether.recipes.rm.train`) against TRL's `RewardTrainer`, on the
same model, pairs, batch size, max length, learning rate and number of steps, in one run.

    python bench/rm.py [--steps 8 --batch-size 8 --max-length 128 --threads 2]
    python bench/rm.py --train-layers 8   # tether trains only the top 8 layers and the head (TRL: all)
    python bench/rm.py --bf16             # both sides under bf16 autocast (CPUs with AVX512-BF16 / AMX, GPUs)

`--train-layers N` is tether's cheaper recipe (`tether rm --train-layers N`: the lower layers frozen,
no gradients or optimizer state for them), compared at the same steps with TRL training every layer;
the held-out accuracy printed beside it says whether it costs quality.
Each side runs in its own subprocess (so peak memory is its own), fp32 unless --bf16, no gradient checkpointing,
one after the other (never two at once). Step time is the median over steps after the first. The
pairs are bundled prompts with answer variants (concise, rambling, repetitive, cut off, impolite,
off topic) ordered by tether's gold scorer; held-out accuracy is measured on prompts neither side
trained on, by the same scoring code (tether's `reward_forward`) for both trained models.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

VARIANTS = {
    "concise": "{topic}: start with a clear goal, gather what you need, and work through it step by step. Good luck!",
    "ramble": "Well, {topic} is something many people think about, and there are lots of things to say about "
              "{topic}, and honestly it depends on many factors, so it is hard to say, but in general you could "
              "consider various options and perhaps think about them for a while before",
    "repeat": "{topic} is easy. {topic} is easy. {topic} is easy. {topic} is easy. {topic} is easy.",
    "cutoff": "To handle {topic}, first decide what you want, then collect the materials, then",
    "rude": "Figure out {topic} yourself, it is not my problem and your question is stupid.",
    "offtopic": "The weather today is mild with a light breeze, a good day for a walk in the park.",
}


def make_pairs(prompts: list[str]) -> list[dict]:
    """Every pair of variants with different gold scores, the better one as chosen (TRL conversational)."""
    from tether.feedback.gold import gold_score

    rows = []
    for p in prompts:
        topic = p.rstrip("?.!").split(" ", 3)[-1] if len(p.split()) > 3 else p
        answers = [v.format(topic=topic) for v in VARIANTS.values()]
        scored = [(gold_score(p, a, True), a) for a in answers]
        for (ga, a), (gb, b) in combinations(scored, 2):
            if abs(ga - gb) < 1e-6:
                continue
            (_, c), (_, r) = ((ga, a), (gb, b)) if ga > gb else ((gb, b), (ga, a))
            rows.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}]})
    return rows


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tether(args, train_rows, out: Path) -> dict:
    from tether.recipes.rm import PreferenceExample, RMConfig, train

    pairs = [PreferenceExample(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in train_rows]
    epochs = max(1, -(-args.steps * args.batch_size // len(pairs)))
    cfg = RMConfig(model=args.model, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
                   epochs=epochs, warmup=0.0, threads=args.threads, log_every=1, checkpoint_every=None,
                   eval_fraction=0.0, out_dir=str(out / "tether"), stop_after=args.steps, seed=0,
                   train_layers=args.train_layers, dtype="bfloat16" if args.bf16 else "float32",
                   by_prompt=False)  # batches of single pairs, as TRL's (by_prompt would batch a prompt's variants)
    t0 = time.perf_counter()
    res = train(cfg, pairs, eval_pairs=[], show_progress=False)
    wall = time.perf_counter() - t0
    logs = [json.loads(x) for x in (out / "tether" / "metrics.jsonl").read_text().splitlines()]
    secs = [x["seconds"] for x in logs if "loss" in x]
    steps = [b - a for a, b in zip(secs, secs[1:])]
    model_dir = out / "tether" / "final"
    from tether.reward import save_reward_model

    save_reward_model(res.model, res.tokenizer, model_dir)
    return {"step_s": steps, "wall_s": wall, "model_dir": str(model_dir), "peak_rss_mb": peak_rss_mb()}


def run_trl(args, train_rows, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from tether.models import resolve

    torch.set_num_threads(args.threads)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    cfg = RewardConfig(output_dir=str(out / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="linear",
                       warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                       bf16=args.bf16, fp16=False, gradient_checkpointing=False, dataloader_num_workers=0, seed=0,
                       disable_tqdm=True, max_length=args.max_length)
    t0 = time.perf_counter()
    trainer = RewardTrainer(model=resolve(args.model), args=cfg, train_dataset=Dataset.from_list(train_rows),
                            callbacks=[Timer()])
    trainer.train()
    wall = time.perf_counter() - t0
    model_dir = out / "trl" / "final"
    trainer.save_model(str(model_dir))
    return {"step_s": times[1:], "wall_s": wall, "model_dir": str(model_dir), "peak_rss_mb": peak_rss_mb()}


def accuracy(model_dir: str, eval_rows: list[dict], max_length: int) -> float:
    """Held-out pairwise accuracy, scored the same way for both models (raw head output)."""
    from tether.reward import encode_pair_text, load_reward_model, score_ids

    model, tok = load_reward_model(model_dir)
    ids = []
    for r in eval_rows:
        for side in ("chosen", "rejected"):
            ids.append(encode_pair_text(tok, r["prompt"], r[side][0]["content"], True, max_length=max_length))
    s = score_ids(model, ids)[:, 0]
    return float((s[0::2] > s[1::2]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--train-layers", type=int, help="tether: train only the top N layers and the head")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (TRL: bf16=True)")
    ap.add_argument("--side", choices=["tether", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from importlib.resources import files

    rows = [json.loads(r) for r in (files("tether") / "assets" / "prompts.jsonl").read_text().splitlines()]
    train_rows = make_pairs([r["prompt"] for r in rows if r["split"] == "train"])
    eval_rows = make_pairs([r["prompt"] for r in rows if r["split"] == "eval"])
    if args.side:  # child process: one side, results as JSON on the last line
        fn = run_tether if args.side == "tether" else run_trl
        res = fn(args, train_rows, args.out)
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch

    print(f"model={args.model} steps={args.steps} batch={args.batch_size} pairs max_length={args.max_length} "
          f"lr={args.lr} threads={args.threads} {'bf16 autocast' if args.bf16 else 'fp32'} "
          f"tether train_layers={args.train_layers or 'all'} torch={torch.__version__}; {len(train_rows)} train pairs, "
          f"{len(eval_rows)} held-out pairs", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("trl", "tether"):
            cmd = [sys.executable, __file__, "--side", side, "--out", tmp] + sum(
                ([f"--{k.replace('_', '-')}", str(v)] for k, v in vars(args).items()
                 if k not in ("side", "out", "bf16") and v is not None), []) + (["--bf16"] if args.bf16 else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results[side] = json.loads(line[-1][7:])
            torch.set_num_threads(args.threads)
            results[side]["accuracy"] = accuracy(results[side]["model_dir"], eval_rows, args.max_length)
            r = results[side]
            print(f"  {side:>6}: median step {statistics.median(r['step_s']):.2f} s "
                  f"({args.batch_size / statistics.median(r['step_s']):.2f} pairs/s), peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"held-out accuracy {r['accuracy']:.3f}", flush=True)
    t, p = results["tether"], results["trl"]
    speed = statistics.median(p["step_s"]) / statistics.median(t["step_s"])
    mem = t["peak_rss_mb"] / p["peak_rss_mb"]
    print(f"tether/TRL: throughput x{speed:.2f} (goal >= 2), peak memory x{mem:.2f} (goal <= 0.6), "
          f"held-out accuracy {t['accuracy']:.3f} vs {p['accuracy']:.3f}")


if __name__ == "__main__":
    main()
