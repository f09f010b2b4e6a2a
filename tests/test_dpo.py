"""The DPO stage end to end: each reference mode, LoRA, the summary and the ledger."""

import signal
from pathlib import Path

import pytest
from conftest import QUICK_DOMAIN, TINY, base_overrides, run_train, same_run, start_and_signal, train_to_end
from transformers import AutoModelForCausalLM

import autolab.models  # noqa: F401  registers autolab_gpt with the Auto classes
from autolab import report

DPO = [*TINY, "stage=dpo", QUICK_DOMAIN, "init_from=experiment:quickstart", base_overrides("trainer.max_steps=4", "data.seq_len=64", "data.batch_size=4"),
       "dpo.batch_size=4", "dpo.eval_batch_size=64", "dpo.max_length=64", "dpo.behaviour_prompts=4",
       "dpo.max_eval_pairs=64",  # reward_accuracy on 64 held-out pairs, not the embedded 336: runs here compare alike
       "schedule.peak_lr=1e-3", "logger=none"]


@pytest.mark.parametrize("mode", ["frozen", "precomputed", "none", "lora"])
def test_dpo_runs_with_each_reference(mode, tmp_path, cache):
    args = [*DPO, "dpo.lora.r=4"] if mode == "lora" else [*DPO, f"dpo.reference={mode}"]
    if mode == "precomputed":  # it scores every training pair first: 96 of them here, not the embedded ~3,000
        args.append("dpo.max_train_pairs=96")
    r = run_train(args, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    s = report.parse_summary(r.stdout)
    assert s["status"] == "ok" and s["num_steps"] == "4"
    assert 0.0 <= float(s["preamble_prob_start"]) <= 1.0 and 0.0 <= float(s["preamble_prob"]) <= 1.0
    for key in ("reward_accuracy", "reward_margin", "preamble_share", "preamble_share_start", "preamble_prob", "val_bpb",
                "val_bpb_start", "replay_val_bpb", "pairs", "dropped_pairs", "win_rate", "tie_rate", "loss_rate"):
        assert key in s and s[key] != "n/a", key
    assert 0.0 <= float(s["reward_accuracy"]) <= 1.0 and 0 < int(s["held_out_pairs"]) <= 64
    rates = [float(s[k]) for k in ("win_rate", "tie_rate", "loss_rate")]
    assert sum(rates) == pytest.approx(1.0, abs=1e-5) and float(s["win_low"]) <= rates[0] <= float(s["win_high"])
    assert (Path(s["output_dir"]) / "win_rate.png").read_bytes()[:4] == b"\x89PNG"
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["stage"] == "dpo" and row["reward_accuracy"] == s["reward_accuracy"]
    model = AutoModelForCausalLM.from_pretrained(Path(s["output_dir"]) / "checkpoint")  # LoRA merged: a plain LM
    assert not any("lora" in name for name, _ in model.named_parameters())
    if mode == "precomputed":
        assert f"reference log-probs: computing {s['pairs']} pairs" in r.stdout and 0 < int(s["pairs"]) <= 96
        again = run_train([*args, "dpo.beta=0.5"], tmp_path, cache)  # a beta sweep reuses them
        assert again.returncode == 0 and "reference log-probs: cached" in again.stdout


def test_bad_dpo_settings_are_one_line_errors(tmp_path, cache):
    r = run_train([*DPO, "dpo.reference=policy"], tmp_path, cache)
    assert r.returncode == 2 and "dpo.reference=policy: use one of" in r.stderr and "Traceback" not in r.stderr
    r = run_train([*DPO, "dpo.dataset=/no/such/prefs.jsonl"], tmp_path, cache)
    assert r.returncode == 2 and "could not be loaded" in r.stderr


def test_kill_9_then_resume_keeps_the_frozen_reference_at_the_start(tmp_path, cache):
    """A resumed DPO run's frozen reference is the starting weights, not the snapshot it resumed from
    (which the model already holds): kill -9 past a snapshot, then `resume=`, ends bit-identical to the
    uninterrupted run."""
    args = [*DPO, "dpo.reference=frozen", "trainer.max_steps=6", "trainer.log_every=2", "trainer.snapshot_every_steps=3",
            "stage.measure_forgetting=false", "dpo.max_eval_pairs=16", "dpo.behaviour_prompts=2"]
    (tmp_path / "straight").mkdir()
    straight = train_to_end(tmp_path / "straight", cache, args)
    stopped = tmp_path / "stopped"
    code, _ = start_and_signal([*args, "logger=wandb", f"hydra.run.dir={stopped}"], tmp_path, cache, signal.SIGKILL, step=4)
    assert code == -signal.SIGKILL
    resumed = run_train([f"resume={stopped}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 3" in resumed.stdout
    same_run(straight, resumed, stopped)

