"""Ctrl-C (SIGINT) keeps the work: the first one finishes the step, writes the snapshot and ends the
run `interrupted` (exit 3), which `resume=<run dir>` continues; a second one stops at once, without
the snapshot (status `crash`, exit 1). preemption.py owns the signal.

    pytest tests/test_interrupt.py -q

A child started from a non-interactive shell or pytest may inherit SIGINT ignored: each train.py here
(conftest.start_train: a fork) starts with Python's own SIGINT handler, as from a terminal, or these tests
would test nothing.
"""

import os
import signal
from pathlib import Path

from conftest import TINY, output_until, run_train, start_train

from autolab import report, resume

RUN = [*TINY, "trainer.max_steps=30", "trainer.log_every=5", "logger=none"]


def test_ctrl_c_snapshots_the_step_exits_interrupted_and_resumes(tmp_path, cache):
    run_dir = tmp_path / "run"
    proc = start_train([*RUN, "trainer.snapshot_every_steps=7", f"hydra.run.dir={run_dir}"], tmp_path, cache)
    output_until(proc, f"step {10:6d}")
    os.kill(proc.pid, signal.SIGINT)
    code, output = proc.finish(120)
    assert "received SIGINT: snapshot at the end of this step, then stop" in output, output[-2000:]
    assert code == 3 and f"continue it with `python train.py resume={run_dir}`" in output, output[-2000:]
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["status"] == "interrupted" and row["output_dir"] == str(run_dir)
    step = int(row["num_steps"])
    assert 10 <= step < 14  # the snapshot of the step in progress, not the periodic one at 7
    assert resume.read_state(resume.find(run_dir))["step"] == step

    resumed = run_train([f"resume={run_dir}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {step}" in resumed.stdout
    assert report.parse_summary(resumed.stdout)["num_steps"] == "30"
    first, last = report.read_ledger(tmp_path / "results.tsv")[-2:]
    assert last["status"] == "ok"
    # the resumed row says which run it continued: its experiment and overrides, not `resume=`
    assert last["experiment"] == first["experiment"] == "quickstart" and last["overrides"] == first["overrides"]


def test_a_second_ctrl_c_stops_at_once_without_the_snapshot(tmp_path, cache):
    """Steps long enough (a 5.8M-parameter GPT on 16 rows of 256 tokens: over a second on a CPU core) that the
    second Ctrl-C, sent as soon as the first is acknowledged (within milliseconds), lands before the step and its
    snapshot are done."""
    run_dir = tmp_path / "run"
    slow = [*RUN, "data.seq_len=256", "data.batch_size=16", "model.n_layer=2", "model.n_head=4", "model.n_embd=256",
            "trainer.log_every=1", f"hydra.run.dir={run_dir}"]  # TINY's model steps too fast for two signals
    proc = start_train(slow, tmp_path, cache)
    output_until(proc, f"step {1:6d}")  # the first step done: the signals land in the second
    os.kill(proc.pid, signal.SIGINT)
    output = output_until(proc, "Ctrl-C again to stop at once")  # today's code: no such line, it just dies
    os.kill(proc.pid, signal.SIGINT)
    code, output = proc.finish(60)  # a bound, not a speed measurement: no snapshot, no evaluation to wait for
    assert code == 1, output[-2000:]
    assert resume.find(run_dir) is None  # the snapshot of the step was not written
    assert "received SIGINT again: stopping at once" in output and "Traceback" not in output, output[-2000:]
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["status"] == "crash" and row["output_dir"] == str(run_dir)


def _wandb_service_of(pid: int) -> int:
    """The W&B service process (wandb-core) that train.py `pid` started."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if "wandb-core" in Path(f"/proc/{child}/cmdline").read_text():
            return int(child)
    raise AssertionError(f"no wandb-core child of {pid}")


def _stop_at_step_5(run_dir: Path, cwd: Path, cache: Path, service_too: bool) -> tuple[int, str]:
    """A run with W&B (offline) sent SIGTERM at step 5; with `service_too`, its W&B service as well,
    as SLURM stops every process of a job (preemption, scancel, `scontrol requeue`): (code, output)."""
    proc = start_train([*TINY, "trainer.max_steps=30", "trainer.log_every=5", f"hydra.run.dir={run_dir}"], cwd, cache)
    output_until(proc, f"step {5:6d}")
    if service_too:
        os.kill(_wandb_service_of(proc.pid), signal.SIGTERM)
    os.kill(proc.pid, signal.SIGTERM)
    return proc.finish(120)


def test_an_interrupted_run_closes_its_wandb_run_with_its_status(tmp_path, cache):
    from wandb_records import summary

    code, output = _stop_at_step_5(tmp_path / "run", tmp_path, cache, service_too=False)
    assert code == 3 and "Traceback" not in output, output[-2000:]
    run_file = next((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert summary(run_file)["status"] == "interrupted"


def test_a_job_whose_wandb_service_was_stopped_with_it_ends_without_a_traceback(tmp_path, cache):
    """The requeued attempts of a SLURM job had W&B's `ConnectionResetError: Connection lost`
    traceback in their logs, twice (at the close, then in W&B's exit hook), and no summary block."""
    code, output = _stop_at_step_5(tmp_path / "run", tmp_path, cache, service_too=True)
    assert code == 3 and "Traceback" not in output, output[-2000:]
    said = [line for line in output.splitlines() if line.startswith("W&B:")]
    assert said and all(line.startswith("W&B: its service process was stopped with the job") for line in said)
    assert report.parse_summary(output)["status"] == "interrupted"  # the summary block is printed whole
