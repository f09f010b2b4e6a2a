"""One owner for the signals that end a job early: USR2 (submitit's warning before a time limit or a
preemption), SIGTERM (scancel, a preemption, `kill`) and SIGINT (Ctrl-C).

While a run is on, `Preemption` only notes the signal. At the end of the training step in progress
the run writes its resumable snapshot (callbacks.Snapshots), stops training, and `run` raises
`Interrupted`. Then `requeue()` hands over to submitit, when the job runs under it: submitit's own
USR2 handler pickles the job again (the launcher's checkpoint re-runs it with the same overrides,
hence in the same output dir, where the snapshot is found) and calls `scontrol requeue` (or, for a
local job, exits with the code its controller restarts). Outside submitit, or with no requeue left,
the run ends `interrupted` and `resume=<run dir>` continues it.

Lightning is kept out of it: its SLURM auto-requeue (USR1, a checkpoint of its own) is switched off
in run.py, and its SIGTERM handler, which Lightning installs for the length of `fit`, is replaced
by ours at train start (Lightning puts the previous handlers back after `fit`), and with it the
GPU broadcast of Lightning's SIGTERM flag that Lightning makes after every step.

Ctrl-C (SIGINT) is noted like SIGTERM: the run snapshots the step in progress and ends `interrupted`
(exit 3), resumable; it is never requeued. A second Ctrl-C stops at once: it raises KeyboardInterrupt
where the process stands (Lightning turns one raised inside `fit` into SystemExit(1), and
config.concise_errors one raised elsewhere), no snapshot is written, the ledger row says `crash` and
the process exits 1, a multirun included; the last periodic snapshot, if any, still resumes.
A terminal's Ctrl-C reaches every rank of a run on several processes: each notes it, and rank 0's
decision stops them all on the same step (distributed.RankSync). A process that was started with
SIGINT ignored (`nohup`, `cmd &` in a script) keeps ignoring it.
"""

from __future__ import annotations

import os
import signal

import lightning as L

from autolab.errors import first_line

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal, after writing its snapshot."""


class Preemption(L.Callback):
    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Preemption":
        owned = [*SIGNALS, *([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])]
        self._previous = {sig: signal.getsignal(sig) for sig in owned}
        self._install()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _install(self) -> None:
        for sig in self._previous:
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:  # the second Ctrl-C: stop where we stand
            os.write(2, b"received SIGINT again: stopping at once, without a snapshot of this step\n")  # safe in a handler
            raise KeyboardInterrupt
        first, self.received = self.received is None, signum  # noted before the print: a second signal can land inside it
        if first:
            again = " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT else ""
            print(f"received {signal.Signals(signum).name}: snapshot at the end of this step, then stop{again}", flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()  # Lightning registered its own SIGTERM handler when fit began
        # With several processes Lightning (2.6) broadcasts its SIGTERM flag from rank 0 on the GPU
        # after every step and reads it back: the host waits for the GPU once a step, so the GPU
        # idles while the next batch is fetched and launched (Lightning-AI/pytorch-lightning#21487;
        # the default GPT on 2 H200s: 61.6 ms a step with it, 58.7 without). Its flag is never set
        # with our handler in its place, and distributed.RankSync hands ours to every rank over gloo.
        loop = trainer.fit_loop.epoch_loop
        if hasattr(loop, "_broadcast_sigterm_tensor"):
            loop._broadcast_sigterm_tensor = lambda: None
        if self.received is not None:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None:
            trainer.should_stop = True  # callbacks.Snapshots, next in the list, writes the snapshot

    def raise_if_stopped(self, step: int) -> None:
        if self.received is not None:
            raise Interrupted(f"{signal.Signals(self.received).name} at step {step}")

    def requeue(self, before=lambda: None) -> SystemExit | None:
        """Requeue through submitit's own USR2 handler when this job runs under submitit. When it did,
        returns submitit's exit, which the caller raises once the attempt is recorded: the process
        must end without returning a result (a local job's controller restarts it on that exit code).
        A job a user cancelled (scancel) is not requeued: it ends `interrupted`, resumable by hand.
        `before()` runs just before the job is handed back, what must happen while every process of
        the job still runs: `scontrol requeue` makes SLURM stop them all (the W&B service's too)."""
        handler = self._previous.get(signal.SIGUSR2)
        if self.received == signal.SIGINT:  # a person pressed Ctrl-C: they meant stop, not requeue
            return None
        if getattr(handler, "__qualname__", "") != "SignalHandler.checkpoint_and_try_requeue":
            return None
        state, restarted = _slurm_job()
        if state.startswith("CANCELLED"):
            print(f"not requeued: the job was cancelled ({state})", flush=True)
            return None
        if restarted:  # SLURM has put it back in the queue itself: `scontrol requeue`, PreemptMode=REQUEUE
            print("requeued by SLURM", flush=True)
            before()
            return SystemExit(3)
        before()
        try:
            handler(signal.SIGUSR2, None)
        except SystemExit as done:  # submitit requeued the job and exits the process
            return done
        except Exception as e:  # no requeue left (max_num_timeout), or scontrol refused
            print(f"not requeued: {first_line(e)}", flush=True)
        return None


def _slurm_job() -> tuple[str, bool]:
    """(this SLURM job's state in the accounting: "CANCELLED by 0", "TIMEOUT", "PREEMPTED", "RUNNING"...;
    whether SLURM has requeued it since this attempt began), or ("", False) outside SLURM."""
    import re
    import subprocess

    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "", False

    def ask(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    state = ask(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"]).strip()
    restarts = re.search(r"\bRestarts=(\d+)", ask(["scontrol", "show", "job", "-o", job]))
    return state, bool(restarts) and int(restarts.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)
