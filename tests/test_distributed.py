"""Several processes, one run (autolab/distributed.py), on the CPU with gloo: two processes give what
one gives at the same global batch, write one row, one summary and one W&B run, resume after kill -9,
and a multirun of two-process jobs runs its jobs once each."""

import collections
import gzip
import json
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_train, same_run, start_and_signal, train_to_end
from test_dpo import DPO

from autolab import report

pytestmark = pytest.mark.slow

# a replay mixture, so both sources' positions are split over the ranks and resumed; snapshots every 7 steps
MIX = [*TINY, "data.batch_size=8", "trainer.max_steps=30", "trainer.log_every=4", "trainer.snapshot_every_steps=7",
       "replay.ratio=0.25", "replay.domain=code"]
# Two processes sum the gradient in another order than one: equal up to float rounding, which a
# few steps of AdamW keep far below this (measured: identical to 6 digits).
TOLERANCE = 1e-4


def _losses(stdout: str) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^step +(\d+) \| loss ([\d.]+)", stdout, re.M)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
    """The mixture on two processes, uninterrupted: (process result, run dir)."""
    return train_to_end(tmp_path_factory.mktemp("two"), cache, [*MIX, "trainer.devices=2", "trainer.profile_steps=2"])


def test_two_processes_write_one_run_that_matches_one_process(straight, tmp_path, cache):
    two, run_dir = straight
    one = run_train([*MIX, "logger=none", f"hydra.run.dir={tmp_path}/one"], tmp_path, cache)
    assert one.returncode == 0, one.stderr[-3000:]
    s1, s2 = report.parse_summary(one.stdout), report.parse_summary(two.stdout)
    assert "2 x cpu" in two.stdout and s2["status"] == "ok" and s1["num_steps"] == s2["num_steps"] == "30"
    assert abs(float(s1["val_bpb"]) - float(s2["val_bpb"])) <= TOLERANCE
    l1, l2 = _losses(one.stdout), _losses(two.stdout)  # the loss over both ranks' rows, every 4 steps
    assert l1.keys() == l2.keys() and all(abs(l1[k] - l2[k]) <= TOLERANCE for k in l1)
    assert s1["replay_share"] == s2["replay_share"] == "0.250000"  # the ratio holds over the global batch
    assert s1["total_tokens_M"] == s2["total_tokens_M"]  # data.batch_size is the global batch
    rows = [r for r in report.read_ledger(run_dir.parent / "results.tsv") if r["output_dir"] == str(run_dir)]
    assert len(rows) == 1 and rows[0]["status"] == "ok"  # rank 0's row only
    assert json.loads((run_dir / "summary.json").read_text())["num_steps"] == 30
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert "Traceback" not in (run_dir / "rank1.log").read_text()
    assert "step " not in (run_dir / "rank1.log").read_text()  # rank 0 alone prints progress
    for rank in (0, 1):  # trainer.profile_steps=2: each rank traced two steps (and the losses above held)
        trace = json.loads(gzip.decompress((run_dir / f"profile_rank{rank}.json.gz").read_bytes()))
        assert len({e["name"] for e in trace["traceEvents"] if e["name"].startswith("ProfilerStep#")}) == 2
        # per step one all-reduce (DDP's one bucket) and one broadcast (RankSync's, on the CPU): not
        # Lightning's GPU broadcast of its SIGTERM flag, a host-GPU sync every step (preemption.py)
        comms = collections.Counter(e["name"] for e in trace["traceEvents"] if e["name"].startswith("c10d::"))
        assert comms == {"c10d::allreduce_": 2, "c10d::broadcast_": 2}, comms
        assert "aten::mm" in (run_dir / f"profile_rank{rank}.txt").read_text()


def test_dpo_on_two_processes_matches_one(tmp_path, cache):
    """DDP and FSDP (the policy sharded; the reference precomputed) against one process, on 96 pairs."""
    args = [*DPO, "dpo.reference=precomputed", "dpo.max_length=60",  # its own reference cache (test_dpo counts on computing one)
            "dpo.max_train_pairs=96", "stage.measure_forgetting=false"]  # the keys compared below, not replay's
    one = run_train([*args, f"hydra.run.dir={tmp_path}/one"], tmp_path, cache)
    assert one.returncode == 0, one.stderr[-2000:]
    s1 = report.parse_summary(one.stdout)
    for strategy in ("ddp", "fsdp"):
        two = run_train([*args, "trainer.devices=2", f"trainer.strategy={strategy}", f"hydra.run.dir={tmp_path}/{strategy}"],
                        tmp_path, cache)
        assert two.returncode == 0, two.stderr[-2000:]
        s2 = report.parse_summary(two.stdout)
        for key in ("val_bpb", "reward_accuracy", "reward_margin", "preamble_prob"):
            assert abs(float(s1[key]) - float(s2[key])) <= TOLERANCE, (strategy, key)
    rows = report.read_ledger(tmp_path / "results.tsv")  # the experiment:quickstart base's, then one per run
    assert [r["output_dir"] for r in rows[-3:]] == [str(tmp_path / name) for name in ("one", "ddp", "fsdp")]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_signal_to_rank_0_then_resume_ends_as_the_straight_run(sig, straight, tmp_path, cache):
    """kill -9 of rank 0 takes rank 1 with it (PDEATHSIG); SIGTERM stops both ranks on the step it
    arrived, after a snapshot. `resume=` on two processes ends with bit-identical weights."""
    stopped = tmp_path / "stopped"
    code, output = start_and_signal([*MIX, "trainer.devices=2", f"hydra.run.dir={stopped}"], tmp_path, cache, sig, step=24)
    rank1 = (stopped / "rank1.log").read_text()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        time.sleep(1)
        assert not [p for p in Path("/proc").glob("[0-9]*") if _is_worker_of(p, stopped)]  # rank 1 died with it
        expected = "resuming at step 21"
    else:
        assert code == 3 and f"continue it with `python train.py resume={stopped}`" in output, output[-2000:]
        step = int(report.read_ledger(tmp_path / "results.tsv")[-1]["num_steps"])
        assert 24 <= step < 28 and "Traceback" not in rank1  # both stopped on that step, rank 1 cleanly
        expected = f"resuming at step {step}"
    resumed = run_train([f"resume={stopped}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert expected in resumed.stdout and "2 x cpu" in resumed.stdout
    same_run(straight, resumed, stopped)


def test_fsdp_matches_ddp_and_resumes_after_kill_9(straight, tmp_path, cache):
    """trainer.strategy=fsdp: the model sharded over the 2 processes. The same losses and val_bpb as
    DDP's run; snapshots and curves gather the shards to rank 0; kill -9, then resume bit-identical."""
    fsdp = [*MIX, "trainer.devices=2", "trainer.strategy=fsdp", "eval.curve_every=10"]
    (tmp_path / "whole").mkdir()
    whole = train_to_end(tmp_path / "whole", cache, fsdp)
    s_ddp, s_fsdp = report.parse_summary(straight[0].stdout), report.parse_summary(whole[0].stdout)
    assert abs(float(s_ddp["val_bpb"]) - float(s_fsdp["val_bpb"])) <= TOLERANCE
    l_ddp, l_fsdp = _losses(straight[0].stdout), _losses(whole[0].stdout)
    assert l_ddp.keys() == l_fsdp.keys() and all(abs(l_ddp[k] - l_fsdp[k]) <= TOLERANCE for k in l_ddp)
    # the snapshot's optimiser state was gathered from the shards: keyed by parameter names
    state = torch.load(whole[1] / "resume" / "state.pt", weights_only=True)
    assert "wte.weight" in state["optimizers"][0]["state"]
    assert len(_wandb_curve(whole[1])) == 3  # val/bpb at steps 10, 20, 30, measured on rank 0's gathered copy
    stopped = tmp_path / "stopped"
    code, _ = start_and_signal([*fsdp, f"hydra.run.dir={stopped}"], tmp_path, cache, signal.SIGKILL, step=24)
    assert code == -signal.SIGKILL
    resumed = run_train([f"resume={stopped}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 21" in resumed.stdout
    same_run(whole, resumed, stopped)


def _wandb_curve(run_dir: Path) -> list:
    from wandb_records import history

    run_file = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    return [row["val/bpb"] for row in history(run_file) if "val/bpb" in row]


def _is_worker_of(proc: Path, run_dir: Path) -> bool:
    try:
        return "autolab.worker" in (proc / "cmdline").read_text() and str(run_dir) in (proc / "cmdline").read_text()
    except OSError:
        return False


def test_multirun_of_two_process_jobs_runs_each_job_once(tmp_path, cache):
    """Lightning's own launcher would re-run the sweep in each child (hydra#2070): here 2 jobs x 2
    processes are 2 jobs, on the time budget (rank 0 decides the last step for both)."""
    sweep = tmp_path / "sweep"
    r = run_train(["-m", *TINY, "trainer.max_steps=null", "trainer.time_budget=3", "trainer.devices=2", "logger=none",
                   "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = report.read_ledger(tmp_path / "results.tsv")
    assert sorted(row["output_dir"] for row in rows) == [str(sweep / "0"), str(sweep / "1")]
    assert all(row["status"] == "ok" and int(row["num_steps"]) > 0 for row in rows)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.parametrize("args,message", [
    (["data.batch_size=5"], "data.batch_size=5 does not split over 2 processes: make it a multiple of 2"),
    (["trainer.num_nodes=2"], "trainer.num_nodes=2 needs one process per device started by SLURM"),
    (["trainer.strategy=fsdp", "optim=muon"], "optim.name=muon: Muon orthogonalises whole matrices, which FSDP shards"),
])
def test_a_world_that_cannot_be_is_one_line(args, message, tmp_path, cache):
    r = run_train([*TINY, "trainer.devices=2", "logger=none", *args], tmp_path, cache)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    assert report.read_ledger(tmp_path / "results.tsv")[-1]["status"] == "invalid"
