"""Pure loss functions over plain tensors."""

from autolab.objectives.dpo import LOSS_TYPES, dpo_loss, preference_metrics, sequence_logps
from autolab.objectives.grpo import group_advantages, grpo_loss, token_logps_and_entropy
from autolab.objectives.lm import lm_loss, packed_rows_loss
from autolab.objectives.reward import reward_loss, reward_metrics

__all__ = ["LOSS_TYPES", "dpo_loss", "group_advantages", "grpo_loss", "lm_loss", "packed_rows_loss", "preference_metrics",
           "reward_loss", "reward_metrics", "sequence_logps", "token_logps_and_entropy"]
