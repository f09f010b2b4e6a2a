"""Pure loss functions over plain tensors."""

from autolab.objectives.lm import lm_loss

__all__ = ["lm_loss"]
