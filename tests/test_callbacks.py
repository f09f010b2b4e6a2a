"""The time budget stops training on time, and max_steps replaces it."""

import lightning as L
import torch
from omegaconf import OmegaConf

from autolab.callbacks import Budget, TimeBudget
from autolab.config import OptimConf
from autolab.data import PackedRows
from autolab.models import GPT, GPTConfig
from autolab.stages import LMStage

OPTIM = OmegaConf.structured(OptimConf(name="adamw", betas=[0.9, 0.95], eps=1e-8, weight_decay=0.0,
                                        embedding_lr_scale=1.0, head_lr_scale=1.0))
SCHEDULE = OmegaConf.create({"peak_lr": 1e-3, "initial_lr": 0.0, "warmup": 0.0, "min_lr_ratio": 0.1})


def _fit(budget: Budget, step_seconds: float = 0.0):
    import time

    class Slow(L.Callback):  # a known cost per step, so the stop can be checked against it
        def on_train_batch_end(self, *args):
            time.sleep(step_seconds)

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, max_position_embeddings=16))
    data = PackedRows(torch.randint(0, 64, (5000,), dtype=torch.int32), 16, 4, seed=0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=-1, logger=False, callbacks=[Slow(), TimeBudget(budget)],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(LMStage(model, OPTIM, SCHEDULE, budget, 1.0), torch.utils.data.DataLoader(data, batch_size=None))


def test_time_budget_stops_after_the_budget_and_within_one_step():
    budget = Budget(seconds=1.0, untimed_steps=3)
    _fit(budget, step_seconds=0.1)
    assert budget.training_seconds >= 1.0
    assert budget.training_seconds < 1.0 + 0.1 + 0.1  # at most one step (plus its own overhead) over
    assert 3 < budget.steps <= 3 + 11  # the untimed warm-up steps are not counted (fewer steps on a busy machine)
    assert budget.progress() == 1.0


def test_max_steps_replaces_the_time_budget():
    budget = Budget(seconds=1e9, max_steps=7)
    _fit(budget)
    assert budget.steps == 7
