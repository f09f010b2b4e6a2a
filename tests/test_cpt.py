"""Continued pretraining end to end: any HF causal LM, re-warmed schedule, replay share, both
domains measured before and after, the cached base experiment, bad input, kill-and-resume."""

import shutil
import signal
from pathlib import Path

import pytest
from conftest import ROOT, TINY, base_overrides, run_train, same_run, start_and_signal, train_to_end
from transformers import AutoModelForCausalLM, AutoTokenizer

import wandb_records
from autolab import report
from autolab.schedules import lr_at

CPT = [*TINY, "stage=cpt", "data=code", "trainer.max_steps=8", "schedule.warmup=0.5", "schedule.initial_lr=0",
       "schedule.peak_lr=2e-3"]


def test_cpt_of_an_hf_llama_with_its_own_tokenizer(tmp_path, cache, tiny_llama):
    r = run_train([*CPT, f"init_from={tiny_llama}", "eval.curve_every=4"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    s = report.parse_summary(r.stdout)
    for key in ("val_bpb", "val_bpb_start", "val_bpb_delta", "replay_val_bpb", "replay_val_bpb_start",
                "replay_val_bpb_delta"):
        assert key in s and s[key] != "n/a"
    assert float(s["val_bpb_delta"]) == pytest.approx(float(s["val_bpb"]) - float(s["val_bpb_start"]), abs=2e-6)
    assert float(s["replay_share"]) == 1 / 32  # 0.05 x 4 rows x 8 steps = 1.6 -> 1 row of 32

    run_file = next(Path(s["output_dir"]).glob("wandb/offline-run-*/run-*.wandb"))
    history: dict[int, dict] = {}  # W&B rows merged by the step they were logged at
    for h in wandb_records.history(run_file):
        history.setdefault(h["trainer/global_step"], {}).update(h)
    for step in (2, 4, 6, 8):  # the re-warmed schedule: progress restarts at 0 for this new run
        assert history[step]["train/lr"] == pytest.approx(
            lr_at((step - 1) / 8, peak_lr=2e-3, initial_lr=0.0, warmup=0.5, min_lr_ratio=0.1))
        assert "train/replay_share" in history[step]
    assert [step for step, h in sorted(history.items()) if "val/bpb" in h and "val/replay_bpb" in h] == [4, 8]

    ckpt = Path(s["output_dir"]) / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(AutoTokenizer.from_pretrained(ckpt)) == len(AutoTokenizer.from_pretrained(tiny_llama)) == 400


def test_cpt_replay_experiment_starts_from_a_cached_base(tmp_path, cache):
    args = [*CPT, "+experiment=cpt_replay", base_overrides("trainer.max_steps=6", "data.batch_size=4"), "logger=none"]
    args.remove("+experiment=quickstart")
    r = run_train(args, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = report.read_ledger(tmp_path / "results.tsv")
    assert [(row["experiment"], row["stage"]) for row in rows] == [("quickstart", "pretrain"), ("cpt_replay", "cpt")]
    base_dir = Path(rows[0]["output_dir"])
    assert base_dir.parent == cache / "experiments" and (base_dir / "checkpoint").exists()
    # the prose model starts better on prose than on code, and replay_val_bpb_start is its prose score
    assert rows[1]["replay_val_bpb_start"] == rows[0]["val_bpb"]

    again = run_train(args, tmp_path, cache)  # a second job reuses the base instead of retraining it
    assert again.returncode == 0 and "not cached yet" not in again.stdout
    assert len(report.read_ledger(tmp_path / "results.tsv")) == 3
    table = again.stdout[again.stdout.index("\npipeline:"):].splitlines()[4:]  # every stage, each with its status
    assert [line.split(" | ")[:2] for line in table] == [["| quickstart", "pretrain"], ["| cpt_replay", "cpt"]]
    assert all(line.endswith("| ok |") for line in table)

    bad = run_train([*args, "data.domain=nope"], tmp_path, cache)  # refused once the base is there: no summary.json
    assert bad.returncode == 2
    assert bad.stdout[bad.stdout.index("\npipeline:"):].splitlines()[-1].startswith("| cpt_replay | cpt | n/a")
    assert bad.stdout.rstrip().endswith("| invalid |")  # the table's last row says how this run ended


@pytest.fixture
def not_causal(tmp_path):
    from transformers import ViTConfig

    folder = tmp_path / "vit"
    ViTConfig().save_pretrained(folder)
    return folder


@pytest.fixture
def mismatched(tmp_path, tiny_llama):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "small_vocab"
    shutil.copytree(tiny_llama, folder)
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("not_causal", "not a causal language model"),
    ("mismatched", "its tokenizer has 400 tokens but the model's embedding only 100"),
    ("ratio", "outside [0, 1)"),
    ("no_replay_docs", "no prepared data for domain 'nothing'"),
    ("no_init", "this stage continues from a model"),
])
def test_bad_input_is_one_line_before_any_training(case, message, tmp_path, cache, tiny_llama, request):
    init = {"missing": "/no/such/model", "not_causal": None, "mismatched": None}.get(case, str(tiny_llama))
    if case in ("not_causal", "mismatched"):
        init = str(request.getfixturevalue(case))
    extra = {"ratio": ["replay.ratio=1.0"], "no_replay_docs": ["replay.domain=nothing"]}.get(case, [])
    args = [*CPT, "logger=none", *extra] + ([f"init_from={init}"] if case != "no_init" else [])
    r = run_train(args, tmp_path, cache)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    assert "step " not in r.stdout  # nothing was trained
    assert report.read_ledger(tmp_path / "results.tsv")[-1]["status"] == "invalid"


RESUMABLE = [*TINY, "trainer.max_steps=60", "trainer.log_every=5", "trainer.snapshot_every_steps=7",
             "replay.ratio=0.3", "replay.domain=code"]  # a mixture, so both data positions must resume


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
    """The uninterrupted run that interrupted-and-resumed runs must match bit for bit."""
    return train_to_end(tmp_path_factory.mktemp("straight"), cache, [*RESUMABLE, "logger=none"])


def _start_and_signal(run_dir: Path, cwd: Path, cache: Path, sig: int) -> tuple[int, str]:
    """Send `sig` at step 25: past the snapshot at step 21, before the one at 28."""
    return start_and_signal([*RESUMABLE, f"hydra.run.dir={run_dir}"], cwd, cache, sig, step=25)


def test_kill_and_resume_ends_with_the_same_weights_and_metrics(straight, tmp_path, cache):
    """SIGKILL mid-run, then `resume=<run dir>`: bit-identical final weights on the CPU."""
    killed = tmp_path / "killed"
    code, _ = _start_and_signal(killed, tmp_path, cache, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (killed / "checkpoint").exists()

    resumed = run_train([f"resume={killed}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 21" in resumed.stdout
    same_run(straight, resumed, killed)


def test_sigterm_snapshots_at_once_and_exits_interrupted(straight, tmp_path, cache):
    """SIGTERM (what scancel and a preemption send) outside a scheduler: a snapshot at the step it
    arrived, exit code 3, an `interrupted` row; `resume=` continues to the same weights."""
    stopped = tmp_path / "stopped"
    code, output = _start_and_signal(stopped, tmp_path, cache, signal.SIGTERM)
    assert code == 3 and f"continue it with `python train.py resume={stopped}`" in output, output[-2000:]
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["status"] == "interrupted" and row["output_dir"] == str(stopped)
    step = int(row["num_steps"])
    assert 25 <= step < 28  # the snapshot of the step in progress, not the periodic one at 21
    assert not (stopped / "checkpoint").exists()

    resumed = run_train([f"resume={stopped}"], tmp_path, cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {step}" in resumed.stdout
    same_run(straight, resumed, stopped)


def test_replay_sweep_ends_with_a_table_and_a_plot(tmp_path, cache):
    ledger = tmp_path / "results.tsv"
    args = ["-m", *CPT, "+experiment=cpt_replay", "+sweeps=replay", "logger=none", "data.batch_size=10",
            base_overrides("trainer.max_steps=6", "data.batch_size=4"), f"ledger={ledger}",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    args.remove("+experiment=quickstart")
    r = run_train(args, ROOT, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (tmp_path / "sweep" / "summary.md").read_text().splitlines()
    assert table[0].startswith("| replay.ratio | val_bpb_start |") and len(table) == 2 + 3
    assert [line.split(" | ")[0] for line in table[2:]] == ["| 0.0", "| 0.05", "| 0.3"]  # replay.ratio is a float (the schema)
    assert [line.split(" | ")[7] for line in table[2:]] == ["0.000000", "0.050000", "0.300000"]  # replay_share, measured
    assert (tmp_path / "sweep" / "summary.png").read_bytes()[:4] == b"\x89PNG"
