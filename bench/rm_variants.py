"""Reward-model variants on a finished demo's feedback, scored by how often they agree with the gold scorer.

    python bench/rm_variants.py --ws demo-workspace --variants pairs,prompt-5e-5 [--oracle] [--seed 1]

Reads a workspace after `tether demo` (or `tether loop`): the feedback of `--rounds` (default round 0),
its SFT model, and every `runs/eval-*/report.json`. Each variant trains a reward model from the SFT
model (top 8 layers, bf16 autocast) on one fixed training split (90 % of the prompts; the other 10 %
give the held-out label accuracy) and is scored on **gold agreement**: of all same-prompt pairs among
the eval reports' answers to the held-out eval prompts (SFT's and each round's policy's) whose gold
scores differ by more than 0.02, the share it orders as the gold scorer does. `--oracle` replaces the
training labels by gold's own preference (what this data could teach without label noise). One JSON
line per variant on stdout. Figures: bench/RESULTS.md, "Reward model on the demo's feedback".
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import torch

VARIANTS = {  # name: RMConfig fields over the defaults below
    "pairs": dict(by_prompt=False, epochs=1),  # tether rm before by_prompt: 1 epoch of single pairs at 1e-5
    "pairs-5e-5": dict(by_prompt=False, epochs=1, lr=5e-5),
    "prompt": dict(by_prompt=True, epochs=2),
    "prompt-3ep": dict(by_prompt=True, epochs=3),
    "prompt-2e-5": dict(by_prompt=True, epochs=2, lr=2e-5),
    "prompt-5e-5": dict(by_prompt=True, epochs=2, lr=5e-5),  # tether loop's default since 2026-12-06
    "prompt-1e-4": dict(by_prompt=True, epochs=2, lr=1e-4),
    "prompt-12-layers": dict(by_prompt=True, epochs=2, train_layers=12),
    "prompt-12-layers-5e-5": dict(by_prompt=True, epochs=2, train_layers=12, lr=5e-5),
    "prompt-2-layers-1e-4": dict(by_prompt=True, epochs=2, train_layers=2, lr=1e-4),
}


def gold_pairs(ws_root: Path, gold_score) -> list[tuple]:
    """(prompt messages, text a, finished a, text b, finished b, gold prefers a) over the eval reports."""
    answers: dict[str, dict[str, bool]] = {}
    for rep in sorted((ws_root / "runs").glob("eval-*/report.json")):
        for a in json.loads(rep.read_text())["answers"]:
            for side in ("policy", "reference"):
                answers.setdefault(a["prompt"], {})[a[f"{side}_text"]] = a[f"{side}_finished"]
    out = []
    for prompt, texts in answers.items():
        for (ra, fa), (rb, fb) in itertools.combinations(texts.items(), 2):
            ga, gb = gold_score(prompt, ra, fa), gold_score(prompt, rb, fb)
            if abs(ga - gb) > 0.02:
                out.append(([{"role": "user", "content": prompt}], ra, fa, rb, fb, ga > gb))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ws", type=Path, default=Path("demo-workspace"))
    ap.add_argument("--rounds", default="0", help="comma-separated rounds of feedback to train on")
    ap.add_argument("--variants", default="pairs,prompt-5e-5", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rm-variants"))
    ap.add_argument("--oracle", action="store_true", help="train on gold's preferences instead of the labels")
    ap.add_argument("--seed", type=int, default=0, help="the reward model's seed (the split stays seed 0)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tether import reward
    from tether.feedback.collect import collect_pairs, policy_samples, preference_examples
    from tether.feedback.gold import gold_score
    from tether.recipes import rm
    from tether.workspace import open_workspace

    store = open_workspace(args.ws).store()
    sft = json.loads(sorted((args.ws / "runs").glob("loop-*/state.json"))[-1].read_text())["sft"]
    rounds = [int(r) for r in args.rounds.split(",")]
    pairs = preference_examples(store, collect_pairs(store, rounds))
    scored = gold_pairs(args.ws, gold_score)
    train, held = rm.split_eval(pairs, 0.1, 0, by_prompt=True)  # one split for every variant
    if args.oracle:
        def by_gold(p):
            text = p.prompt[-1]["content"]
            if gold_score(text, p.chosen, p.chosen_finished) >= gold_score(text, p.rejected, p.rejected_finished):
                return dataclasses.replace(p, weight=1.0)
            return dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen, chosen_finished=p.rejected_finished,
                                       rejected_finished=p.chosen_finished, weight=1.0)
        train = [by_gold(p) for p in train]
    print(f"{len(pairs)} pairs ({len(train)} train, {len(held)} held out); {len(scored)} gold-scored answer pairs",
          file=sys.stderr)
    for name in args.variants.split(","):
        cfg = rm.RMConfig(**(dict(model=sft, train_layers=8, seed=args.seed, threads=args.threads, dtype="bfloat16",
                                  checkpoint_every=None, out_dir=str(args.out / f"{name}-r{args.rounds}"))
                             | VARIANTS[name]))
        t0 = time.perf_counter()
        res = rm.train(cfg, train, eval_pairs=held, normalise_on=policy_samples(store, [max(rounds)]),
                       show_progress=False)
        seconds = time.perf_counter() - t0
        n = len(scored)
        r = reward.score_texts(res.model, res.tokenizer, [(q, a, fa) for q, a, fa, _, _, _ in scored]
                               + [(q, b, fb) for q, _, _, b, fb, _ in scored], normalise_scores=False).mean(-1)  # (2n,)
        agree = sum(bool(r[i] > r[n + i]) == s[5] for i, s in enumerate(scored)) / n
        print(json.dumps({"variant": name, "oracle": args.oracle, "seed": args.seed, "rounds": args.rounds,
                          "steps": res.steps, "seconds": round(seconds, 1), "train_pairs": len(train),
                          "held_out_accuracy": round(res.metrics["eval_accuracy"], 3),
                          "gold_agreement": round(agree, 3), "gold_pairs": n}), flush=True)


if __name__ == "__main__":
    main()
