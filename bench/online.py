"""Critic-free online RL: tether (`tether.recipes.online.train`, estimator rloo / grpo) against TRL 1.16's
`RLOOTrainer` / `GRPOTrainer`, on the same model, reward, prompts, K generations per prompt, prompts per
step, max new tokens, temperature, beta, learning rate and number of steps, in one run.

    python bench/online.py [--algos rloo,grpo --steps 8 --prompts 2 --k 4 --max-new-tokens 64 --threads 2]
    python bench/online.py --tiny      # one-minute smoke test on a tiny random model
    python bench/online.py --bf16      # each side at its best on a CPU with AVX512-BF16 / AMX: bf16 autocast

tether accumulates gradients over micro-batches of `--micro-batch-size` samples inside the one
optimizer step (the same update, less activation memory; TRL forwards the whole batch at once).
Each (side, algorithm) runs in its own subprocess (so peak memory is its own), fp32 unless --bf16 (TRL: bf16=False,
gradient_checkpointing=False, set explicitly), one after the other (never two at once). A step is one
generation batch (prompts x K samples) and one optimizer step on it, timed from the start of generation
to the end of the update on both sides; the figure is the median over steps after the first. The reward
is tether's gold scorer (`tether.feedback.gold.gold_score`: concise, ends cleanly, not repetitive,
polite, on topic), called by both sides on the same (prompt, response, finished); the no-EOS penalty
is off on tether's side since the scorer already sees `finished`. Both sides put the KL where their
paper does: RLOO in the reward (k1 summed per sequence), GRPO in the loss (per-token k3, token-mean
"dapo" normalisation, rewards scaled by the group std). Prompts: tether/assets/prompts.jsonl, train
split, through the model's chat template. Also printed: tether's MFU against a matmul peak measured in
the same run (bench/flops.py).
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def train_prompts() -> list[str]:
    from importlib.resources import files

    rows = [json.loads(r) for r in (files("tether") / "assets" / "prompts.jsonl").read_text().splitlines()]
    return [r["prompt"] for r in rows if r["split"] == "train"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_model(path: Path) -> str:
    """A 2-layer Llama with random weights and the bundled tokenizer (chat template included)."""
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


def run_tether(args, algo: str, model: str, out: Path) -> dict:
    from tether.feedback.gold import gold_score
    from tether.models import prompt_text
    from tether.recipes.online import OnlineConfig, train

    def reward(prompts, responses, finished):
        return [gold_score(prompt_text(p), r, f) for p, r, f in zip(prompts, responses, finished)]

    cfg = OnlineConfig(estimator=algo, policy=model, updates=args.steps, prompts_per_update=args.prompts, k=args.k,
                       max_new_tokens=args.max_new_tokens, max_prompt_length=4096, temperature=args.temperature,
                       beta=args.beta, lr=args.lr, no_eos_penalty=0.0, clip_eps=0.2, max_grad_norm=1.0,
                       micro_batch_size=args.micro_batch_size, checkpoint_every=None, threads=args.threads,
                       out_dir=str(out / f"tether-{algo}"), seed=0, dtype="bfloat16" if args.bf16 else "float32")
    prompts = [[{"role": "user", "content": p}] for p in train_prompts()]
    t0 = time.perf_counter()
    train(cfg, prompts, reward_fn=reward, show_progress=False)
    wall = time.perf_counter() - t0
    logs = [json.loads(x) for x in (out / f"tether-{algo}" / "metrics.jsonl").read_text().splitlines()]
    logs = [x for x in logs if "reward" in x]
    secs = [x["seconds"] for x in logs]
    return {"step_s": [b - a for a, b in zip(secs, secs[1:])], "wall_s": wall, "peak_rss_mb": peak_rss_mb(),
            "reward": [x["reward"] for x in logs], "length": [x["length"] for x in logs]}


def run_trl(args, algo: str, model: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from tether.feedback.gold import gold_score

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(model)
    eos = {tok.eos_token_id}
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):  # TRL generates inside the step
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    def reward(prompts, completions, completion_ids, **kw):
        """gold_score(prompt, response, finished); finished = the completion ends with EOS."""
        return [gold_score(p[-1]["content"], c[0]["content"], bool(ids) and ids[-1] in eos)
                for p, c, ids in zip(prompts, completions, completion_ids)]

    common = dict(output_dir=str(out / f"trl-{algo}"), max_steps=args.steps,
                  per_device_train_batch_size=args.prompts * args.k, gradient_accumulation_steps=1,
                  num_generations=args.k, max_completion_length=args.max_new_tokens, temperature=args.temperature,
                  top_p=1.0, top_k=0, beta=args.beta, learning_rate=args.lr, lr_scheduler_type="linear",
                  warmup_steps=0, num_iterations=1, epsilon=0.2, max_grad_norm=1.0, logging_steps=1,
                  save_strategy="no", report_to="none", use_cpu=True, bf16=args.bf16, fp16=False,
                  gradient_checkpointing=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                  model_init_kwargs={"dtype": torch.float32})
    if algo == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer

        cfg = Config(**common, loss_type="dapo", scale_rewards="group")
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

        cfg = Config(**common, normalize_advantages=False)
    rows = [{"prompt": [{"role": "user", "content": p}]} for p in train_prompts()]
    t0 = time.perf_counter()
    trainer = Trainer(model=model, reward_funcs=reward, args=cfg, train_dataset=Dataset.from_list(rows),
                      callbacks=[Timer()])
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [x for x in trainer.state.log_history if "reward" in x]
    return {"step_s": times[1:], "wall_s": wall, "peak_rss_mb": peak_rss_mb(),
            "reward": [x["reward"] for x in logs],
            "length": [x.get("completions/mean_length", float("nan")) for x in logs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled", help="'bundled', or a local HF folder")
    ap.add_argument("--algos", default="rloo,grpo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--k", type=int, default=4, help="generations per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--micro-batch-size", type=int, default=8, help="tether: samples per forward/backward "
                    "(gradient accumulation within the one optimizer step: the same update, less memory)")
    ap.add_argument("--tiny", action="store_true", help="tiny random model, 3 steps, 16 new tokens: a smoke test")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (TRL: bf16=True), "
                    "generation included; worth it only where bf16 matmuls are fast (AVX512-BF16, AMX, GPUs)")
    ap.add_argument("--side", choices=["tether", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child process: one side, one algorithm; results as JSON on the last line
        import torch

        torch.set_num_threads(args.threads)
        fn = run_tether if args.side == "tether" else run_trl
        res = fn(args, args.algos, args.model, args.out)
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.model, args.steps, args.max_new_tokens = tiny_model(Path(tmp) / "tiny"), 3, 16
        elif args.model == "bundled":
            from tether.models import resolve

            args.model = resolve("bundled")  # both sides load the same converted folder
        print(f"model={args.model} steps={args.steps} prompts/step={args.prompts} k={args.k} "
              f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} beta={args.beta} lr={args.lr} "
              f"threads={args.threads} {'bf16 autocast' if args.bf16 else 'fp32'} torch={torch.__version__}; "
              "reward: gold_score", flush=True)
        samples = args.prompts * args.k
        from flops import matmul_params, matmul_peak  # bench/flops.py
        from transformers import AutoTokenizer

        from tether.models import encode_prompt

        n_params = matmul_params(args.model)
        tok = AutoTokenizer.from_pretrained(args.model)
        prompt_tokens = statistics.mean(len(encode_prompt(tok, [{"role": "user", "content": p}]))
                                        for p in train_prompts())
        dtype = "bfloat16" if args.bf16 else "float32"
        peak = matmul_peak(args.threads, dtype)
        print(f"matmul peak here: {peak / 1e9:.0f} GFLOP/s ({dtype}, {args.threads} threads); model: "
              f"{n_params / 1e6:.1f}M matmul parameters; mean prompt {prompt_tokens:.0f} tokens", flush=True)
        for algo in args.algos.split(","):
            results = {}
            for side in ("trl", "tether"):
                cmd = [sys.executable, __file__, "--side", side, "--out", tmp] + sum(
                    ([f"--{k.replace('_', '-')}", str(v)] for k, v in vars(args).items()
                     if k not in ("side", "out", "tiny", "algos", "bf16")), []) + ["--algos", algo] + \
                    (["--bf16"] if args.bf16 else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    sys.exit(f"{side} {algo} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                r = results[side] = json.loads(line[-1][7:])
                med = statistics.median(r["step_s"])
                print(f"  {algo} {side:>6}: median step {med:.2f} s ({samples / med:.2f} samples/s), peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB, wall {r['wall_s']:.0f} s, reward first {r['reward'][0]:.3f} "
                      f"last {r['reward'][-1]:.3f}, mean length last {r['length'][-1]:.1f}", flush=True)
            t, p = results["tether"], results["trl"]
            # per step: generation 2N per token (prefill and decode), reference forward 2N, training 6N
            tokens = samples * (prompt_tokens + statistics.mean(t["length"]))
            mfu = 10 * n_params * tokens / statistics.median(t["step_s"]) / peak
            print(f"  {algo} tether MFU {mfu:.1%} of the measured {dtype} matmul peak "
                  f"(10·N·tokens per step, {tokens:.0f} tokens)", flush=True)
            speed = statistics.median(p["step_s"]) / statistics.median(t["step_s"])
            mem = t["peak_rss_mb"] / p["peak_rss_mb"]
            print(f"{algo} tether/TRL: samples/s x{speed:.2f} (goal >= 2), peak RSS x{mem:.2f} (goal <= 0.6)",
                  flush=True)


if __name__ == "__main__":
    main()
