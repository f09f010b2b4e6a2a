"""Language-model stage (pretraining; continued pretraining uses it too): next-token loss.

Manual optimisation: one step is forward, backward, global-norm clip, step of every optimiser,
with the learning rate set from the schedule first. It keeps several optimisers (Muon + AdamW)
in one step and counts steps itself (Lightning's global_step counts each optimiser's step).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from autolab.callbacks import Budget
from autolab.objectives import lm_loss
from autolab.optim import build_optimizers
from autolab.schedules import lr_at


class LMStage(L.LightningModule):
    def __init__(
        self, model: torch.nn.Module, optim: DictConfig, schedule: DictConfig, budget: Budget,
        grad_clip: float, compile: bool = False,
    ):
        super().__init__()
        self.model = model
        self.optim_cfg, self.schedule, self.budget, self.grad_clip = optim, schedule, budget, grad_clip
        self.automatic_optimization = False
        self.current_lr = 0.0
        # Only the loss is compiled (cast, model, cross-entropy in one graph): compiling the whole
        # module would make Lightning compile training_step, whose Python step counters recompile.
        self.batch_loss = torch.compile(self._batch_loss) if compile else self._batch_loss

    def _batch_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of packed rows [B, T + 1]."""
        batch = batch.long()
        return lm_loss(self.model(input_ids=batch[:, :-1]).logits, batch[:, 1:])

    def configure_optimizers(self):
        return build_optimizers(self.model, self.optim_cfg, self.schedule.peak_lr)

    def _set_lr(self, optimizers) -> None:
        s = self.schedule
        self.current_lr = lr_at(
            self.budget.progress(), peak_lr=s.peak_lr, initial_lr=s.initial_lr,
            warmup=s.warmup, min_lr_ratio=s.min_lr_ratio,
        )
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = self.current_lr * group["lr_scale"]

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self._set_lr(optimizers)
        loss = self.batch_loss(batch)
        self.manual_backward(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    def extra_metrics(self, outputs: dict) -> dict:
        """Values the monitor logs beside the loss (read only on logging steps)."""
        return {"train/grad_norm": outputs["grad_norm"].item()}
