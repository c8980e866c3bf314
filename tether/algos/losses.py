"""Policy-gradient, value, reward-model and preference losses, plus log-prob helpers.

Shapes: ``B`` = batch, ``T`` = tokens, ``V`` = vocabulary. Token-level losses
reduce with :func:`~tether.algos.advantages.masked_mean` over valid tokens of the
whole batch; padding entries (even NaN/inf) affect neither the loss nor its gradient. Returned ``stats`` values are detached 0-d tensors (call ``.item()``
when logging; that is the only device sync).
"""

import torch
import torch.nn.functional as F

from .advantages import masked_mean

__all__ = [
    "ppo_policy_loss",
    "value_loss",
    "entropy_from_logits",
    "logprobs_from_logits",
    "bradley_terry_loss",
    "dpo_loss",
    "ipo_loss",
    "sequence_logprobs",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _zero_padding(mask: torch.Tensor, *xs: torch.Tensor) -> list[torch.Tensor]:
    """Replace padding entries by 0 *before* any arithmetic, so garbage there (NaN,
    huge values -> exp overflow) cannot produce NaN in the forward or backward pass."""
    m = mask.bool()
    return [torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in xs]


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    L = -E_t[min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t)]
      = masked_mean(max(-A_t * ratio_t, -A_t * clip(ratio_t)))
    with ratio_t = exp(logprobs - old_logprobs). All inputs ``(B, T)``.

    Stats: ``clipfrac`` = fraction of valid tokens where the clipped term is the
    (strictly) larger one, i.e. gradient is cut off; ``approx_kl`` = masked mean
    of the k2 estimator 0.5 * (logprobs - old_logprobs)^2 (Schulman 2020, as in
    TRL's PPO); ``ratio`` = masked mean of the ratio.
    """
    logprobs, old_logprobs, advantages = _zero_padding(mask, logprobs, old_logprobs, advantages)
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # ()
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (openai/lm-human-preferences; Huang et al. 2022, detail on value clipping).

    v_clip = old + clamp(v - old, -eps, eps)
    L_V    = 0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2))
    All inputs ``(B, T)``. Stats: ``vf_clipfrac`` = fraction of valid tokens where
    the clipped error is strictly larger (its gradient is zero there).
    """
    values, old_values, returns = _zero_padding(mask, values, old_values, returns)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # (B, T)
    err = (values - returns) ** 2  # (B, T)
    err_clipped = (v_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)  # ()
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask)}
    return loss, stats


def _per_row(fn, logits: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` to one leading-dim slice at a time to bound temporary memory to one row."""
    if logits.shape[0] == 0:
        return fn(logits, *others)
    return torch.stack([fn(*row) for row in zip(logits, *others)])


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at every position: ``(B, T, V)`` -> ``(B, T)``.

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v (stable for any shift of z;
    ``-inf`` logits, i.e. masked vocabulary entries, contribute 0). Computed one
    batch row at a time; 16-bit inputs are upcast per row and give float32.
    """

    def row_entropy(z: torch.Tensor) -> torch.Tensor:  # (T, V) -> (T,)
        if z.dtype in _LOW_PRECISION:
            z = z.float()
        p = torch.softmax(z, dim=-1)  # (T, V)
        # nansum: 0 * -inf = nan for masked entries, whose true contribution is 0
        return torch.logsumexp(z, dim=-1) - (p * z).nansum(dim=-1)  # (T,)

    return _per_row(row_entropy, logits)


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = -100
) -> torch.Tensor:
    """log softmax(logits)[labels]: ``(B, T, V)``, ``(B, T)`` -> ``(B, T)``.

    Memory-conscious: gathers the label logit and subtracts logsumexp, one batch
    row at a time, so no full ``(B, T, V)`` log-softmax copy is made (the same
    trick as TRL's ``selective_log_softmax``). 16-bit logits are upcast to float32
    one row at a time (logsumexp in bf16 is too coarse) and the result is float32.
    Positions whose label equals ``ignore_index`` (e.g. -100 padding) get 0.
    Labels must already be aligned with the logits (shift by one for causal LMs).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree; "
            "expected (B, T, V) and (B, T)"
        )
    ignored = labels == ignore_index if ignore_index is not None else None  # (B, T)
    safe = labels.masked_fill(ignored, 0) if ignored is not None else labels  # (B, T)

    def row_logprobs(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (T, V), (T,) -> (T,)
        if z.dtype in _LOW_PRECISION:
            z = z.float()
        picked = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (T,)
        return picked - torch.logsumexp(z, dim=-1)  # (T,)

    out = _per_row(row_logprobs, logits, safe)  # (B, T)
    if ignored is not None:
        out = out.masked_fill(ignored, 0.0)
    return out


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise reward-model loss (Ouyang et al. 2022, InstructGPT eq. 1).

    loss = mean(-log sigmoid(r_chosen - r_rejected [- margin]))  (``logsigmoid``,
    stable for large gaps); the margin form is Llama 2's (Touvron et al. 2023, eq. 2).
    Inputs ``(B,)``. Returns ``(loss, accuracy)``, both 0-d; accuracy is the
    detached fraction of pairs with r_chosen > r_rejected (margin not applied).
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()  # ()
    accuracy = (chosen_rewards > rejected_rewards).to(diff.dtype).mean().detach()  # ()
    return loss, accuracy


def _implicit_rewards(pc, pr, rc, rr, beta):
    h = (pc - pr) - (rc - rr)  # (B,) log-ratio difference
    chosen_rewards = beta * (pc - rc).detach()  # (B,)
    rejected_rewards = beta * (pr - rr).detach()  # (B,)
    return h, chosen_rewards, rejected_rewards


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization loss (Rafailov et al. 2023, eq. 7).

    h = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l))
    loss = -log sigmoid(beta * h)
    With ``label_smoothing = eps > 0`` this is conservative DPO (cDPO, labels
    flipped with probability eps), matching TRL's ``loss_type="sigmoid"``:
    loss = (1 - eps) * -log sigmoid(beta * h) + eps * -log sigmoid(-beta * h).
    Inputs are ``(B,)`` sequence log-probs (see :func:`sequence_logprobs`).
    Returns ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))`` with
    implicit rewards beta * (log pi - log pi_ref), detached. Take ``losses.mean()``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    h, chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)  # (B,)
    if label_smoothing > 0:
        losses = losses - label_smoothing * F.logsigmoid(-beta * h)  # (B,)
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity Preference Optimization loss (Azar et al. 2023, eq. 17).

    loss = (h - 1 / (2 * beta))^2 with h the same log-ratio difference as DPO;
    here ``beta`` plays the role of the paper's tau (regularisation strength).
    Note: TRL feeds IPO token-*averaged* log-probs (``sequence_logprobs(...,
    average=True)``) while DPO uses sums; this function takes whatever the
    caller passes, so the caller decides sum vs mean (and beta must suit it).
    Returns ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    h, chosen_rewards, rejected_rewards = _implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = (h - 1.0 / (2.0 * beta)) ** 2  # (B,)
    return losses, chosen_rewards, rejected_rewards


def sequence_logprobs(
    token_logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Sequence log-prob from token log-probs: ``(B, T)`` -> ``(B,)``.

    Sum over valid tokens (log pi(y|x) = sum_t log pi(y_t | x, y_<t)), or their
    mean with ``average=True`` (a row without valid tokens gives 0).
    """
    if average:
        return masked_mean(token_logprobs, mask, dim=-1)  # (B,)
    m = mask.bool()
    return torch.where(m, token_logprobs, torch.zeros_like(token_logprobs)).sum(-1)  # (B,)


class _LogprobsFromHidden(torch.autograd.Function):
    """log softmax(H W^T)[y] in chunks of tokens, and optionally each row's entropy (no gradient) from
    the same logits; backward recomputes each chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, with_entropy):  # (N, D), (V, D), (N,) -> (N,), (N,) | None
        # the matmuls run in autocast's dtype when it is on, in backward too (which runs outside autocast)
        dev = hidden.device.type
        cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(
            hidden.dtype, weight.dtype)
        out = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        lse = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        ent = hidden.new_empty(hidden.shape[0], dtype=torch.float32) if with_entropy else None
        w = weight.to(cd)  # (V, D)
        for s in range(0, hidden.shape[0], chunk):
            z = (hidden[s:s + chunk].to(cd) @ w.T).float()  # (n, V)
            lse[s:s + chunk] = torch.logsumexp(z, dim=-1)
            out[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None])[:, 0] - lse[s:s + chunk]
            if ent is not None:  # H = lse(z) - sum_v p_v z_v
                ent[s:s + chunk] = lse[s:s + chunk] - (z - lse[s:s + chunk, None]).exp_().mul_(z).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.cd = chunk, cd
        if ent is None:
            return out
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    def backward(ctx, grad, *_):  # (N,): d loss / d logp_t
        hidden, weight, targets, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[:2]
        cd, w = ctx.cd, weight.to(ctx.cd)  # (V, D)
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, y, g = hidden[s:s + ctx.chunk].to(cd), targets[s:s + ctx.chunk], grad[s:s + ctx.chunk, None].float()
            # p = exp(z - lse) with the forward's lse; dz = g * (onehot(y) - p)   (n, V)
            dz = (h @ w.T).float().sub_(lse[s:s + ctx.chunk, None]).exp_().mul_(-g)
            dz.scatter_add_(-1, y[:, None], g)
            dz = dz.to(cd)
            if want_h:
                grad_h[s:s + ctx.chunk] = dz @ w  # (n, D)
            if want_w:
                grad_w.addmm_(dz.T, h) if cd == torch.float32 else grad_w.add_(dz.T @ h)  # (V, D)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 256, with_entropy: bool = False):
    """log softmax(h_t W^T)[y_t] for every row: ``(N, D)``, ``(V, D)``, ``(N,)`` -> ``(N,)`` float32;
    with ``with_entropy``, also the entropy of each row's distribution ``(N,)``, float32, without gradient
    (from the same chunk of logits: no second pass).

    The same value and gradients as ``logprobs_from_logits(hidden @ weight.T, targets)`` for an LM head
    without bias, but the ``(N, V)`` logits never exist at once: forward and backward work on ``chunk``
    rows at a time and backward recomputes their logits (one more head matmul, in exchange for not
    keeping N x V floats for backward, the largest activation of a small-model forward). Gradient:
    d log p(y_t) / d z_t = onehot(y_t) - softmax(z_t), so dL/dh_t = g_t (W[y_t] - p_t W) and
    dL/dW = sum_t g_t (onehot(y_t) - p_t)^T h_t, with g_t = dL / d log p(y_t). Under autocast the
    matmuls run in its dtype, in backward as well.
    """
    return _LogprobsFromHidden.apply(hidden, weight, targets, chunk, with_entropy)


@torch.no_grad()
def entropy_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Entropy of softmax(h_t W^T) for every row: ``(N, D)``, ``(V, D)`` -> ``(N,)`` float32, no gradient:
    ``entropy_from_logits(hidden @ weight.T)`` with ``chunk`` rows of logits at a time."""
    targets = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    return _LogprobsFromHidden.apply(hidden, weight, targets, chunk, True)[1]


__all__ += ["logprobs_from_hidden", "entropy_from_hidden"]


class LinearNLL(torch.autograd.Function):
    """Σ_i -log softmax(h_i Wᵀ)[y_i] and the per-token terms, in chunks of tokens (fused linear
    cross-entropy): one chunk's (C, V) logits exist at a time, and the gradients w.r.t. h and W are
    formed in the same pass, d/dz = softmax(z) - onehot(y), so backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        dev = hidden.device.type
        cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
        w = weight.to(cd)  # (V, H)
        per_token = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)  # (M,)
        g_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if ctx.needs_input_grad[0] else None
        g_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for s in range(0, len(targets), chunk):
            h, y = hidden[s:s + chunk].to(cd), targets[s:s + chunk]  # (C, H), (C,)
            z = (h @ w.t()).float()  # (C, V)
            lse = torch.logsumexp(z, dim=-1)  # (C,)
            per_token[s:s + chunk] = lse - z.gather(1, y[:, None]).squeeze(1)
            if g_h is None and g_w is None:
                continue
            z.sub_(lse[:, None]).exp_()
            z[torch.arange(len(y)), y] -= 1.0
            dz = z.to(cd)  # (C, V)
            if g_h is not None:
                g_h[s:s + chunk] = dz @ w
            if g_w is not None:
                g_w.addmm_(dz.t(), h) if cd == torch.float32 else g_w.add_(dz.t() @ h)
        ctx.save_for_backward(g_h, g_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(per_token)
        ctx.set_materialize_grads(False)
        return per_token.sum(), per_token

    @staticmethod
    def backward(ctx, grad_sum, _):
        g_h, g_w = ctx.saved_tensors
        scale = (lambda g, dt: None if g is None or grad_sum is None else (g * grad_sum).to(dt))
        return scale(g_h, ctx.dtypes[0]), scale(g_w, ctx.dtypes[1]), None, None
