"""Sweeps on a real SLURM cluster (scripts/slurm-local.sh; .ci/run starts it) and on local slots:
array sweeps, preemption and requeue, a crashing job, array parallelism, and bad input refused
before anything is submitted. CPU, the tiny model, `trainer.max_steps`."""

import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_train, start_train
from safetensors.torch import load_file

from autolab import report

pytestmark = pytest.mark.slow

JOB = [*TINY, "trainer.max_steps=6", "hydra.launcher.cpus_per_task=1"]
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=2",
         "hydra.launcher.timeout_min=60"]


def _cluster_up() -> bool:
    try:
        ok = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ok.returncode == 0 and ok.stdout.strip() != "" and acct.returncode == 0


@pytest.fixture(scope="module")
def slurm():
    """The local SLURM cluster, with accounting. CI starts it (AUTOLAB_SLURM_TESTS=required makes its
    absence a failure); elsewhere: `sudo bash scripts/slurm-local.sh up`, or these tests are skipped."""
    if not _cluster_up():
        if os.environ.get("AUTOLAB_SLURM_TESTS") == "required":
            pytest.fail("no SLURM cluster with accounting: run `bash scripts/slurm-local.sh up` first")
        pytest.skip("no SLURM cluster: `sudo bash scripts/slurm-local.sh up` to run these tests")


def _jobs_ran(ledger: Path, sweep: Path) -> list[dict]:
    return [r for r in report.read_ledger(ledger) if r["output_dir"].startswith(str(sweep))]


def test_array_sweep_ends_with_ok_rows_logs_and_report(slurm, tmp_path, cache):
    sweep = tmp_path / "sweep"
    r = run_train([*SLURM, *JOB, "logger=none", "optim.weight_decay=0,0.1", f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _jobs_ran(tmp_path / "results.tsv", sweep)
    assert sorted(row["status"] for row in rows) == ["ok", "ok"]
    array = {row["job_id"].split("_")[0] for row in rows}
    assert len(array) == 1 and sorted(row["job_id"].split("_")[1] for row in rows) == ["0", "1"]  # one array
    for row in rows:  # the row leads to the job's own log, which holds its summary
        assert Path(row["stdout"]).exists() and f"output_dir: {row['output_dir']}" in Path(row["stdout"]).read_text()
    names = subprocess.run(["sacct", "-n", "-X", "-j", array.pop(), "-o", "JobName%30"], capture_output=True, text=True)
    assert names.stdout.split() == ["quickstart", "quickstart"]  # what squeue shows: the experiment
    table = (sweep / "summary.md").read_text().splitlines()
    assert table[0] == "| optim.weight_decay | val_bpb | num_steps | status | job_id |" and len(table) == 4
    assert "| ok |" in table[2] and "| ok |" in table[3]


@pytest.mark.parametrize("tasks", [2, 1])
def test_two_process_jobs_leave_one_row_per_job(tasks, slurm, tmp_path, cache):
    """trainer.devices=2 in a job array, with hydra.launcher.tasks_per_node=2 (srun starts both ranks,
    SLURM_PROCID says which) or 1 (a task of 2 CPUs whose rank 0 starts rank 1): one row per job."""
    sweep = tmp_path / "sweep"
    r = run_train([*SLURM, *JOB, "logger=none", f"hydra.launcher.tasks_per_node={tasks}", "trainer.devices=2",
                   f"hydra.launcher.cpus_per_task={3 - tasks}", "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _jobs_ran(tmp_path / "results.tsv", sweep)
    assert sorted(row["status"] for row in rows) == ["ok", "ok"] and len({row["job_id"] for row in rows}) == 2
    for row in rows:
        task0 = Path(row["stdout"]).read_text()
        assert "2 x cpu" in task0 and "step " in task0  # rank 0 reports for both
        task1 = Path(row["stdout"].replace("_0_log.out", "_1_log.out"))
        assert task1.exists() == (tasks == 2) and (Path(row["output_dir"]) / "rank1.log").exists() == (tasks == 1)
        if tasks == 2:
            assert "step " not in task1.read_text()


def _job_log(sweep: Path, folder: str = "*", timeout: float = 180) -> tuple[str, Path]:
    """(job id, stdout log) of a job once it starts: folder "*_1" for task 1 of an array, "*" for a lone job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in sweep.glob(f".submitit/{folder}/*_0_log.out"):
            return log.parent.name, log
        time.sleep(0.5)
    raise AssertionError(f"no job {folder} started")


def _wait_for_line(log: Path, prefix: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(line.startswith(prefix) for line in log.read_text().splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError(f"no line {prefix!r} in {log}")


def test_preempted_job_requeues_and_ends_bit_identical(slurm, tmp_path, cache):
    """Two jobs of one config; one gets USR2 (what submitit and a preemption send) mid-run: it
    snapshots, requeues itself, resumes in the same dir and W&B run, and ends with the same weights."""
    sweep = tmp_path / "sweep"
    args = [*SLURM, *JOB, "trainer.max_steps=200", "trainer.log_every=10", "trainer.snapshot_every_steps=25",
            "description=straight,interrupted", f"hydra.sweep.dir={sweep}"]
    sweep_proc = start_train(args, tmp_path, cache)
    job, log = _job_log(sweep, "*_1")
    _wait_for_line(log, "step     60")  # past the snapshot at step 50
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    code, out = sweep_proc.finish(400)
    assert code == 0, out[-3000:]

    rows = _jobs_ran(tmp_path / "results.tsv", sweep)
    by_dir: dict[str, list[str]] = {}
    for row in rows:
        by_dir.setdefault(row["description"], []).append(row["status"])
    assert by_dir == {"straight": ["ok"], "interrupted": ["requeued", "ok"]}  # one ok row per job
    err = log.with_suffix(".err").read_text()  # both attempts': requeue is normal operation, its logs are clean
    step = re.search(r"interrupted: SIGUSR2 at step (\d+), snapshot written", err)
    assert step and int(step.group(1)) >= 60
    assert "Traceback" not in err and "W&B:" not in err, err[-3000:]  # W&B closed before `scontrol requeue`
    assert f"resuming at step {step.group(1)}" in log.read_text()  # the requeued attempt, from the step it stopped at

    straight, interrupted = (sweep / "0" / "checkpoint", sweep / "1" / "checkpoint")
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical
    finals = [r for r in rows if r["status"] == "ok"]
    assert finals[0]["val_bpb"] == finals[1]["val_bpb"] and finals[0]["num_steps"] == finals[1]["num_steps"] == "200"
    runs = list((sweep / "1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # two attempts, one W&B run
    from wandb_records import summary  # the first attempt closed its W&B run itself, before the requeue

    assert summary(next(min(runs).glob("run-*.wandb")))["status"] == "requeued"


def _oom_kill(job: str) -> None:
    """SIGKILL the job's Python process, as the out-of-memory killer does: no chance to write anything."""
    pids = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, check=True).stdout.split()
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        args = cmdline.read_bytes().split(b"\0") if pid.isdigit() and cmdline.exists() else [b""]
        if Path(args[0].decode()).name.startswith("python") and b"submitit.core._submit" in args:  # not srun
            os.kill(int(pid), 9)
            return
    raise AssertionError(f"no Python process in job {job}: {pids}")


@pytest.mark.parametrize("how, statuses", [
    ("scancel", ["interrupted"]),  # a user's cancel: a snapshot, no requeue, `resume=` continues it
    ("oom", ["lost"]),  # no row from the job: the launcher writes one
])
def test_a_cancelled_or_killed_job_leaves_one_row_and_the_sweep_reports(how, statuses, slurm, tmp_path, cache):
    sweep = tmp_path / "sweep"
    sweep_proc = start_train([*SLURM, *JOB, "logger=none", "trainer.max_steps=400", "trainer.log_every=10",
                              f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    job, log = _job_log(sweep)
    _wait_for_line(log, "step     20")
    subprocess.run(["scancel", job], check=True) if how == "scancel" else _oom_kill(job)
    code, out = sweep_proc.finish(300)
    assert code == 0, out[-3000:]
    rows = _jobs_ran(tmp_path / "results.tsv", sweep)
    assert [(r["status"], r["job_id"], r["stdout"]) for r in rows] == [(s, job, str(log)) for s in statuses]
    assert f"| {statuses[-1]} |" in (sweep / "summary.md").read_text()
    if how == "scancel":
        assert "not requeued: the job was cancelled (CANCELLED by" in log.read_text()
        assert (sweep / "0" / "resume" / "state.pt").exists() and not (sweep / "0" / "checkpoint").exists()
    else:
        assert "ended without a result" in out


@pytest.fixture(scope="module")
def sequential_sweep(slurm, tmp_path_factory, cache):
    """Two jobs, one of which diverges (NaN loss: it raises), with array parallelism 1."""
    tmp = tmp_path_factory.mktemp("sequential")
    sweep = tmp / "sweep"
    r = run_train([*SLURM, *JOB, "logger=none", "schedule.warmup=0", "schedule.peak_lr=3e-3,1e30",
                   "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep}"], tmp, cache)
    return r, _jobs_ran(tmp / "results.tsv", sweep), sweep


def test_a_raising_job_leaves_its_row_and_the_other_finishes(sequential_sweep):
    r, rows, sweep = sequential_sweep
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(row["status"] for row in rows) == ["diverged", "ok"]  # the NaN loss raised DivergenceError
    failed = next(row for row in rows if row["status"] == "diverged")
    assert "diverged: training loss" in Path(failed["stderr"]).read_text()
    assert "| diverged |" in (sweep / "summary.md").read_text()


def test_array_parallelism_one_runs_jobs_one_at_a_time(sequential_sweep):
    _, rows, _ = sequential_sweep
    array = rows[0]["job_id"].split("_")[0]
    sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,Start,End"],
                           capture_output=True, text=True, check=True).stdout.split()
    spans = sorted(line.split("|")[1:] for line in sacct)
    assert len(spans) == 2 and spans[1][0] >= spans[0][1]  # the second started after the first ended


@pytest.mark.parametrize("case, args, env, message", [
    ("partition", ["hydra.launcher.partition=nope"], {}, "hydra.launcher.partition=nope: this cluster has no such partition"),
    ("gpus", ["hydra.launcher.gpus_per_node=1"], {}, "has no GPUs"),
    ("sbatch", [], {"PATH": "/nonexistent"}, "sbatch is not on PATH"),
])
def test_bad_cluster_input_is_one_line_before_submitting(case, args, env, message, slurm, tmp_path, cache):
    before = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True).stdout.split()
    r = run_train([*SLURM, *JOB, "logger=none", *args, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, cache, env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {r.stderr.split('error: ', 1)[1].strip()}"]
    assert message in r.stderr and "Traceback" not in r.stderr
    after = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True).stdout.split()
    assert after == before and not (tmp_path / "sweep").exists()  # nothing was submitted, nor made


@pytest.mark.parametrize("launcher, env, message", [
    ("slurm", {"PATH": "/nonexistent"}, "sbatch is not on PATH"),
    ("local", {"CUDA_VISIBLE_DEVICES": ""}, "hydra.launcher.gpus_per_node=1 but this machine shows 0 GPUs"),
])
def test_a_refused_launch_leaves_no_sweep_folder(launcher, env, message, tmp_path, cache):
    """No cluster needed: the launcher refuses before Hydra's sweeper makes multirun/<date>/<time>/."""
    r = run_train(["-m", f"hydra/launcher={launcher}", "hydra.launcher.gpus_per_node=1", *JOB, "logger=none",
                   "optim.weight_decay=0,0.1"], tmp_path, cache, env=env)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "results.tsv").exists()


def test_slurm_without_accounting_is_refused(slurm, tmp_path, cache):
    """submitit follows job states through sacct: without accounting, a killed job hangs the sweep."""
    script = ["bash", str(ROOT / "scripts" / "slurm-local.sh"), "up"]
    subprocess.run(script, env={**os.environ, "SLURM_LOCAL_ACCOUNTING": "0"}, check=True, capture_output=True)
    try:
        r = run_train([*SLURM, *JOB, "logger=none", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, cache)
    finally:
        subprocess.run(script, check=True, capture_output=True)
    assert r.returncode == 2 and "SLURM accounting is off" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_local_slots_run_jobs_side_by_side(tmp_path, cache):
    """hydra/launcher=local with 2 slots: 3 jobs, at most 2 at once, every one with its row."""
    sweep = tmp_path / "sweep"
    r = run_train(["-m", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.slots=2", *JOB,
                   "logger=none", "optim.weight_decay=0,0.1,0.2", f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "running 3 jobs, 2 at a time" in r.stdout
    rows = _jobs_ran(tmp_path / "results.tsv", sweep)
    assert sorted(row["status"] for row in rows) == ["ok"] * 3 and len({row["job_id"] for row in rows}) == 3
    spans = []  # (its process started: submitit's first log line, ended: its summary is written)
    for row in rows:  # not the run's started_at: that comes after seconds of imports, longer than a tiny run
        started = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\)", Path(row["stdout"]).read_text())[1]
        spans.append((datetime.strptime(started, "%Y-%m-%d %H:%M:%S,%f").timestamp(),  # local time, as logging writes it
                      (Path(row["output_dir"]) / "summary.json").stat().st_mtime))
    spans.sort()
    assert spans[1][0] < spans[0][1]  # the second started before the first ended: side by side
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # the third waited until a slot was free
