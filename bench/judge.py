"""The AI judge against the gold scorer, through both backends: the bundled model served over HTTP by
`tether.serving` (the judge's `OpenAIBackend`) and the same model in process (`HFBackend`).

    python bench/judge.py [--pairs 200 --k 4 --max-new-tokens 64 --threads 1]

1. Answers: the bundled SmolLM2-135M-Instruct samples `--k` answers (temperature 0.7, top_p 1,
   `--max-new-tokens`, one seed per answer) to the first bundled prompts (tether/assets/prompts.jsonl)
   through `tether.rollout.generate`, enough prompts for `--pairs` same-prompt pairs (k(k-1)/2 per
   prompt). They are kept in `--samples` (JSONL) and reused by a rerun with the same settings.
2. Reference: the gold scorer (`tether.feedback.gold.gold_score`) decides each pair; pairs it scores
   equal have no reference and are left out of the agreement numbers.
3. The bundled model judges every pair in both orders (the default rubric), once per backend, and
   is read two ways from the same readings: "both orders" (Judge's rule: the orders must agree, else
   a tie) and "one order" (only the order with the pair's first answer shown first).

Printed per backend and protocol: agreement with gold (a tie counts 1/2), agreement among decided
pairs, decided share, mean P(gold's winner), position-bias rate (pairs whose two orders disagree),
first-position rate (decisive single-order answers naming the answer shown first), tie rate, letter
mass; then how closely the two backends agree, and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from itertools import combinations
from pathlib import Path

import torch

from tether.feedback.judge import HFBackend, Judge, OpenAIBackend, Reading, Verdict, combine
from tether.feedback.judge_feedback import gold_winners, verdict_stats
from tether.models import encode_prompt, load_policy
from tether.rollout import generate
from tether.serving import BackgroundServer, create_app

PROMPTS = Path(__file__).resolve().parents[1] / "tether" / "assets" / "prompts.jsonl"
KEYS = ["agreement", "decisive_agreement", "decided", "p_winner", "position_bias_rate", "first_position_rate",
        "tie_rate", "letter_mass"]


def sample_answers(model, tok, n_prompts: int, k: int, max_new_tokens: int, path: Path) -> list[dict]:
    """k answers to each of the first n_prompts bundled prompts, cached in `path`."""
    settings = {"n_prompts": n_prompts, "k": k, "max_new_tokens": max_new_tokens, "temperature": 0.7, "seed": 0}
    if path.is_file():  # a file with the same settings and at least as many prompts serves (its first prompts)
        head, *rows = [json.loads(line) for line in path.read_text().splitlines()]
        if head | {"n_prompts": 0} == settings | {"n_prompts": 0} and head["n_prompts"] >= n_prompts:
            print(f"answers: {n_prompts * k} of {len(rows)} reused from {path}")
            return rows[:n_prompts * k]
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()][:n_prompts]
    todo = [(i, encode_prompt(tok, [{"role": "user", "content": p}])) for i, p in enumerate(prompts) for _ in range(k)]
    t0, rows = time.perf_counter(), []
    for batch in generate(model, tok, todo, temperature=0.7, top_p=1.0, max_new_tokens=max_new_tokens,
                          batch_size=16, seeds=list(range(len(todo)))):
        rows += [{"prompt": prompts[g.key], "text": g.text, "finished": g.finished, "tokens": g.num_tokens}
                 for g in batch]
    rows.sort(key=lambda r: prompts.index(r["prompt"]))
    secs = time.perf_counter() - t0
    print(f"answers: {len(rows)} sampled in {secs:.0f} s ({sum(r['tokens'] for r in rows) / secs:.1f} tokens/s), "
          f"{sum(r['finished'] for r in rows) / len(rows):.0%} ended with EOS; kept in {path}")
    path.write_text("\n".join(json.dumps(r) for r in [settings] + rows) + "\n")
    return rows


def make_pairs(rows: list[dict], k: int, n: int) -> list[tuple]:
    """(prompt, a, b, a_finished, b_finished) for the first n same-prompt pairs; the pair's order
    alternates so that the earlier sample is not always answer a."""
    items = []
    for start in range(0, len(rows), k):
        group = rows[start:start + k]
        for j, (x, y) in enumerate(combinations(group, 2)):
            x, y = (x, y) if (len(items) + j) % 2 == 0 else (y, x)
            items.append((x["prompt"], x["text"], y["text"], x["finished"], y["finished"]))
    return items[:n]


def one_order(r: Reading) -> Verdict:
    """The verdict of the first order alone (answer a shown first)."""
    o = "none" if r.p_first is None else "a" if r.p_first > 0.5 else "b" if r.p_first < 0.5 else "tie"
    return Verdict({"none": "cant_tell"}.get(o, o), r.p_first, (o, "none"), r.mass)


def fmt(x) -> str:
    return "  n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--k", type=int, default=4, help="answers per prompt (2-4)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=Path, default=Path("/tmp/tether-bench-judge-answers.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_policy("bundled")
    per_prompt = args.k * (args.k - 1) // 2
    rows = sample_answers(model, tok, math.ceil(args.pairs / per_prompt), args.k, args.max_new_tokens, args.samples)
    items = make_pairs(rows, args.k, args.pairs)
    gold = gold_winners(items)
    decided = [g for g in gold if g]
    print(f"{len(items)} pairs on {math.ceil(len(items) / per_prompt)} prompts; gold prefers a in "
          f"{decided.count('a')}, b in {decided.count('b')}, no preference in {len(gold) - len(decided)}")

    judge = Judge(HFBackend(model, tok, batch_size=4))
    convs = [c for it in items for c in (judge.conversation(*it), judge.conversation(it[0], it[2], it[1], it[4], it[3]))]
    readings, seconds = {}, {}
    with BackgroundServer(create_app(model, tok, name="bundled")) as url:
        for name, backend in (("http", OpenAIBackend(url + "/v1", model="bundled", concurrency=2)),
                              ("hf", judge.backend)):
            t0 = time.perf_counter()
            readings[name] = backend.prob_first(convs)
            seconds[name] = time.perf_counter() - t0
            print(f"{name}: {len(convs)} readings in {seconds[name]:.0f} s")

    print(f"\n| backend | protocol | {' | '.join(KEYS)} |\n|---|---|{'---|' * len(KEYS)}")
    for name, rs in readings.items():
        both = [combine(rs[2 * i], rs[2 * i + 1]) for i in range(len(items))]
        first = [one_order(rs[2 * i]) for i in range(len(items))]
        for protocol, verdicts in (("both orders", both), ("one order", first)):
            st = verdict_stats(verdicts, gold)
            print(f"| {name} | {protocol} | " + " | ".join(fmt(st[k]) for k in KEYS) + " |")
    http, hf = readings["http"], readings["hf"]
    read = [(a.p_first, b.p_first) for a, b in zip(http, hf) if a.mass is not None]
    print(f"\nHTTP readings from log-probs: {len(read)} of {len(http)} (the rest read the reply text); "
          f"max |P_http - P_hf| over them: {max((abs(a - b) for a, b in read), default=float('nan')):.2e}")
    same = sum(combine(http[2 * i], http[2 * i + 1]).choice == combine(hf[2 * i], hf[2 * i + 1]).choice
               for i in range(len(items)))
    print(f"same both-orders verdict from the two backends: {same} of {len(items)}; seconds: "
          f"http {seconds['http']:.0f}, hf {seconds['hf']:.0f}; torch threads {args.threads}")


if __name__ == "__main__":
    main()
