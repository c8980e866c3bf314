"""Active query selection against random selection at the same label budget.

    python bench/active.py [--seeds 5 --start 32 --batch 32 --budget 256 --members 5 --temperature 0.25]

Christiano et al. 2017 (sec. 2.2.4) ask labelers about the pairs on which an ensemble of reward
predictors disagrees most. This measures it on a synthetic setup that runs in CPU-seconds and keeps
the same shape as tether's feedback (responses grouped by prompt, pairs within a prompt):

- "prompts" with K responses each; a response is a feature vector x in R^d; the hidden gold utility
  is u(x) = w.x + bump * sin(3 v.x) (a trend plus structure a linear model misses);
- a simulated labeler answers with Bradley-Terry noise, P(a > b) = sigmoid((u_a - u_b) / (T * sd(u)));
- the reward model is an ensemble of M one-hidden-layer MLPs, each trained from scratch on its own
  bootstrap resample of the labels (`tether.recipes.rm.bootstrap_weights`, the weighting `tether rm
  --heads M` uses) with the weighted Bradley-Terry loss (`tether.recipes.rm.weighted_bt_loss`);
- from `--start` random labels, each round adds `--batch` labels chosen either uniformly among the
  unlabeled candidate pairs (`tether.feedback.select.select_random`) or by highest ensemble
  disagreement (`tether.feedback.select.select_active`), up to `--budget` labels;
- held-out accuracy: the share of same-prompt pairs of unseen prompts that the ensemble mean
  orders as the gold utility does (noise-free gold). Also printed: the share of the selected pairs
  on which the labeler's answer was wrong (disagreement tends to pick close, noisy pairs).

Each seed draws a new world (gold function, prompts, labeler noise); both methods see the same world
and the same first labels. Prints a table of mean +- standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tether.feedback.select import same_prompt_pairs, select_active, select_random
from tether.recipes.rm import bootstrap_weights, weighted_bt_loss


def make_gold(seed: int, dim: int, bump: float):
    """The hidden gold utility u(x) = w.x / sqrt(d) + bump * sin(3 v.x) of one world."""
    g = torch.Generator().manual_seed(seed)
    w, v = torch.randn(dim, generator=g), torch.randn(dim, generator=g) / dim ** 0.5
    return lambda x: x @ w / dim ** 0.5 + bump * torch.sin(3 * (x @ v))  # (N, d) -> (N,)


def responses(seed: int, prompts: int, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (prompts * k, d), same-prompt pairs (P, 2))."""
    x = torch.randn(prompts * k, dim, generator=torch.Generator().manual_seed(seed))
    return x, same_prompt_pairs([i // k for i in range(prompts * k)])


def train_ensemble(x: torch.Tensor, labels: torch.Tensor, members: int, seed: int, hidden: int = 32,
                   steps: int = 200, lr: float = 1e-2) -> torch.Tensor:
    """Fit M MLPs at once (batched weights) on labels (L, 2) = (chosen, rejected); returns scores (M, N)."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    w1 = (torch.randn(members, d, hidden, generator=g) / d ** 0.5).requires_grad_()  # (M, d, h)
    b1 = torch.zeros(members, 1, hidden, requires_grad=True)  # (M, 1, h)
    w2 = (torch.randn(members, hidden, generator=g) / hidden ** 0.5).requires_grad_()  # (M, h)

    def scores() -> torch.Tensor:
        h = torch.tanh(torch.einsum("nd,mdh->mnh", x, w1) + b1)  # (M, N, h)
        return torch.einsum("mnh,mh->mn", h, w2)  # (M, N)

    weights = bootstrap_weights(len(labels), members, seed)  # (L, M)
    opt = torch.optim.Adam([w1, b1, w2], lr=lr, weight_decay=1e-3)
    for _ in range(steps):
        r = scores()  # (M, N)
        loss, _ = weighted_bt_loss(r[:, labels[:, 0]].T, r[:, labels[:, 1]].T, weights)  # (L, M) each
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return scores()


def accuracy(scores: torch.Tensor, u: torch.Tensor, pairs: torch.Tensor) -> float:
    mean = scores.mean(0)  # (N,)
    a, b = pairs[:, 0], pairs[:, 1]
    return float(((mean[a] - mean[b]) * (u[a] - u[b]) > 0).float().mean())


def run(world: int, args) -> dict[str, list[tuple[int, float, float]]]:
    seed = 1000 * world  # seeds of different worlds never overlap
    gold = make_gold(seed, args.dim, args.bump)
    x, pool = responses(seed + 1, args.prompts, args.k, args.dim)  # the candidate pool
    x_test, test_pairs = responses(seed + 2, args.test_prompts, args.k, args.dim)  # unseen prompts
    u, u_test = gold(x), gold(x_test)
    scale = args.temperature * float(u.std())
    noise = torch.rand(len(pool), generator=torch.Generator().manual_seed(seed + 3))  # one draw per pair
    p_first = torch.sigmoid((u[pool[:, 0]] - u[pool[:, 1]]) / scale)  # (P,)
    first_wins = noise < p_first  # the labeler's answer, fixed per pair so both methods see the same one
    labeled_pairs = torch.where(first_wins[:, None], pool, pool.flip(1))  # (P, 2) chosen, rejected
    wrong = (u[labeled_pairs[:, 0]] < u[labeled_pairs[:, 1]])  # (P,) the labeler erred

    start = select_random(len(pool), args.start, seed + 4).tolist()
    out = {}
    for method in ("random", "active"):
        chosen, curve = list(start), []
        while True:
            labels = labeled_pairs[chosen]  # (L, 2)
            all_x = torch.cat([x, x_test])
            scores = train_ensemble(all_x, labels, args.members, seed + len(chosen))
            acc = accuracy(scores[:, len(x):], u_test, test_pairs)
            curve.append((len(chosen), acc, float(wrong[chosen].float().mean())))
            if len(chosen) >= args.budget:
                break
            rest = torch.tensor(sorted(set(range(len(pool))) - set(chosen)))
            n = min(args.batch, args.budget - len(chosen))
            if method == "random":
                pick = rest[select_random(len(rest), n, seed + 5 + len(chosen))]
            else:
                pick = rest[select_active(scores[:, :len(x)], pool[rest], n)]
            chosen += pick.tolist()
        out[method] = curve
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=250, help="Prompts in the candidate pool.")
    ap.add_argument("--test-prompts", type=int, default=200)
    ap.add_argument("--k", type=int, default=4, help="Responses per prompt.")
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--bump", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=0.25, help="Labeler noise in units of sd(u).")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--start", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs = [run(s, args) for s in range(args.seeds)]
    budgets = [b for b, _, _ in runs[0]["random"]]
    print(f"{args.seeds} seeds; {args.prompts} prompts x {args.k} responses ({len(same_prompt_pairs([i // args.k for i in range(args.prompts * args.k)]))} "
          f"candidate pairs), d={args.dim}, bump={args.bump}, labeler T={args.temperature} sd(u), "
          f"{args.members} members, batch {args.batch}")
    print("| labels | random: held-out acc | active: held-out acc | active - random | labeler errors in chosen (random / active) |")
    print("|---|---|---|---|---|")
    for i, b in enumerate(budgets):
        r = [run_["random"][i][1] for run_ in runs]
        a = [run_["active"][i][1] for run_ in runs]
        diff = [y - x for x, y in zip(r, a)]
        er = statistics.fmean(run_["random"][i][2] for run_ in runs)
        ea = statistics.fmean(run_["active"][i][2] for run_ in runs)
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        print(f"| {b} | {statistics.fmean(r):.3f} ± {sd(r):.3f} | {statistics.fmean(a):.3f} ± {sd(a):.3f} | "
              f"{statistics.fmean(diff):+.3f} ± {sd(diff):.3f} | {er:.2f} / {ea:.2f} |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
