"""The learned reward for control agents: an ensemble of small MLPs over (observation, action),
trained on clip comparisons with the Bradley-Terry loss plus Christiano's label-noise term.

Shapes: ``E`` = ensemble members, ``B`` = clip pairs, ``T`` = steps per clip, ``N`` = transitions,
``D`` = input features (observation ‖ action features).

How it departs from Christiano et al. 2017 (sec. 2.2.3): the members are trained together in one
batched forward (weights stacked as ``(E, ...)``), each member weighing every label by its own fixed
bootstrap count (Poisson(1)) instead of drawing a resample; regularisation is plain weight decay
(no adaptive L2, no dropout); there is no held-out 1/e validation split inside the loop. The output
the agent sees is the mean over members of each member's reward normalised to mean 0, std 1 over
recent agent experience, as in the paper ("normalized ... to have standard deviation 1").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tether.algos.losses import bradley_terry_loss


def preference_loss(returns_a: torch.Tensor, returns_b: torch.Tensor, label: torch.Tensor,
                    noise: float = 0.1, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Christiano et al. 2017, eq. 1, with the label-noise assumption of sec. 2.2.3.

    P̂[a ≻ b] = exp Σ r̂(o_a, a_a) / (exp Σ r̂(o_a, a_a) + exp Σ r̂(o_b, a_b)) = sigmoid(R_a - R_b)
    P       = (1 - noise) * P̂ + noise * 0.5      (noise = 0.1: "a 10% chance that the human
                                                  responds uniformly at random")
    loss    = -[μ log P + (1 - μ) log(1 - P)]    μ = 1 (a preferred), 0 (b), 0.5 (equal)

    Computed in log space (logaddexp of log((1-noise) σ(d)) and log(noise/2)), so large return gaps do
    not overflow; with noise = 0 and μ = 1 it is exactly :func:`tether.algos.losses.bradley_terry_loss`.
    ``returns_a``/``returns_b`` are predicted clip returns ``(..., B)`` (e.g. ``(E, B)`` for an
    ensemble), ``label`` is μ ``(B,)``, ``weight`` optional ``(..., B)`` (bootstrap counts).
    Returns ``(loss (), accuracy ())``: the weighted mean loss, and the detached fraction of non-tied
    pairs whose preferred clip has the higher predicted return.
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    d = returns_a - returns_b  # (..., B)
    if noise == 0.0 and weight is None and bool((label == 1).all()):
        return bradley_terry_loss(returns_a.reshape(-1), returns_b.reshape(-1))  # the plain InstructGPT form
    log_keep = math.log1p(-noise)
    log_rand = math.log(noise / 2) if noise > 0 else -math.inf
    floor = torch.full_like(d, log_rand)
    log_p_a = torch.logaddexp(log_keep + F.logsigmoid(d), floor)  # (..., B) log P[a ≻ b]
    log_p_b = torch.logaddexp(log_keep + F.logsigmoid(-d), floor)  # (..., B) log P[b ≻ a]
    per_pair = -(label * log_p_a + (1 - label) * log_p_b)  # (..., B)
    if weight is None:
        loss = per_pair.mean()
    else:
        loss = (per_pair * weight).sum() / weight.sum().clamp_min(1e-8)
    with torch.no_grad():
        decided = label != 0.5  # (B,)
        right = ((d > 0) == (label > 0.5)).to(d.dtype)  # (..., B)
        acc = right[..., decided].mean() if bool(decided.any()) else torch.tensor(float("nan"))
    return loss, acc


class RewardEnsemble(torch.nn.Module):
    """E independent MLPs D -> hidden -> hidden -> 1 (leaky ReLU, as Christiano's MuJoCo nets), with
    the weights of all members stacked so that one batched matmul evaluates the whole ensemble.

    Inputs are standardised with fixed statistics (``set_input_stats``); ``forward`` gives raw member
    rewards ``(E, N)``; ``normalised`` gives the agent's reward ``(N,)``.
    """

    def __init__(self, in_dim: int, members: int = 3, hidden: int = 64, seed: int = 0):
        super().__init__()
        if members < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {members}")
        g = torch.Generator().manual_seed(seed)
        dims = [in_dim, hidden, hidden, 1]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, o in zip(dims[:-1], dims[1:]):
            bound = 1 / math.sqrt(i)  # PyTorch's nn.Linear default init, per member
            self.weights.append(torch.nn.Parameter((torch.rand(members, i, o, generator=g) * 2 - 1) * bound))
            self.biases.append(torch.nn.Parameter((torch.rand(members, 1, o, generator=g) * 2 - 1) * bound))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(members))
        self.register_buffer("out_std", torch.ones(members))
        self.members, self.in_dim = members, in_dim

    def set_input_stats(self, x: torch.Tensor) -> None:
        """Standardise inputs with the mean/std of ``x`` ``(N, D)`` (std floored at 1e-3)."""
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(1e-3) if len(x) > 1 else torch.ones(self.in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw member rewards: ``(N, D)`` or ``(E, N, D)`` -> ``(E, N)``."""
        h = (x - self.in_mean) / self.in_std  # (N, D) or (E, N, D)
        if h.dim() == 2:
            h = h.expand(self.members, *h.shape)  # (E, N, D)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)  # (E, N, H)
            if k < len(self.weights) - 1:
                h = F.leaky_relu(h, 0.01)
        return h.squeeze(-1)  # (E, N)

    def clip_returns(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted clip returns Σ_t r̂: clips ``(B, T, D)`` -> ``(E, B)``."""
        B, T, D = x.shape
        return self(x.reshape(B * T, D)).reshape(self.members, B, T).sum(-1)

    @torch.no_grad()
    def set_output_stats(self, x: torch.Tensor) -> None:
        """Per-member mean/std of the raw reward over transitions ``x`` ``(N, D)`` (recent experience)."""
        r = self(x)  # (E, N)
        self.out_mean.copy_(r.mean(1))
        self.out_std.copy_(r.std(1).clamp_min(1e-6) if r.shape[1] > 1 else torch.ones(self.members))

    @torch.no_grad()
    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The agent's reward: mean over members of (r_e - μ_e) / σ_e, ``(N, D)`` -> ``(N,)``."""
        return ((self(x) - self.out_mean[:, None]) / self.out_std[:, None]).mean(0)

    @torch.no_grad()
    def preference_probs(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Each member's P̂[a ≻ b] (eq. 1, no noise term): clips ``(B, T, D)`` twice -> ``(E, B)``."""
        return torch.sigmoid(self.clip_returns(xa) - self.clip_returns(xb))

    def numpy_reward(self):
        """A frozen copy of :meth:`normalised` in numpy, for the per-step call in the env wrapper
        (no autograd or torch dispatch overhead on a batch of a few transitions)."""
        ws = [w.detach().numpy().copy() for w in self.weights]  # (E, I, O)
        bs = [b.detach().numpy().copy() for b in self.biases]  # (E, 1, O)
        mu, sd = self.in_mean.numpy().copy(), self.in_std.numpy().copy()
        om, osd = self.out_mean.numpy().copy()[:, None], self.out_std.numpy().copy()[:, None]

        def reward(x: np.ndarray) -> np.ndarray:  # (N, D) -> (N,)
            h = ((x - mu) / sd).astype(np.float32)[None]  # (1, N, D)
            for k, (w, b) in enumerate(zip(ws, bs)):
                h = h @ w + b  # (E, N, O)
                if k < len(ws) - 1:
                    h = np.where(h > 0, h, 0.01 * h)
            return ((h[..., 0] - om) / osd).mean(0)  # (N,)

        return reward


def train_ensemble(net: RewardEnsemble, opt: torch.optim.Optimizer, xa: torch.Tensor, xb: torch.Tensor,
                   label: torch.Tensor, boot: torch.Tensor, epochs: int, batch_size: int, noise: float,
                   gen: torch.Generator) -> dict[str, float]:
    """``epochs`` passes over all labelled pairs (incremental: the net and optimizer carry over from
    the previous call). ``xa``/``xb`` clips ``(P, T, D)``, ``label`` μ ``(P,)``, ``boot`` bootstrap
    counts ``(E, P)``. Returns the last epoch's mean loss and accuracy (members averaged)."""
    P = len(label)
    losses, accs = [], []
    for _ in range(epochs):
        losses, accs = [], []
        order = torch.randperm(P, generator=gen)
        for i in range(0, P, batch_size):
            idx = order[i:i + batch_size]
            ra, rb = net.clip_returns(xa[idx]), net.clip_returns(xb[idx])  # (E, b)
            loss, acc = preference_loss(ra, rb, label[idx], noise=noise, weight=boot[:, idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if not math.isnan(acc.item()):
                accs.append(acc.item())
    return {"reward_loss": float(np.mean(losses)) if losses else float("nan"),
            "reward_train_acc": float(np.mean(accs)) if accs else float("nan")}
