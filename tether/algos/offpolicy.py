"""Correcting for a sampler that is not the trainer: truncated importance sampling (TIS).

An inference engine (vLLM) samples with its own kernels, precision and batching, so the log-prob it
gives a token differs from the trainer's for the same weights: the samples are slightly off-policy
even at the first PPO step. Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training" (fengyao.notion.site/off-policy-rl), weight each token's policy-gradient term
by the importance ratio of trainer to engine, truncated at C so that a token the engine found far
likelier than the trainer cannot blow the gradient up:

    w_t = min(exp(log pi_trainer(y_t) - log pi_engine(y_t)), C)

with both log-probs taken before the update and no gradient through w. TRL's GRPO/RLOO trainers
(`vllm_importance_sampling_correction`, cap 2 by default) and verl (`rollout_is`, truncated
"token" mode, threshold 2) implement the same correction. The weight multiplies the advantage of the
token: for the clipped PPO objective that equals weighting the token's loss, since w >= 0 and
max(-wA r, -wA clip(r)) = w max(-A r, -A clip(r)).
"""


import torch

__all__ = ["truncated_importance_weights"]


def truncated_importance_weights(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor,
                                 mask: torch.Tensor, cap: float = 2.0) -> tuple[torch.Tensor, dict]:
    """Per-token TIS weights min(exp(log pi_trainer - log pi_engine), cap), (B, T), detached; padding 1.

    `trainer_logprobs`, `engine_logprobs`: (B, T) log-probs of the sampled tokens under the trainer's
    policy and under the engine that sampled them (same temperature); `mask`: (B, T) real tokens.
    Stats (0-d tensors, over real tokens): mean weight, fraction truncated, and the mean absolute
    log-prob gap |log pi_trainer - log pi_engine| (how far the two disagree; near 0 when they agree).
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    m = mask.bool()
    gap = torch.where(m, trainer_logprobs.detach().float() - engine_logprobs.detach().float(), 0.0)  # (B, T)
    ratio = torch.exp(gap.clamp(max=20.0))  # (B, T) clamp: exp of a huge gap overflows before the min
    weights = torch.where(m, ratio.clamp(max=cap), 1.0)  # (B, T)
    n = m.sum().clamp_min(1)
    stats = {"tis_weight": torch.where(m, weights, 0.0).sum() / n,
             "tis_truncated": (m & (ratio > cap)).sum() / n,
             "logprob_gap": gap.abs().sum() / n}
    return weights, stats
