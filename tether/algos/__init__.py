"""Pure tensor functions for RLHF algorithms (PPO, DPO/IPO, RLOO, GRPO).

Depends on torch only; no models, data or I/O.
"""

from .advantages import (
    gae,
    grpo_advantages,
    kl_penalty_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_advantages,
)
from .kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3
from .losses import (
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    ipo_loss,
    logprobs_from_logits,
    ppo_policy_loss,
    sequence_logprobs,
    value_loss,
)

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "gae",
    "kl_penalty_rewards",
    "rloo_advantages",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "AdaptiveKLController",
    "FixedKLController",
    "ppo_policy_loss",
    "value_loss",
    "entropy_from_logits",
    "logprobs_from_logits",
    "bradley_terry_loss",
    "dpo_loss",
    "ipo_loss",
    "sequence_logprobs",
]
