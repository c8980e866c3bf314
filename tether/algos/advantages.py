"""Masked statistics, GAE, KL-shaped rewards and group baselines (RLOO / GRPO).

Shape conventions: ``B`` = batch (sequences), ``T`` = response tokens. ``mask``
is a ``(B, T)`` bool (or 0/1) tensor marking real response tokens; positions
where it is false are padding and never influence any result, even if they
hold NaN/inf. Nothing here detaches its inputs: pass detached rollout tensors
(as every RL recipe does) unless you really want gradients through them.
"""

import torch

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "gae",
    "kl_penalty_rewards",
    "rloo_advantages",
    "grpo_advantages",
]


def _valid(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x with padding zeroed, bool mask)``; ``torch.where`` keeps NaN out of sums."""
    m = mask.bool()
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)), m


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true.

    ``dim=None`` reduces over everything (a 0-d tensor), otherwise over ``dim``.
    A reduction with no valid element returns 0 rather than NaN.
    """
    xv, m = _valid(x, mask)  # (B, T), (B, T)
    if dim is None:
        return xv.sum() / m.sum().clamp_min(1).to(x.dtype)
    return xv.sum(dim) / m.sum(dim).clamp_min(1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``x`` (over all of them; a 0-d tensor).

    ``unbiased=True`` applies Bessel's correction n / (n - 1), n = number of
    valid entries. With n <= 1 the variance is 0 (no GPU->CPU sync, no error).
    """
    mean = masked_mean(x, mask)  # ()
    var = masked_mean((x - mean) ** 2, mask)  # ()
    if unbiased:
        n = mask.bool().sum().to(x.dtype)
        var = var * n / (n - 1).clamp_min(1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with the mean / (unbiased) variance of its valid entries only.

    Huang et al. 2022, "The N Implementation Details of RLHF with PPO": advantages
    are whitened per batch, over response tokens only (padding excluded).
    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added
    back (used for rewards, whose sign matters). Padding positions are set to 0.
    """
    mean = masked_mean(x, mask)  # ()
    var = masked_var(x, mask, unbiased=True)  # ()
    whitened = (x - mean) * torch.rsqrt(var + eps)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return _valid(whitened, mask)[0]  # (B, T)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eqs. 11-16).

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)                       (eq. 11)
    A_t     = sum_l (gamma * lam)^l * delta_{t+l}
            = delta_t + gamma * lam * A_{t+1}                          (eq. 16)

    Args:
        rewards: ``(B, T)`` per-token rewards of the response.
        values:  ``(B, T)`` value estimates V(s_t) for each response token.
        mask:    ``(B, T)`` true for real tokens (padding after each response).
    The value after the last valid token is 0: the episode ends there. Masked
    positions are skipped (the recursion carries across them unchanged), so
    right padding, left padding and masked-out spans all work.

    Returns ``(advantages, returns)``, both ``(B, T)`` and 0 at padding, with
    ``returns = advantages + values`` (the TD(lambda) value targets).
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"gae expects (B, T) rewards/values/mask of one shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = mask.bool()  # (B, T)
    zero = torch.zeros_like(rewards[:, 0])  # (B,)
    next_value = zero  # (B,) V(s_{t+1}); 0 after the last valid token
    last_adv = zero  # (B,) A_{t+1}
    advs = []
    for t in reversed(range(rewards.shape[1])):
        m_t = m[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        last_adv = torch.where(m_t, delta + gamma * lam * last_adv, last_adv)  # (B,)
        next_value = torch.where(m_t, values[:, t], next_value)  # (B,)
        advs.append(torch.where(m_t, last_adv, zero))
    advantages = torch.stack(advs[::-1], dim=1)  # (B, T)
    returns = torch.where(m, advantages + values, torch.zeros_like(advantages))  # (B, T)
    return advantages, returns


def kl_penalty_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RLHF reward: KL penalty on every token, score on the last one.

    Ziegler et al. 2019 (eq. 2 of sec. 2.2) / Ouyang et al. 2022 (InstructGPT, eq. 2):
    R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)), spread over tokens as
    r_t = -beta * (log pi(y_t) - log pi_ref(y_t)) + [t == last valid] * score.

    Args:
        scores:       ``(B,)`` reward-model score of each full response.
        logprobs:     ``(B, T)`` policy log-probs of the sampled tokens.
        ref_logprobs: ``(B, T)`` reference-model log-probs of the same tokens.
        mask:         ``(B, T)`` true for real response tokens.
        kl_coef:      beta (float or 0-d tensor).
    Returns ``(rewards, kl)``, both ``(B, T)`` and 0 at padding; ``kl`` is the
    per-token k1 estimate ``logprobs - ref_logprobs``. A row with no valid token
    gets no score.
    """
    if scores.dim() != 1 or logprobs.dim() != 2 or scores.shape[0] != logprobs.shape[0]:
        raise ValueError(
            f"expected scores (B,) and logprobs (B, T), got {tuple(scores.shape)}, "
            f"{tuple(logprobs.shape)}"
        )
    kl, m = _valid(logprobs - ref_logprobs, mask)  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    T = logprobs.shape[1]
    positions = torch.arange(T, device=logprobs.device).expand_as(m)  # (B, T)
    last = torch.where(m, positions, -1).max(dim=1).values  # (B,) -1 if empty
    has_token = (last >= 0).to(rewards.dtype)  # (B,)
    bonus = (scores.to(rewards.dtype) * has_token).unsqueeze(1)  # (B, 1)
    rewards = rewards.scatter_add(1, last.clamp_min(0).unsqueeze(1), bonus)  # (B, T)
    return rewards, kl


def _groups(rewards: torch.Tensor, k: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if k < 2:
        raise ValueError(f"group size k must be >= 2 for a group baseline, got k={k}")
    if rewards.shape[0] % k != 0:
        raise ValueError(
            f"batch size {rewards.shape[0]} is not a multiple of the group size k={k}; "
            "expected k consecutive samples per prompt"
        )
    return rewards.view(-1, k)  # (B // k, k)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantages (Ahmadian et al. 2024, eq. 9).

    A_i = r_i - 1/(k-1) * sum_{j != i} r_j, within each group of k samples of
    one prompt. ``rewards`` is ``(B,)`` laid out as ``B // k`` groups of ``k``
    consecutive samples; returns ``(B,)`` in the same order.
    Equivalently A_i = k/(k-1) * (r_i - mean_group).
    """
    g = _groups(rewards, k)  # (G, k)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)  # (G, k)
    return (g - baseline).reshape(-1)  # (B,)


def grpo_advantages(
    rewards: torch.Tensor, k: int, eps: float = 1e-4, scale: bool = True
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, eq. 3 / outcome supervision).

    A_i = (r_i - mean(group)) / (std(group) + eps), std with Bessel's correction
    (as ``torch.std`` / TRL). ``scale=False`` only centres on the group mean
    (Dr. GRPO, Liu et al. 2025), avoiding the per-question difficulty bias.
    ``rewards`` is ``(B,)`` laid out as groups of ``k`` consecutive samples;
    returns ``(B,)``. Groups with identical rewards get advantage 0.
    """
    g = _groups(rewards, k)  # (G, k)
    centred = g - g.mean(dim=1, keepdim=True)  # (G, k)
    if scale:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)  # (G, k)
    return centred.reshape(-1)  # (B,)
