"""Stages: thin LightningModules that call an objective and step the optimisers."""

from autolab.stages.dpo import DPOStage
from autolab.stages.lm import LMStage

__all__ = ["DPOStage", "LMStage"]
