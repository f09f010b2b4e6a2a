"""Where a step's time goes, from inside a real run: `trainer.profile_steps=N` traces N training
steps with torch.profiler on every rank, after the untimed ones (compilation) and as many again
(warm-up), and writes into the run dir:

- `profile_rank{r}.json.gz`: the chrome trace, CPU and GPU timelines (open in https://ui.perfetto.dev
  or chrome://tracing);
- `profile_rank{r}.txt`: the 30 operations and kernels that took the most GPU time (CPU time on a
  CPU).

The traced steps run slower than the others and count in the time budget, so profile a run whose
speed you are not also reporting. benchmarks/ddp_step.py traces its loops with `tracer`.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile, schedule


def tracer(steps: int, stem: Path) -> profile:
    """A torch.profiler for CPU and, where there is one, the GPU, that traces `steps` steps after
    one of warm-up and saves them to `stem`.*; call its step() after every step, and synchronise the
    GPU before the last one, so that the last step's kernels are in the trace."""
    cuda = torch.cuda.is_available()
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                   schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                   on_trace_ready=lambda prof: save(prof, stem))


def save(prof: profile, stem: Path) -> None:
    """`stem`.json.gz (the chrome trace) and `stem`.txt (operations by GPU, else CPU, time)."""
    trace = stem.with_suffix(".json")
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as f, gzip.open(f"{trace}.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    trace.unlink()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    stem.with_suffix(".txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=80) + "\n")


class Profile(L.Callback):
    """Traces `steps` steps of this process from step 2 x `untimed_steps` on (counted from its first
    step, resumed or not; the step before them warms the profiler up) into out/profile_rank{rank}.*"""

    def __init__(self, steps: int, untimed_steps: int, out: Path, rank: int):
        self.steps, self.start, self.stem = steps, max(2 * untimed_steps, 1), out / f"profile_rank{rank}"
        self.seen = 0
        self.prof: profile | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.start - 1:
            self.prof = tracer(self.steps, self.stem)
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.prof is None:
            return
        last = self.seen == self.start + self.steps
        if last and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.step()  # after the last traced step: saved
        if last:
            self.stop()

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop()  # the run ended (budget, signal) within the traced steps: what was traced is saved

    def stop(self) -> None:
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.prof = None
