"""Stages: thin LightningModules that call an objective and report what the monitor logs."""

from autolab.stages.lm import LMStage

__all__ = ["LMStage"]
