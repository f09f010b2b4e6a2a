"""What every training stage shares: optimisers, the LR schedule as a function of progress, one
optimisation step (backward, global-norm clip, every optimiser), and restoring a resumed run.

Manual optimisation keeps several optimisers (Muon + AdamW) in one step and lets the stage count
steps itself (Lightning's global_step counts each optimiser's step).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from autolab import distributed, resume
from autolab.callbacks import Budget
from autolab.optim import build_optimizers
from autolab.schedules import lr_at


class OptimisedStage(L.LightningModule):
    def __init__(self, model: torch.nn.Module, optim: DictConfig, schedule: DictConfig, budget: Budget,
                 grad_clip: float, restore: dict | None = None):
        super().__init__()
        self.model = model
        self.optim_cfg, self.budget, self.grad_clip = optim, budget, grad_clip
        # lr_at's keywords, read out of OmegaConf once: 46 us a step through it, 0.8 us from a dict
        self.schedule = dict(schedule)
        self.restore = restore  # optimiser and RNG states of a resumed run, applied at train start
        self.automatic_optimization = False
        self.current_lr = 0.0

    def configure_model(self) -> None:
        if self.device_mesh is not None:  # trainer.strategy=fsdp: Lightning's ModelParallelStrategy
            distributed.shard(self.model, self.device_mesh["data_parallel"])

    def configure_optimizers(self):
        return build_optimizers(self.model, self.optim_cfg, self.schedule["peak_lr"])

    def all_optimizers(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def on_train_start(self) -> None:
        if self.restore:
            # the raw optimisers: Lightning's wrappers hold a copy of their __dict__, so state loaded
            # into a wrapper would never reach the optimiser that steps
            for opt, state in zip(self.trainer.optimizers, self.restore["optimizers"]):
                distributed.load_optimizer_state(self.model, opt, state)
            resume.set_rng_state(self.restore["rng"])

    def set_lr(self) -> None:
        self.current_lr = lr_at(self.budget.progress(), **self.schedule)
        for opt in self.all_optimizers():
            for group in opt.param_groups:
                group["lr"] = self.current_lr * group["lr_scale"]

    def optimise(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip the global gradient norm, step and zero every optimiser; returns the norm."""
        self.manual_backward(loss)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or float("inf"))
        for opt in self.all_optimizers():
            opt.step()
            opt.zero_grad(set_to_none=True)
        return grad_norm

    def optimizer_states(self) -> list[dict]:
        """Every optimiser's state, for a snapshot (a sharded model's: gathered, every rank calls)."""
        return [distributed.optimizer_state(self.model, opt) for opt in self.trainer.optimizers]

    def extra_metrics(self, outputs: dict) -> dict:
        """Values the monitor logs beside the loss (read back only on logging steps; every rank calls it): the
        gradient norm (the same on every rank) and the step's `metrics` (tensors, under TRL's names), each as
        train/<name>, averaged over the ranks' equal slices of the batch in one collective, as TRL's gathered
        means are."""
        metrics = outputs.get("metrics", {})
        logged = {"train/grad_norm": outputs["grad_norm"].item()}
        if metrics:
            values = torch.stack([v.detach().float().to(self.device) for v in metrics.values()])
            if self.trainer.world_size > 1:
                values = self.trainer.strategy.reduce(values, reduce_op="mean")
            logged.update(zip((f"train/{k}" for k in metrics), values.tolist()))
        return logged

    def snapshot_state(self) -> dict:
        """Stage counters a snapshot keeps (beyond weights, optimisers, data and budget)."""
        return {}

    def load_snapshot_state(self, state: dict) -> None:
        pass


class PairStage(OptimisedStage):
    """A stage trained on batches of preference pairs (DPO, the reward model): its `pair_loss(batch)` gives
    (mean loss, metrics under TRL's names as tensors, (chosen rewards, rejected rewards))."""

    def pair_loss(self, batch: dict) -> tuple[torch.Tensor, dict, tuple]:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        self.set_lr()
        loss, metrics, _ = self.pair_loss(batch)
        grad_norm = self.optimise(loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm, "metrics": metrics}


def pair_batches(model: torch.nn.Module, pairs, batch_size: int, device, ref: dict | None = None, pad_id: int = 0):
    """Every pair once, in order, as batches on `device`, with `model` in eval mode, no gradients, bf16
    autocast on a GPU, then back in train mode (the pair stages measure before and after training):
    (number of pairs, batch)."""
    from autolab.data.preference import collate

    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            for start in range(0, len(pairs), batch_size):
                index = list(range(start, min(start + batch_size, len(pairs))))
                yield len(index), {k: v.to(device) for k, v in collate(pairs, index, ref, pad_id=pad_id).items()}
    finally:
        model.train()

