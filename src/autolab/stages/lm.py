"""Language-model stage (pretraining and continued pretraining): next-token loss.

Manual optimisation: one step is forward, backward, global-norm clip, step of every optimiser,
with the learning rate set from the schedule first. It keeps several optimisers (Muon + AdamW)
in one step and counts steps itself (Lightning's global_step counts each optimiser's step).
Continued pretraining uses this stage unchanged: a fresh optimiser state, the schedule re-warmed
from progress 0, and batches that may mix in replay rows (the share is reported per step).
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from autolab import resume
from autolab.callbacks import Budget
from autolab.objectives import lm_loss
from autolab.optim import build_optimizers
from autolab.schedules import lr_at


class LMStage(L.LightningModule):
    def __init__(
        self, model: torch.nn.Module, optim: DictConfig, schedule: DictConfig, budget: Budget,
        grad_clip: float, compile: bool = False, restore: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.optim_cfg, self.schedule, self.budget, self.grad_clip = optim, schedule, budget, grad_clip
        self.restore = restore  # optimiser and RNG states of a resumed run, applied at train start
        self.automatic_optimization = False
        self.current_lr = 0.0
        self.replay_rows = self.rows = 0
        # Only the loss is compiled (cast, model, cross-entropy in one graph): compiling the whole
        # module would make Lightning compile training_step, whose Python step counters recompile.
        self.batch_loss = torch.compile(self._batch_loss) if compile else self._batch_loss

    def _batch_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of packed rows [B, T + 1]."""
        tokens = tokens.long()
        return lm_loss(self.model(input_ids=tokens[:, :-1]).logits, tokens[:, 1:])

    def configure_optimizers(self):
        return build_optimizers(self.model, self.optim_cfg, self.schedule.peak_lr)

    def all_optimizers(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def on_train_start(self) -> None:
        if self.restore:
            # the raw optimisers: Lightning's wrappers hold a copy of their __dict__, so state loaded
            # into a wrapper would never reach the optimiser that steps
            for opt, state in zip(self.trainer.optimizers, self.restore["optimizers"]):
                opt.load_state_dict(state)
            resume.set_rng_state(self.restore["rng"])

    def _set_lr(self, optimizers) -> None:
        s = self.schedule
        self.current_lr = lr_at(
            self.budget.progress(), peak_lr=s.peak_lr, initial_lr=s.initial_lr,
            warmup=s.warmup, min_lr_ratio=s.min_lr_ratio,
        )
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = self.current_lr * group["lr_scale"]

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        optimizers = self.all_optimizers()
        self._set_lr(optimizers)
        tokens = batch["tokens"]
        loss = self.batch_loss(tokens)
        self.manual_backward(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.rows += tokens.size(0)
        self.replay_rows += batch["replay_rows"]
        # replay_share: a host-side number (no sync), the measured share of this step's tokens
        return {"loss": loss.detach(), "grad_norm": grad_norm, "replay_share": batch["replay_rows"] / tokens.size(0)}

    def extra_metrics(self, outputs: dict) -> dict:
        """Values the monitor logs beside the loss (read only on logging steps)."""
        return {"train/grad_norm": outputs["grad_norm"].item()}
