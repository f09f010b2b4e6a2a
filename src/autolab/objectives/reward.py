"""The reward model's loss (Bradley-Terry) and its metrics, as pure functions of the scalar rewards of
chosen and rejected responses.

- Bradley & Terry (1952), as InstructGPT's reward model (Ouyang et al. 2022, arXiv 2203.02155):
  -log s(r_c - r_r), the chance that chosen beats rejected under the model's scores.
- With a margin m per pair (Llama 2, Touvron et al. 2023, arXiv 2307.09288): -log s(r_c - r_r - m).
- Centring (Eisenstein et al. 2023, arXiv 2312.09244, Eq. 2): + c (r_c + r_r)^2, so the rewards stay
  near zero mean; TRL's `center_rewards_coefficient` (0.01 recommended).

Metric names are TRL's RewardTrainer's (accuracy, margin, min/mean/max_reward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                center_rewards_coefficient: float | None = None) -> torch.Tensor:
    """Per-pair losses [B] from rewards [B] (their mean is TRL's loss)."""
    losses = -F.logsigmoid(chosen - rejected - (margin if margin is not None else 0.0))
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen + rejected) ** 2
    return losses


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch statistics under TRL's names (tensors: read them back only when logging)."""
    chosen, rejected = chosen.detach(), rejected.detach()
    both = torch.cat([chosen, rejected])
    return {
        "accuracy": (chosen > rejected).float().mean(),
        "margin": (chosen - rejected).mean(),
        "min_reward": both.min(),
        "mean_reward": both.mean(),
        "max_reward": both.max(),
    }
