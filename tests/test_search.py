"""Adaptive waves (hydra/sweeper=optuna, sweeps/search_lr.yaml) end to end on the CPU, and the
local launcher on a machine without GPUs: train.py in a subprocess, the tiny model, a few steps.

    pytest tests/test_search.py -q
"""

import json
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_train
from omegaconf import OmegaConf

from autolab import report

pytestmark = pytest.mark.slow

JOB = [*TINY, "trainer.max_steps=2", "logger=none"]
SWEEPS = f"hydra.searchpath=[file://{ROOT}]"  # +sweeps=NAME from a folder other than the repo root


def _rows(ledger: Path, sweep: Path) -> list[dict]:
    return [r for r in report.read_ledger(ledger) if r["output_dir"].startswith(str(sweep) + "/")]


def test_search_runs_waves_on_the_local_launcher_and_names_the_best_trial(tmp_path, cache):
    """Two waves of two trials through autolab's local launcher: four ledger rows with four distinct
    sampled (peak_lr, weight_decay), job numbers that go on across waves, Optuna's result naming the
    lowest val_bpb, and the sweep report listing the best trial first."""
    sweep = tmp_path / "sweep"
    r = run_train(["-m", "hydra/launcher=local", *JOB, SWEEPS, "+sweeps=search_lr", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.n_jobs=2", "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}"],
                  tmp_path, cache, env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("running 2 jobs, 1 at a time\n") == 2  # a launch per wave; no GPU: CPU jobs by default
    rows = _rows(tmp_path / "results.tsv", sweep)
    assert [row["status"] for row in rows] == ["ok"] * 4
    assert sorted(Path(row["output_dir"]).name for row in rows) == ["0", "1", "2", "3"]
    sampled, val_bpb = {}, {}
    for row in rows:
        out = Path(row["output_dir"])
        cfg = OmegaConf.load(out / ".hydra" / "config.yaml")
        values = (cfg.schedule.peak_lr, cfg.optim.weight_decay)
        assert 1e-4 <= values[0] <= 1e-2 and 0 <= values[1] <= 0.2
        task = OmegaConf.load(out / ".hydra" / "overrides.yaml")  # HydraConfig.get().overrides.task
        assert f"schedule.peak_lr={values[0]}" in task and f"optim.weight_decay={values[1]}" in task
        sampled[out.name] = values
        val_bpb[out.name] = json.loads((out / "summary.json").read_text())["val_bpb"]
    assert len(set(sampled.values())) == 4
    best = min(val_bpb, key=val_bpb.get)
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == val_bpb[best]  # what main() returned to the sweeper: the job's val_bpb
    assert (result.best_params["schedule.peak_lr"], result.best_params["optim.weight_decay"]) == sampled[best]
    table = (sweep / "summary.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].startswith("| schedule.peak_lr | optim.weight_decay | val_bpb")
    assert table[2].startswith(f"| {sampled[best][0]} | {sampled[best][1]} |")  # best first
    assert (sweep / "summary.png").exists()


def test_a_failed_trial_is_recorded_and_the_study_goes_on(tmp_path, cache):
    """Hydra's basic launcher (jobs in this process), two trials, one of them invalid: that one is a
    failed trial with its row; the study ends, Optuna's result names the other. (Not the grid sampler:
    hydra-optuna-sweeper 1.3 aborts when a grid's last trial fails.)"""
    sweep = tmp_path / "sweep"
    job = [o for o in JOB if not o.startswith("model.n_layer=")]  # the swept key, not TINY's fixed one
    r = run_train(["-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.n_jobs=2", *job, "model.n_layer=2,0", f"hydra.sweep.dir={sweep}"],  # seed 0: both
                  tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "error: model.n_layer=0: use 1 or more layers" in r.stderr + r.stdout
    rows = _rows(tmp_path / "results.tsv", sweep)
    assert sorted(row["status"] for row in rows) == ["invalid", "ok"]
    ok = next(row for row in rows if row["status"] == "ok")
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_params == {"model.n_layer": 2}
    assert result.best_value == json.loads((Path(ok["output_dir"]) / "summary.json").read_text())["val_bpb"]
    assert (sweep / "summary.md").read_text().count("\n") == 2 + 2


def test_a_search_whose_every_trial_failed_ends_in_one_line_after_its_report(tmp_path, cache):
    """sweeps/search_lr.yaml's sweeper: no Optuna traceback ('No trials are completed yet'), the sweep
    report lists the failed trials, one `error:` line, exit code 1."""
    sweep = tmp_path / "sweep"
    r = run_train(["-m", *JOB, "trainer.max_steps=0", SWEEPS, "+sweeps=search_lr", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.n_jobs=1", f"hydra.sweep.dir={sweep}"], tmp_path, cache)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: every trial of the search failed: see ")
    assert [row["status"] for row in _rows(tmp_path / "results.tsv", sweep)] == ["invalid", "invalid"]
    assert (sweep / "summary.md").read_text().count("| invalid |") == 2
