"""Stage recipes: what a stage brings to the common loop in run.py (build -> fit -> evaluate -> report).

A stage's config file names its recipe (`stage.recipe: autolab.stages.dpo.RECIPE`); the recipe owns
the stage's data, its LightningModule, what it measures before and after training and its final
metrics. Adding a stage (KTO, ORPO, GRPO, ...) is a module with a `Recipe` and a file in conf/stage/;
run.py names no stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from autolab.distributed import World
from autolab.errors import UserError


@dataclass
class Context:
    """What run.py hands every recipe."""

    cfg: DictConfig
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    max_len: int  # the model's positions
    compiled: bool  # torch.compile the stage's hot path
    common: dict  # OptimisedStage's arguments: optim, schedule, budget, grad_clip, restore
    out: Path  # the run's output dir
    init_path: str | None  # the starting checkpoint's folder (init_from resolved), None from scratch
    initial_model: Callable[[], torch.nn.Module]  # a fresh copy of the starting weights, loaded again
    world: World = field(default_factory=World)  # the run's processes: the data reads this rank's slice of each batch


@dataclass
class StageParts:
    """What a stage brings to the common loop."""

    data: torch.utils.data.IterableDataset
    module: "L.LightningModule"  # noqa: F821
    unit: str  # what a step consumes: "tokens" or "pairs"
    per_step: int  # units per step
    flops_per_unit: float | None  # for MFU; None where it is not counted
    source: str  # what it trains on, for the start-up line
    measures: dict = field(default_factory=dict)  # name -> fn(model): measured before (from a checkpoint) and after
    finals: Callable[[], dict] = dict  # measured once, after training
    lm_measures: bool = True  # val_bpb (and its curves) apply: False for a model without an LM head (a reward model)
    loss_has_scale: bool = True  # the divergence guard compares the loss with its first value: False for a loss
    # near zero or negative by construction (GRPO's), which only NaN stops


@dataclass
class Recipe:
    build: Callable[[Context], StageParts]
    wrap: Callable[[DictConfig, torch.nn.Module], torch.nn.Module] = lambda cfg, model: model  # e.g. a LoRA adapter


def recipe_of(name: str) -> Recipe:
    """The Recipe that `stage.recipe` names (module.attribute)."""
    from hydra.utils import get_object

    try:
        recipe = get_object(str(name))
    except Exception:
        recipe = None
    if not isinstance(recipe, Recipe):
        raise UserError(f"stage.recipe={name} is not a stage recipe: name one as module.RECIPE, "
                        "e.g. autolab.stages.lm.RECIPE")
    return recipe
