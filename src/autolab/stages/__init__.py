"""Stages: thin LightningModules that call an objective and step the optimisers, each with its recipe
(stages/recipe.py) that builds its data and module and says what it measures; a stage's config file
(conf/stage/*.yaml) names its recipe in `stage.recipe`."""

from autolab.stages.dpo import DPOStage
from autolab.stages.lm import LMStage
from autolab.stages.reward import RewardStage

__all__ = ["DPOStage", "LMStage", "RewardStage"]
