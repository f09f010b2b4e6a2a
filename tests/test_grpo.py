"""The GRPO stage end to end: the held-out reward of the embedded copy task rises from the pipeline's SFT
checkpoint; kill -9 and SIGTERM resume to the same weights; a reward that raises or returns NaN is one
`error:` line naming it, with the ledger row written; bad settings are one line. (TRL parity of the loss:
tests/test_trl_parity.py; its numbers by hand: tests/test_objectives.py.)"""

import signal
from pathlib import Path

import pytest
from conftest import QUICK_DOMAIN, SMALL_MODEL, TINY, base_overrides, run_train, same_run, start_and_signal, train_to_end

import autolab.models  # noqa: F401  registers autolab_gpt with the Auto classes
from autolab import report

SMALL = ["grpo.batch_size=4", "grpo.num_generations=4", "grpo.max_completion_length=8", "grpo.eval_prompts=16",
         "grpo.eval_batch_size=16", "schedule.peak_lr=1e-3"]
GRPO = [*TINY, "stage=grpo", QUICK_DOMAIN, "init_from=experiment:quickstart",
        base_overrides("trainer.max_steps=4", "data.seq_len=64", "data.batch_size=4"), *SMALL]


def test_the_copy_reward_rises_from_the_sft_checkpoint(tmp_path, cache):
    """`+experiment=grpo` from the pipeline's SFT model (each base 60 steps of the small GPT here): 30 steps
    raise the mean reward of the held-out prompts (one sample each, the same seed before and after)."""
    import torch
    from transformers import AutoModelForCausalLM

    r = run_train(["+experiment=grpo", *SMALL_MODEL, QUICK_DOMAIN,
                   base_overrides("trainer.max_steps=60", "data.seq_len=64", "data.batch_size=8"),
                   "trainer.max_steps=30", "trainer.log_every=5", "grpo.beta=0", "schedule.peak_lr=1e-2",
                   "grpo.eval_prompts=128", "eval.batch_size=64", "logger=none"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    s = report.parse_summary(r.stdout)
    assert s["status"] == "ok" and s["num_steps"] == "30"
    start, end = float(s["reward_start"]), float(s["reward"])
    assert end > start + 0.02, (start, end)  # 0.022 -> 0.082 on the developer machine
    for key in ("val_bpb", "val_bpb_start", "replay_val_bpb", "entropy", "prompts", "dropped_prompts"):
        assert s[key] != "n/a", key
    assert "| reward " in r.stdout and "| entropy " in r.stdout  # on every progress line
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["stage"] == "grpo" and row["reward"] == s["reward"] and row["reward_start"] == s["reward_start"]
    model = AutoModelForCausalLM.from_pretrained(Path(s["output_dir"]) / "checkpoint")
    assert all(torch.isfinite(p).all() for p in model.parameters())


RESUMABLE = [*GRPO, "trainer.max_steps=10", "trainer.log_every=4", "trainer.snapshot_every_steps=3",
             "grpo.num_iterations=2", "grpo.beta=0.04",  # the clip and the reference in play
             "stage.measure_forgetting=false"]  # replay_val_bpb's evaluation resumes as every stage's does (test_cpt)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
    """The uninterrupted run that interrupted-and-resumed runs must match bit for bit."""
    return train_to_end(tmp_path_factory.mktemp("straight"), cache, [*RESUMABLE, "logger=none"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_or_sigterm_then_resume_ends_with_the_same_weights(sig, straight, tmp_path, cache):
    """Signalled at step 8 (past the snapshot at 6): kill -9 leaves that snapshot, SIGTERM writes one at
    once (exit 3); `resume=` continues to the straight run's weights, samples and rewards, and its W&B run."""
    run_dir = tmp_path / "run"
    code, output = start_and_signal([*RESUMABLE, f"hydra.run.dir={run_dir}"], tmp_path, cache, sig, step=8)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 3), output[-2000:]
    resumed = run_train([f"resume={run_dir}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step" in resumed.stdout
    same_run(straight, resumed, run_dir)  # the held-out reward included


RECORDED = '''
import json
import os


def length(prompts, completions, **columns):
    """A tenth of each completion's length in characters; every call is written to a file of this process."""
    scores = [len(c) / 10 for c in completions]
    with open(f"{os.environ['REWARD_LOG']}.{os.getpid()}", "a") as f:
        f.write(json.dumps({"prompts": prompts, "rewards": scores}) + "\\n")
    return scores
'''


def test_two_processes_each_sample_their_slice_and_log_the_whole_batch(tmp_path, cache):
    """grpo.batch_size=4 on two processes: at each step each rank samples 2 prompts (x 4 completions) that the
    other does not, and the W&B run logs the reward statistics of all 16 completions, not rank 0's 8."""
    import json
    import statistics

    from wandb_records import history

    (tmp_path / "recorded.py").write_text(RECORDED)
    log = tmp_path / "rewards"
    run_dir = tmp_path / "run"
    r = run_train([*GRPO, "trainer.devices=2", "trainer.max_steps=3", "trainer.log_every=1", "grpo.reward_funcs=[recorded.length]",
                   "stage.measure_forgetting=false", f"hydra.run.dir={run_dir}"], tmp_path, cache,
                  env={"PYTHONPATH": str(tmp_path), "REWARD_LOG": str(log)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 x cpu" in r.stdout and report.parse_summary(r.stdout)["status"] == "ok"
    calls = [[json.loads(line) for line in f.read_text().splitlines()] for f in tmp_path.glob("rewards.*")]
    assert len(calls) == 2  # both processes scored completions
    steps = [[c for c in mine if len(c["prompts"]) == 2 * 4] for mine in calls]  # training calls (held-out ones: 16)
    assert len(steps[0]) == len(steps[1]) == 3
    logged = [row for row in history(next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) if "train/reward" in row]
    assert len(logged) == 3
    for a, b, row in zip(*steps, logged):
        assert len(set(a["prompts"])) == len(set(b["prompts"])) == 2 and not set(a["prompts"]) & set(b["prompts"])
        rewards = a["rewards"] + b["rewards"]
        assert row["train/reward"] == pytest.approx(statistics.mean(rewards))
        assert row["train/reward_std"] == pytest.approx(statistics.stdev(rewards))
        assert row["train/rewards/length/mean"] == pytest.approx(statistics.mean(rewards))
        for key in ("kl", "entropy", "clip_ratio/region_mean", "completions/mean_length", "grad_norm", "loss"):
            assert f"train/{key}" in row, key
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1 and "Traceback" not in (run_dir / "rank1.log").read_text()


BAD_REWARDS = '''
import math


def raises(prompts, completions, **columns):
    raise KeyError("answer_text")


def nan(prompts, completions, **columns):
    return [math.nan] * len(completions)
'''


@pytest.mark.parametrize("name, needle", [
    ("raises", "the reward raises raised KeyError: 'answer_text': fix it"),
    ("nan", "the reward nan returned nan for completion 0"),
])
def test_a_reward_that_raises_or_returns_nan_is_one_line_and_the_row_is_written(name, needle, tmp_path, cache):
    (tmp_path / "my_rewards.py").write_text(BAD_REWARDS)
    r = run_train([*GRPO, "logger=none", f"grpo.reward_funcs=[my_rewards.{name}]"], tmp_path, cache, env={"PYTHONPATH": str(tmp_path)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: ") and needle in lines[-1], r.stderr[-2000:]
    assert "Traceback" not in r.stderr + r.stdout
    assert report.parse_summary(r.stdout)["status"] == "invalid"
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["stage"] == "grpo" and row["status"] == "invalid"


@pytest.mark.parametrize("override, needle", [
    ("grpo.num_generations=1", "grpo.num_generations=1: use 2 or more completions a prompt"),
    ("grpo.reward_funcs=[no_such.reward]", "grpo.reward_funcs=['no_such.reward']: no_such.reward is not a function or a reward model's folder"),
    ("grpo.reward_weights=[1.0,2.0]", "grpo.reward_weights=[1.0, 2.0]: give one weight for each of the 1 grpo.reward_funcs"),
    ("grpo.loss_type=ppo", "grpo.loss_type=ppo: use one of grpo, bnpo, dr_grpo"),
])
def test_bad_grpo_settings_are_one_line_errors(override, needle, tmp_path, cache):
    r = run_train([*GRPO, "logger=none", override], tmp_path, cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[0].startswith("error: ") and len(lines) <= 3, r.stderr[-2000:]
    assert needle in r.stderr and "Traceback" not in r.stderr
