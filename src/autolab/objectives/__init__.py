"""Pure loss functions over plain tensors."""

from autolab.objectives.dpo import LOSS_TYPES, dpo_loss, preference_metrics, sequence_logps
from autolab.objectives.lm import lm_loss, packed_rows_loss
from autolab.objectives.reward import reward_loss, reward_metrics

__all__ = ["LOSS_TYPES", "dpo_loss", "lm_loss", "packed_rows_loss", "preference_metrics", "reward_loss", "reward_metrics",
           "sequence_logps"]
