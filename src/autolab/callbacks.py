"""Lightning callbacks: the time budget, the divergence guard, throughput and MFU, progress lines,
validation curves on small fixed slices, and resumable snapshots.

Nothing here syncs with the GPU per step: the loss is summed on the device and read back once
every `log_every` steps, which is also when divergence is checked and metrics are logged.
Evaluation and snapshot writing run inside `TimeBudget.untimed()`: they are not training time.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

from autolab import resume
from autolab.errors import DivergenceError


class Budget:
    """Training time and steps spent so far. Progress is the fraction of max_steps when given,
    else of the time budget. The first `untimed_steps` (compilation, warm-up) are not counted."""

    def __init__(self, seconds: float, max_steps: int | None = None, untimed_steps: int = 0):
        self.seconds, self.max_steps, self.untimed_steps = seconds, max_steps, untimed_steps
        self.steps = 0
        self.training_seconds = 0.0

    def progress(self) -> float:
        if self.max_steps:
            return min(self.steps / self.max_steps, 1.0)
        return min(self.training_seconds / self.seconds, 1.0)

    def done(self) -> bool:
        return self.progress() >= 1.0

    def state_dict(self) -> dict:
        return {"steps": self.steps, "training_seconds": self.training_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.training_seconds = state["steps"], state["training_seconds"]


class TimeBudget(L.Callback):
    """Counts steps and training time (wall time between step ends) and stops at the budget."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self._last = 0.0
        self.first_step_at: float | None = None  # wall-clock time the first step of this process ended

    @contextmanager
    def untimed(self):
        """Work inside this block (evaluation, checkpoints) is left out of the training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._last += time.perf_counter() - start

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = time.time()
        self.budget.steps += 1
        if self.budget.steps > self.budget.untimed_steps:
            self.budget.training_seconds += now - self._last
        self._last = now
        if self.budget.done():
            trainer.should_stop = True


PEAK_BF16_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, from its name; None where unknown (the CPU): MFU is then n/a."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


class Monitor(L.Callback):
    """Every `every` steps: reads the mean loss over all ranks (one host sync), stops on NaN or explosion,
    logs loss, learning rate, tokens/s, MFU and the step outputs' host-side numbers (window means,
    e.g. the measured replay share) to the loggers, and prints one progress line."""

    def __init__(
        self,
        budget: Budget,
        every: int,
        per_step: int,
        flops_per_unit: float | None,
        peak: float | None,
        max_loss_ratio: float | None = 2.0,
        unit: str = "tokens",
    ):
        self.budget, self.every, self.unit = budget, every, unit
        self.per_step, self.flops_per_unit, self.peak = per_step, flops_per_unit, peak
        self.max_loss_ratio = max_loss_ratio
        self.reference_loss: float | None = None
        self._sum, self._n, self._host = None, 0, {}
        self._mark = (0, 0.0)  # (timed steps, training seconds) at the last log
        self._tty = sys.stdout.isatty()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"]
        self._sum = loss if self._sum is None else self._sum + loss
        self._n += 1
        for k, v in outputs.items():
            if isinstance(v, float):
                self._host[k] = self._host.get(k, 0.0) + v
        if self.budget.steps % self.every and not trainer.should_stop:
            return
        mean = trainer.strategy.reduce(self._sum / self._n, reduce_op="mean").item()  # over every rank's rows
        host = {f"train/{k}": v / self._n for k, v in self._host.items()}
        self._sum, self._n, self._host = None, 0, {}
        if not math.isfinite(mean) or (  # max_loss_ratio None: a loss without a scale, only NaN stops it
            self.reference_loss is not None and self.max_loss_ratio is not None
            and mean > self.max_loss_ratio * self.reference_loss
        ):
            raise DivergenceError(
                f"training loss {mean:.4g} at step {self.budget.steps} is not finite or exploded "
                f"(first logged loss {self.reference_loss}): lower the learning rate"
            )
        if self.reference_loss is None:
            self.reference_loss = mean
        metrics = {"train/loss": mean, "train/lr": pl_module.current_lr, "progress": self.budget.progress()}
        metrics.update(host)
        metrics.update(self._rates())
        metrics.update(pl_module.extra_metrics(outputs))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.budget.steps)
        if trainer.is_global_zero:
            self._print(metrics, final=trainer.should_stop, shown=getattr(pl_module, "progress_keys", ()))

    def _rates(self) -> dict:
        timed = max(self.budget.steps - self.budget.untimed_steps, 0)
        steps, seconds = timed - self._mark[0], self.budget.training_seconds - self._mark[1]
        self._mark = (timed, self.budget.training_seconds)
        if steps <= 0 or seconds <= 0:
            return {}
        rate = steps * self.per_step / seconds
        out = {f"perf/{self.unit}_per_sec": rate}
        if self.peak and self.flops_per_unit:
            out["perf/mfu_percent"] = 100 * rate * self.flops_per_unit / self.peak
        return out

    def _print(self, m: dict, final: bool, shown: tuple = ()) -> None:
        """`shown`: more of the logged values for the line (a stage's `progress_keys`, e.g. GRPO's train/reward)."""
        b = self.budget
        total = f"{b.max_steps} steps" if b.max_steps else f"{b.seconds:.0f}s"
        mfu = f"mfu {m['perf/mfu_percent']:.1f}% | " if "perf/mfu_percent" in m else ""
        extra = "".join(f"{k.rsplit('/', 1)[-1]} {m[k]:.4f} | " for k in shown if k in m)
        line = (
            f"step {b.steps:6d} | loss {m['train/loss']:.4f} | {extra}lr {m['train/lr']:.2e} | "
            f"{m.get(f'perf/{self.unit}_per_sec', 0):9,.0f} {'tok' if self.unit == 'tokens' else self.unit}/s | {mfu}"
            f"{b.training_seconds:6.1f}s of {total} ({b.progress():4.0%})"
        )
        if self._tty:  # one line that updates in place; a log file gets plain lines instead
            print("\r" + line, end="\n" if final else "", flush=True)
        else:
            print(line, flush=True)

    def state_dict(self) -> dict:
        return {"reference_loss": self.reference_loss}

    def load_state_dict(self, state: dict) -> None:
        self.reference_loss = state["reference_loss"]


class Curves(L.Callback):
    """Every `every` steps, evaluate each named function of the model (bpb on a small fixed slice
    of a domain's validation text) and log it: cheap curves of adaptation and forgetting."""

    def __init__(self, timer: TimeBudget, every: int, evaluators: dict[str, Callable],
                 whole: Callable = lambda model: model):
        self.timer, self.every, self.evaluators = timer, every, evaluators
        self.whole = whole  # a sharded model: every rank gathers, rank 0 gets the whole one (others None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every or not self.evaluators or self.timer.budget.steps % self.every:
            return
        with self.timer.untimed():
            model = self.whole(pl_module.model)
            if model is None:
                return
            copy = model is not pl_module.model  # rank 0's whole copy of a sharded model, kept on the CPU
            model.to(pl_module.device)
            metrics = {name: fn(model) for name, fn in self.evaluators.items()}
            if copy:
                model.cpu()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.timer.budget.steps)


class Snapshots(L.Callback):
    """Writes a resumable snapshot every `every_steps` steps or `every_minutes` minutes of wall time,
    and once more when training ends, outside the training time.

    A sharded model (FSDP) is snapshotted by every rank together: `agree` hands rank 0's decision to
    all, `whole` gathers the weights into rank 0's copy, and rank 0 (`write`) writes."""

    def __init__(self, out: Path, timer: TimeBudget, monitor: Monitor, every_steps: int,
                 every_minutes: float, extra: Callable[[], dict], write: bool = True,
                 agree: Callable[[bool], bool] = bool, whole: Callable = lambda model: model):
        self.out, self.timer, self.monitor = out, timer, monitor
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60
        self.extra, self.write, self.agree, self.whole = extra, write, agree, whole
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = self.timer.budget.steps
        due = (self.every_steps and step % self.every_steps == 0) or (
            self.every_seconds and time.monotonic() - self._last >= self.every_seconds
        )
        if not self.agree(due or trainer.should_stop):
            return
        with self.timer.untimed():
            model = self.whole(pl_module.model)
            state = {
                "step": step,
                "optimizers": pl_module.optimizer_states(),
                "budget": self.timer.budget.state_dict(),
                "data": batch["state"],  # the position after this step's batch
                "rng": resume.rng_state(),
                "monitor": self.monitor.state_dict(),
                **self.extra(),
            }
            if self.write:
                resume.save(self.out, model, state)
        self._last = time.monotonic()
