"""Runs tether recipes on a tiny model with a fixed GLOBAL batch, on however many processes it is
launched with (plain `python`, `accelerate launch` or `torchrun`); the tests in this folder compare
the metrics.jsonl it leaves under OUT/<recipe>/.

    python driver.py MODEL_DIR OUT sft,rm,dpo,ppo,rloo,grpo [--stop-after N] [--resume] [--hang]

Per-process sizes are the global ones divided by the number of processes: sft/rm/dpo keep 2
micro-batches of 2 per optimizer step (grad_accum = 2 / world), ppo 4 samples per update, rloo/grpo
2 prompts x k=2 per update. Every run checkpoints every 2 steps, so `--stop-after 2` then `--resume`
(on another process count) tests resuming. `--hang` (ppo, rloo, grpo): once a checkpoint exists, the
reward function blocks, so a test can kill the run mid-update with SIGKILL.
"""

import argparse
import os
import sys
import time

import torch

PROMPTS = ["say a color", "the sky is", "name a color please", "the sea is", "a cat is", "the tree is",
           "say the name", "a dog is"]
COLOURS = ["blue", "red", "green", "yellow", "black", "white", "brown", "pink"]


def says_blue(prompts, responses, finished):
    """1 for a response that says 'blue', plus 0.1 per word (deterministic: the same for any process count).
    The length term keeps every batch's rewards spread, so no update's gradient is rounding noise (a batch
    with no 'blue' at all would give advantages of 0 and a gradient norm of ~1e-5 that one and two
    processes round differently)."""
    return [float("blue" in r.split()) + 0.1 * len(r.split()) for r in responses]


def hanging(out: str):
    """says_blue, but blocking for good once out/checkpoint is written (both processes block)."""
    def reward(prompts, responses, finished):
        while os.path.exists(os.path.join(out, "checkpoint", "tether_state.json")):
            time.sleep(0.2)
        return says_blue(prompts, responses, finished)
    reward.__name__ = says_blue.__name__  # the run's fingerprint names its reward function
    return reward


def run(recipe: str, model: str, out: str, world: int, stop_after: int | None, resume: bool,
        hang: bool = False) -> None:
    reward_fn = hanging(out) if hang else says_blue
    common = dict(out_dir=out, threads=1, log_every=1, checkpoint_every=2, stop_after=stop_after)
    if recipe == "sft":
        from tether.recipes.sft import Demonstration, SFTConfig, train

        demos = [Demonstration(p, " ".join(COLOURS[(i + j) % 8] for j in range(1 + i % 3)))
                 for i, p in enumerate(PROMPTS + PROMPTS[:6])]  # 14 demos: 7 micro-batches, the last step has 1
        cfg = SFTConfig(model=model, lr=1e-2, epochs=1, batch_size=2, grad_accum=2 // world, warmup=0.0,
                        eval_fraction=0.0, samples=0, max_length=32, **common)
        train(cfg, demos, resume=resume, show_progress=False)
    elif recipe in ("rm", "dpo"):
        from tether.recipes.rm import PreferenceExample

        pairs = [PreferenceExample(p, COLOURS[i % 8] + " blue", COLOURS[(i + 3) % 8], weight=1.0 + (i % 3) / 2,
                                   group=i // 2 if i < 4 else None)
                 for i, p in enumerate(PROMPTS + PROMPTS[:6])]  # 14 pairs, two rankings of 2
        if recipe == "rm":
            from tether.recipes.rm import RMConfig, train

            cfg = RMConfig(model=model, lr=3e-3, batch_size=2, grad_accum=2 // world, max_length=32,
                           eval_fraction=0.0, warmup=0.0, **common)
        else:
            from tether.recipes.dpo import DPOConfig, train

            cfg = DPOConfig(model=model, lr=1e-2, batch_size=2, grad_accum=2 // world, max_length=32,
                            eval_fraction=0.0, warmup=0.0, **common)
        train(cfg, pairs, resume=resume, show_progress=False)
    elif recipe == "ppo":
        from tether.recipes.ppo import PPOConfig, train

        cfg = PPOConfig(policy=model, updates=4, batch_size=4 // world, mini_batch_size=4 // world, ppo_epochs=2,
                        max_new_tokens=6, temperature=1.0, lr=3e-3, kl_coef=0.02, no_eos_penalty=0.0,
                        vf_coef=0.5, **common)
        train(cfg, PROMPTS, reward_fn=reward_fn, resume=resume, show_progress=False)
    elif recipe in ("rloo", "grpo"):
        from tether.recipes.online import OnlineConfig, train

        cfg = OnlineConfig(estimator=recipe, policy=model, updates=4, prompts_per_update=2 // world, k=2,
                           micro_batch_size=2, max_new_tokens=6, temperature=1.0, lr=3e-3, beta=0.05,
                           no_eos_penalty=0.0, **common)
        train(cfg, PROMPTS, reward_fn=reward_fn, resume=resume, show_progress=False)
    else:
        raise SystemExit(f"unknown recipe {recipe}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("recipes")
    ap.add_argument("--stop-after", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hang", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.hang:  # torchrun starts each worker in its own session: the test kills them by these ids
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"pid-{os.environ.get('RANK', '0')}"), "w") as f:
            f.write(str(os.getpid()))
    for recipe in args.recipes.split(","):
        run(recipe, args.model, os.path.join(args.out, recipe), world, args.stop_after, args.resume, args.hang)


if __name__ == "__main__":
    sys.exit(main())
