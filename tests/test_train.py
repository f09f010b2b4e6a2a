"""train.py end to end, in subprocesses, as a user runs it: summary, ledger, W&B files, checkpoint,
multirun, Hydra's own behaviour, and bad input."""

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_train
from transformers import AutoModelForCausalLM

import autolab.models  # noqa: F401  registers autolab_gpt with the Auto classes, as the README shows
import wandb_records
from autolab import report


def _run_dir(summary: dict) -> Path:
    return Path(summary["output_dir"])


def test_quickstart_writes_summary_ledger_wandb_and_checkpoint(tmp_path, cache):
    r = run_train([*TINY, "description=smoke test"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = report.parse_summary(r.stdout)
    lines = r.stdout.rstrip().splitlines()
    block = lines[len(lines) - 1 - lines[::-1].index("---"):]
    assert all(": " in line for line in block[1:]) and len(block) > len(report.SUMMARY_KEYS)  # the block ends the output
    for key in report.SUMMARY_KEYS:
        assert key in summary
    assert summary["num_steps"] == "4" and summary["status"] == "ok" and len(summary["tokenizer"]) == 12
    assert 0 < float(summary["val_bpb"]) < 20 and summary["mfu_percent"] == "n/a"  # CPU: no peak

    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["status"] == "ok" and row["experiment"] == "quickstart" and row["stage"] == "pretrain"
    assert row["description"] == "smoke test" and row["val_bpb"] == summary["val_bpb"]

    run_file = next(_run_dir(summary).glob("wandb/offline-run-*/run-*.wandb"))
    history = wandb_records.history(run_file)
    assert [h["trainer/global_step"] for h in history] == [2, 4]
    assert all(math.isfinite(h["train/loss"]) and h["train/lr"] >= 0 for h in history)
    assert "perf/tokens_per_sec" in history[-1]
    assert f"{wandb_records.summary(run_file)['val_bpb']:.6f}" == summary["val_bpb"]
    assert wandb_records.config(run_file)["description"] == "smoke test"

    model = AutoModelForCausalLM.from_pretrained(_run_dir(summary) / "checkpoint")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(float(summary["num_params_M"]), abs=0.01)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 8192)


def test_local_multirun_gives_each_job_its_own_row_and_wandb_run(tmp_path, cache):
    r = run_train(["-m", *TINY, "optim.weight_decay=0.0,0.2", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = report.read_ledger(tmp_path / "results.tsv")
    assert [row["status"] for row in rows] == ["ok", "ok"]
    run_files = sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 2 and run_files[0].name != run_files[1].name
    decays = [wandb_records.config(f)["optim"]["weight_decay"] for f in run_files]
    assert sorted(decays) == [0.0, 0.2]


def test_sweep_file_runs_as_a_multirun(tmp_path, cache):
    root = Path(__file__).resolve().parents[1]
    ledger = tmp_path / "results.tsv"
    args = ["-m", *TINY, "logger=none", "+sweeps=lr", f"ledger={ledger}", f"hydra.sweep.dir={tmp_path}/sweep"]
    r = run_train(args, root, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(report.read_ledger(ledger)) == 3


def test_cfg_job_and_unknown_key_behave_as_hydra(tmp_path, cache):
    r = run_train(["+experiment=quickstart", "--cfg", "job"], tmp_path, cache)
    assert r.returncode == 0 and "n_embd: 128" in r.stdout and "peak_lr: 0.003" in r.stdout
    r = run_train(["+experiment=quickstart", "optim.no_such_key=1"], tmp_path, cache)
    assert r.returncode != 0 and "no_such_key" in r.stderr
    r = run_train(["+experiment=no_such_experiment"], tmp_path, cache)
    assert r.returncode != 0 and "no_such_experiment" in r.stderr


def test_missing_corpus_is_one_line_and_keeps_earlier_rows(tmp_path, cache):
    report.append_row(tmp_path / "results.tsv", {"stage": "earlier", "status": "ok"})
    r = run_train([*TINY, "logger=none"], tmp_path, cache, env={"AUTOLAB_CACHE": str(tmp_path / "empty")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "python prepare.py" in r.stderr
    assert "Traceback" not in r.stderr
    rows = report.read_ledger(tmp_path / "results.tsv")
    assert [row["stage"] for row in rows] == ["earlier", "pretrain"] and rows[1]["status"] == "invalid"


def test_nan_loss_ends_as_diverged_row_and_nonzero_exit(tmp_path, cache):
    r = run_train([*TINY, "logger=none", "schedule.peak_lr=1e30", "schedule.warmup=0"], tmp_path, cache)
    assert r.returncode == report.exit_code("diverged") == 4 and "diverged:" in r.stderr and "Traceback" not in r.stderr
    assert report.parse_summary(r.stdout)["status"] == "diverged"
    assert report.read_ledger(tmp_path / "results.tsv")[-1]["status"] == "diverged"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_default_experiment_on_cpu_points_to_quickstart(tmp_path, cache):
    r = run_train(["logger=none"], tmp_path, cache)
    assert r.returncode == 2 and "+experiment=quickstart" in r.stderr and "Traceback" not in r.stderr
