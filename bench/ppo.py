"""PPO: tether (`tether.recipes.ppo.train`) against TRL 1.8's `trl.experimental.ppo.PPOTrainer`, on the same
policy, reward model, prompts and PPO settings, in one run.

    python bench/ppo.py [--updates 4 --batch-size 8 --mini-batch-size 8 --ppo-epochs 1 --max-new-tokens 64 --threads 2]
    python bench/ppo.py --tiny        # smoke test: a tiny random Llama with the bundled tokenizer (~1 min)
    python bench/ppo.py --bf16        # both sides under bf16 autocast (only worth it on a CPU with AMX / AVX512-BF16)

PPO was removed from TRL after 1.8.0; the script installs it once into bench/.trl18
(`pip install --no-deps --target bench/.trl18 trl==1.8.0`, from the local package index) and runs the
TRL side with PYTHONPATH pointing there (it runs against the venv's transformers).

One update, on both sides: sample one response for each of `batch_size` prompts, score them with the
reward model, then `ppo_epochs` passes over them in mini-batches of `mini_batch_size`, one optimizer step
per mini-batch: `ppo_epochs * batch_size / mini_batch_size` optimizer steps on `batch_size` samples. In
TRL 1.8 terms: per_device_train_batch_size = batch_size, gradient_accumulation_steps = 1 (so TRL's
"batch" = batch_size prompts per update), num_mini_batches = batch_size / mini_batch_size (each
mini-batch is one micro-batch, one optimizer step), num_ppo_epochs = ppo_epochs, total_episodes =
updates * batch_size (= updates batches), response_length = max_new_tokens.

Reward model: the policy with a fresh scalar head (`tether.reward.load_reward_model(policy)`, seed 0),
saved once to a temp folder; both sides load it as `AutoModelForSequenceClassification`. TRL also gets
that folder as its value model (a separate, trained copy, as TRL users do); tether's value function is a
head on the policy. Both sides see the same prompts in the same order (tether's `prompt_order`; TRL's
shuffling dataloader is replaced by one in that order).

Each side runs in its own subprocess, one after the other, fp32 (TRL: bf16=False and
gradient_checkpointing=False set explicitly), `--threads` torch threads. (Under transformers 5, TRL
1.8's PPOTrainer applies neither of those two defaults: it builds its own `Accelerator()`, which reads
ACCELERATE_MIXED_PRECISION rather than bf16, and never enables checkpointing; `--bf16` therefore also
sets ACCELERATE_MIXED_PRECISION=bf16 for the TRL side, and the output prints what TRL really used.) Per-update seconds run from the
start of an update to the end of its last optimizer step (model loading and setup excluded): tether's
from its metrics.jsonl (`batch_size / samples_per_s`, measured inside the update loop), TRL's from a
callback (on_train_begin, then on_step_end after each update). Throughput = batch_size / median update
time, the first update left out when there are several. Peak memory = the child's max RSS
(getrusage RUSAGE_SELF), loading included.
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
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TRL_VERSION = "1.8.0"
TRL_DIR = Path(__file__).resolve().parent / ".trl18"
KL_COEF = 0.05
NO_EOS_PENALTY = 1.0
SEED = 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_prompts() -> list[list[dict]]:
    """The bundled prompts' train split, as conversations (what `tether import prompts` stores)."""
    from importlib.resources import files

    from tether.data.io import read_prompts

    return [p.messages for p in read_prompts(Path(str(files("tether") / "assets" / "prompts.jsonl")))
            if p.split == "train"]


def count_optimizer_steps() -> list[int]:
    """A one-element counter of real optimizer steps (a global post-step hook on every torch optimizer;
    under accelerate it fires only when the wrapped optimizer really steps)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    box = [0]
    register_optimizer_step_post_hook(lambda opt, a, k: box.__setitem__(0, box[0] + 1))
    return box


def per_update(counts: list[int]) -> list[int]:
    """Cumulative counts taken at the end of each update -> counts per update."""
    return [b - a for a, b in zip([0] + counts, counts)]


def median_steady(xs: list[float]) -> float:
    return statistics.median(xs[1:] if len(xs) > 1 else xs)


# --- children ------------------------------------------------------------------------------------
def build_rm(args) -> dict:
    """The shared reward model: the policy with a fresh scalar head, saved as a plain HF folder."""
    import torch

    from tether.reward import load_reward_model, save_reward_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model, tok = load_reward_model(args.policy)
    save_reward_model(model, tok, args.rm)
    return {"rm": args.rm, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def run_tether(args, prompts) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from tether import rollout
    from tether.recipes.ppo import PPOConfig, train

    gen_s: list[float] = []
    samples: list[int] = []
    steps = count_optimizer_steps()
    steps_at: list[int] = []
    original = rollout.generate

    def timed_generate(*a, **k):  # time each generated batch (the rest of the update is PPO's own work)
        it = original(*a, **k)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            gen_s.append(time.perf_counter() - t)
            samples.append(len(batch))
            steps_at.append(steps[0])  # steps before this update's generation = steps after the previous one
            yield batch

    rollout.generate = timed_generate
    out = Path(args.out) / "tether"
    cfg = PPOConfig(policy=args.policy, reward_model=args.rm, lr=args.lr, updates=args.updates,
                    batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, ppo_epochs=args.ppo_epochs,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, kl_coef=KL_COEF,
                    no_eos_penalty=NO_EOS_PENALTY, seed=SEED, dtype="bfloat16" if args.bf16 else "float32",
                    threads=args.threads, log_every=1, eval_every=None, checkpoint_every=None, out_dir=str(out))
    t0 = time.perf_counter()
    train(cfg, prompts, show_progress=False)
    wall = time.perf_counter() - t0
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "samples_per_s" in r]
    steps_at = steps_at[1:] + [steps[0]]
    return {"samples": samples, "optimizer_steps": per_update(steps_at),
            "update_s": [args.batch_size / r["samples_per_s"] for r in logs], "gen_s": gen_s,
            "length": [r["length"] for r in logs], "eos": [r["eos"] for r in logs],
            "score": [r["score"] for r in logs],  # reward after the no-EOS penalty (TRL: objective/scores)
            "kl": [r["kl"] for r in logs], "wall_s": wall, "peak_rss_mb": peak_rss_mb(),
            "precision": cfg.dtype, "threads": torch.get_num_threads()}


def run_trl(args, prompts) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.bf16:  # TRL 1.8's PPOTrainer builds its own Accelerator(); bf16=True alone does not reach it
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    import trl
    from torch.utils.data import DataLoader
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, TrainerCallback)

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"expected trl {TRL_VERSION} from {TRL_DIR}, got {trl.__version__} ({trl.__file__})")
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from tether.models import encode_prompt
    from tether.recipes.common import prompt_order

    tok = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    ids = [encode_prompt(tok, p) for p in prompts]  # the same prompt tokens tether trains on
    pad_note = f"pad {tok.pad_token!r}"
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        # TRL builds attention masks as `ids != pad_token_id`: with pad == EOS (SmolLM2: <|im_end|>) it would
        # mask every end-of-turn token of the prompt and read the score before the response's EOS. Give it a
        # distinct pad token, as TRL's own PPO example does (an unused in-vocabulary one, so generation can pad).
        spare = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() and tok.eos_token != "<|endoftext|>" else None
        if spare is None:
            tok.add_special_tokens({"pad_token": "[PAD]"})
        else:
            tok.pad_token = spare
        pad_note = f"pad {tok.pad_token!r} (id {tok.pad_token_id}) instead of EOS"

    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    if tok.pad_token_id < policy.config.vocab_size:
        policy.generation_config.pad_token_id = tok.pad_token_id
    ref = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    rm = AutoModelForSequenceClassification.from_pretrained(args.rm, num_labels=1, dtype=torch.float32)
    vm = AutoModelForSequenceClassification.from_pretrained(args.rm, num_labels=1, dtype=torch.float32)

    order = [i for u in range(args.updates) for i in prompt_order(len(prompts), args.batch_size, u, 0, 1, SEED)]
    dataset = Dataset.from_list([{"input_ids": ids[i]} for i in order])
    cfg = PPOConfig(
        output_dir=str(Path(args.out) / "trl"), seed=SEED,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size, num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.updates * args.batch_size, local_rollout_forward_batch_size=args.batch_size,
        response_length=args.max_new_tokens, temperature=args.temperature, stop_token="eos",
        missing_eos_penalty=NO_EOS_PENALTY, kl_coef=KL_COEF, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
        vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, adam_epsilon=1e-5, weight_decay=0.01,
        bf16=args.bf16, fp16=False, gradient_checkpointing=False, use_cpu=True,
        num_sample_generations=0, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True)

    update_s: list[float] = []
    gen_s: list[float] = []
    lengths: list[float] = []
    eos: list[float] = []
    records: list[dict] = []
    samples: list[int] = []
    steps = count_optimizer_steps()
    steps_at: list[int] = []
    original = ppo_module.batch_generation

    def timed_generation(model, queries, *a, **k):
        t = time.perf_counter()
        query_responses, logits = original(model, queries, *a, **k)
        gen_s.append(time.perf_counter() - t)
        samples.append(int(queries.shape[0]))
        resp = query_responses[:, queries.shape[1]:]  # (B, T) as generated
        hit = resp == tok.eos_token_id
        first = hit.int().argmax(1)
        n = torch.where(hit.any(1), first + 1, torch.full_like(first, resp.shape[1]))  # tokens incl. EOS
        lengths.append(float(n.float().mean()))
        eos.append(float(hit.any(1).float().mean()))
        return query_responses, logits

    ppo_module.batch_generation = timed_generation

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):  # called once per PPO update, after its optimizer steps
            now = time.perf_counter()
            update_s.append(now - self.t)
            steps_at.append(steps[0])
            self.t = now

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                records.append(dict(logs))

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         value_model=vm, train_dataset=dataset, callbacks=[Timer()])
    # the same prompts, in tether's order: TRL's own dataloader shuffles
    trainer.dataloader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                    collate_fn=DataCollatorWithPadding(tok), drop_last=True)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    policy_gc = bool(getattr(trainer.accelerator.unwrap_model(trainer.model).policy, "is_gradient_checkpointing", False))
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    return {"samples": samples, "optimizer_steps": per_update(steps_at), "update_s": update_s, "gen_s": gen_s,
            "length": lengths, "eos": eos,
            "score": [r["objective/scores"] for r in records], "kl": [r["objective/kl"] for r in records],
            "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "precision": {"no": "float32"}.get(trainer.accelerator.mixed_precision, trainer.accelerator.mixed_precision),
            "threads": torch.get_num_threads(), "trl": f"{trl.__version__} ({Path(trl.__file__).parent})",
            "optimizer": f"{type(opt).__name__} fused={opt.defaults.get('fused')}", "pad": pad_note, "grad_ckpt": policy_gc,
            "trained_params_m": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) / 1e6}


# --- parent --------------------------------------------------------------------------------------
def ensure_trl() -> None:
    if (TRL_DIR / f"trl-{TRL_VERSION}.dist-info").is_dir() and (TRL_DIR / "trl" / "__init__.py").is_file():
        return
    print(f"installing trl=={TRL_VERSION} into {TRL_DIR} ...", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(TRL_DIR),
           f"trl=={TRL_VERSION}"]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"could not install trl=={TRL_VERSION}: {' '.join(cmd)}")


def build_tiny(path: Path) -> str:
    """A 2-layer Llama with random weights and the bundled tokenizer (as tests/conftest.py builds)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tether.models import load_tokenizer

    tok = load_tokenizer("bundled")
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def child(side: str, args, policy: str, rm: str, out: str) -> dict:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--policy", policy, "--rm", rm, "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if side == "trl":
        env["PYTHONPATH"] = os.pathsep.join([str(TRL_DIR)] + [p for p in [env.get("PYTHONPATH")] if p])
    else:
        env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        sys.exit(f"{side} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    res = json.loads(line[-1][7:])
    res["process_s"] = time.perf_counter() - t0
    return res


def describe(name: str, r: dict, batch: int) -> str:
    med = median_steady(r["update_s"])
    return (f"  {name}: samples/update {sorted(set(r['samples']))}, optimizer steps/update "
            f"{sorted(set(r['optimizer_steps']))}; per-update s {[round(x, 2) for x in r['update_s']]} -> median {med:.2f} s, "
            f"{batch / med:.3f} samples/s; generation {median_steady(r['gen_s']):.2f} s/update; "
            f"response {statistics.mean(r['length']):.1f} tokens (EOS {statistics.mean(r['eos']):.0%}); "
            f"mean score {statistics.mean(r['score']):+.3f}; peak RSS {r['peak_rss_mb']:.0f} MB; "
            f"{r['precision']}, {r['threads']} threads; process {r['process_s']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled", help="policy: 'bundled', a local HF folder or a hub id")
    ap.add_argument("--tiny", action="store_true", help="smoke test: tiny random Llama (defaults 3 updates, "
                    "batch 4, mini-batch 2, 2 PPO epochs, 16 new tokens)")
    ap.add_argument("--updates", type=int)
    ap.add_argument("--batch-size", type=int, help="prompts (one response each) per update (default 8)")
    ap.add_argument("--mini-batch-size", type=int, help="samples per optimizer step (default: batch size)")
    ap.add_argument("--ppo-epochs", type=int, help="passes over each batch (default 1)")
    ap.add_argument("--max-new-tokens", type=int, help="response length (default 64)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (TRL: bf16=True)")
    ap.add_argument("--json", type=Path, help="also write both sides' raw results to this file")
    for hidden in ("--side", "--policy", "--rm", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    small = {"updates": 3, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 2, "max_new_tokens": 16}
    full = {"updates": 4, "batch_size": 8, "mini_batch_size": None, "ppo_epochs": 1, "max_new_tokens": 64}
    for k, v in (small if args.tiny else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.mini_batch_size is None:
        args.mini_batch_size = args.batch_size
    if args.batch_size % args.mini_batch_size:
        sys.exit("--batch-size must be a multiple of --mini-batch-size")

    if args.side:  # child process: one side, results as JSON on the last line
        fn = {"rm": lambda a: build_rm(a), "tether": lambda a: run_tether(a, train_prompts()),
              "trl": lambda a: run_trl(a, train_prompts())}[args.side]
        print("RESULT " + json.dumps(fn(args)), flush=True)
        return

    ensure_trl()
    import torch

    from tether import models

    prompts = train_prompts()
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        policy = build_tiny(Path(tmp) / "tiny") if args.tiny else models.resolve(args.model)
        rm_dir = str(Path(tmp) / "rm")
        rm = child("rm", args, policy, rm_dir, tmp)
        steps = args.ppo_epochs * args.batch_size // args.mini_batch_size
        print(f"policy {'tiny random Llama' if args.tiny else args.model} ({policy}), reward model: policy + fresh "
              f"scalar head ({rm['params_m']:.1f}M params); {len(prompts)} train prompts (bundled), same order on "
              f"both sides; {args.updates} updates x {args.batch_size} samples, mini-batch {args.mini_batch_size}, "
              f"{args.ppo_epochs} PPO epoch(s) = {steps} optimizer step(s) per update; max {args.max_new_tokens} "
              f"new tokens, temperature {args.temperature}, kl_coef {KL_COEF}, no-EOS penalty {NO_EOS_PENALTY}, "
              f"lr {args.lr} (linear to 0); {'bf16 autocast' if args.bf16 else 'fp32'}, no gradient checkpointing, "
              f"{args.threads} threads; torch {torch.__version__}", flush=True)
        results = {}
        for side in ("trl", "tether"):  # one at a time, never both at once
            results[side] = child(side, args, policy, rm_dir, tmp)
            name = "TRL 1.8 PPOTrainer" if side == "trl" else "tether ppo        "
            print(describe(name, results[side], args.batch_size), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}} | results, indent=1))
    t, p = results["tether"], results["trl"]
    speed = median_steady(p["update_s"]) / median_steady(t["update_s"])
    mem = t["peak_rss_mb"] / p["peak_rss_mb"]
    print(f"tether/TRL: throughput x{speed:.2f} (goal >= 3), peak memory x{mem:.2f} (goal <= 0.6)")
    print(f"TRL side: trl {p['trl']}, {p['optimizer']}, {p['pad']}, gradient checkpointing {p['grad_ckpt']}, "
          f"{p['trained_params_m']:.1f}M trained params (policy + value model)\n"
          "What differs by design (read the ratios with it):\n"
          "  - value function: TRL trains a separate value model (a second backbone, initialised from the reward\n"
          "    model: forward+backward of two backbones per mini-batch, optimizer state for both); tether uses a\n"
          "    zero-initialised linear value head on the policy (one backbone).\n"
          "  - rollout: TRL takes old log-probs from the generation scores and runs the reference, value and reward\n"
          "    forwards on the whole batch (local_rollout_forward_batch_size = batch size; its default 64 is the\n"
          "    same for batches <= 64); tether runs policy(+value), reference and reward forwards in mini-batches.\n"
          "  - TRL computes full-vocabulary logits for every position (prompt included); tether only for response\n"
          "    positions.\n"
          "  - TRL 1.8's PPO loop never clips gradients; tether clips to norm 1.0. TRL uses TrainingArguments'\n"
          "    default optimizer (fused AdamW on torch >= 2.8, no weight decay on biases/norms); tether torch AdamW.\n"
          "  - tether reads the reward model on re-tokenised chat text (the answer closed by the chat template);\n"
          "    TRL on the generated token ids. Responses are sampled independently on each side, so lengths differ\n"
          "    (printed above): more tokens cost more time on either side.\n"
          "  - tether saves the final policy after its last update (outside the timed updates, inside its RSS).")


if __name__ == "__main__":
    main()
