"""Per-token KL estimators and KL-coefficient controllers.

Estimators follow John Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html). Tokens are sampled from the policy
``p`` (``logprobs``) and we estimate KL[p || q] against the reference ``q``
(``ref_logprobs``). With log r = log q(x) - log p(x):

    k1 = -log r               unbiased, high variance, can be negative
    k2 = 0.5 * (log r)^2      biased (low bias for close p, q), always >= 0
    k3 = (r - 1) - log r      unbiased, always >= 0, low variance

All take and return tensors of any (matching) shape, typically ``(B, T)``.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch

__all__ = ["kl_k1", "kl_k2", "kl_k3", "AdaptiveKLController", "FixedKLController"]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log p(x) - log q(x) (Schulman 2020): the naive per-sample KL. ``(B, T)`` -> ``(B, T)``."""
    return logprobs - ref_logprobs  # (B, T)


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log p(x) - log q(x))^2 (Schulman 2020). ``(B, T)`` -> ``(B, T)``."""
    return 0.5 * (logprobs - ref_logprobs) ** 2  # (B, T)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (exp(log q - log p) - 1) - (log q - log p) (Schulman 2020). ``(B, T)`` -> ``(B, T)``.

    Non-negative (e^x >= 1 + x) and unbiased for KL[p || q] when x ~ p.
    Uses ``expm1`` for accuracy when p and q are close.
    """
    log_ratio = ref_logprobs - logprobs  # (B, T) log r
    return torch.expm1(log_ratio) - log_ratio  # (B, T)


def _as_float(x: float | torch.Tensor) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


@dataclass
class AdaptiveKLController:
    """Proportional controller for the KL coefficient beta (Ziegler et al. 2019, sec. 2.2).

        e_t   = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta <- beta * (1 + K_beta * e_t * n_steps / horizon)

    ``n_steps`` is the number of samples (episodes) in the batch the KL was
    measured on. The paper quotes K_beta = 0.1; the reference implementation
    (openai/lm-human-preferences, also TRL) has no K_beta factor, i.e. K_beta = 1,
    which is the default here so its hyper-parameters (target=6, horizon=10000)
    carry over unchanged.
    """

    value: float
    target: float
    horizon: float
    k_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {self.value}")
        if not self.target > 0:
            raise ValueError(f"KL target must be > 0, got {self.target}")
        if not self.horizon > 0:
            raise ValueError(f"horizon must be > 0, got {self.horizon}")

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Update beta from the KL measured on the last batch; returns the new beta."""
        kl = _as_float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"current_kl must be finite, got {kl}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + self.k_beta * error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        missing = [f.name for f in fields(self) if f.name not in state]
        if missing:
            raise KeyError(f"KL controller state is missing {missing}")
        for f in fields(self):
            setattr(self, f.name, float(state[f.name]))


@dataclass
class FixedKLController:
    """Constant KL coefficient with the same interface as :class:`AdaptiveKLController`."""

    value: float

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
