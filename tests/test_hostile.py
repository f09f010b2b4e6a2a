"""A table of hostile inputs. Each ends non-zero with at most three lines on stderr besides the summary
block (which goes to stdout), naming the key or file and what to do, with no traceback; a run that
started leaves its ledger row; nothing written before changes.

Config values and run-time inputs go through `autolab.run.main` in this process (what train.py calls
once Hydra has composed the config); Hydra's own composition errors and a resume with changed
overrides go through train.py as a user runs it; corpora through `prepare.main`.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, run_train
from hydra import compose, initialize_config_dir

import prepare
from autolab import report
from autolab.config import register
from autolab.run import main

CONF = Path(__file__).resolve().parents[1] / "conf"
DPO = ["stage=dpo", "dpo.batch_size=2", "dpo.max_length=64", "dpo.behaviour_prompts=2"]

CONFIG_VALUES = [  # (overrides, what stderr says); each one problem, refused before anything loads
    (["data.batch_size=-4"], "data.batch_size=-4: use 1 or more rows a step"),
    (["data.batch_size=0"], "data.batch_size=0: use 1 or more"),
    (["data.seq_len=0"], "data.seq_len=0: use 1 or more tokens"),
    (["data.seq_len=4096"], "data.seq_len=4096: is longer than the model's model.max_seq_len=256"),
    (["model.n_head=7"], "model.n_embd=32: must split into model.n_head=7 heads"),
    (["model.n_head=0"], "model.n_head=0: use 1 or more heads"),
    (["model.n_layer=0"], "model.n_layer=0: use 1 or more layers"),
    (["schedule.warmup=2.0"], "schedule.warmup=2.0: is a fraction of the run"),
    (["schedule.warmup=-0.1"], "schedule.warmup=-0.1: is a fraction of the run"),
    (["schedule.peak_lr=0"], "schedule.peak_lr=0.0: use a positive learning rate"),
    (["schedule.min_lr_ratio=1.5"], "schedule.min_lr_ratio=1.5: is a fraction of peak_lr"),
    (["schedule.decay=step"], "schedule.decay=step: use one of cosine, linear"),
    (["model.logit_softcap=-1"], "model.logit_softcap=-1.0: use 0 (off) or a positive cap"),
    (["model.head_init_std=-0.1"], "model.head_init_std=-0.1: use 0 (zeros) or a positive std"),
    (["trainer.max_steps=null", "trainer.time_budget=-5"], "trainer.time_budget=-5.0: use a positive number of seconds"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: use 1 or more steps"),
    (["trainer.log_every=0"], "trainer.log_every=0: use 1 or more steps"),
    (["trainer.compile=sometimes"], "trainer.compile=sometimes: use auto, true or false"),
    (["trainer.attention=xformers"], "trainer.attention=xformers: use one of auto, flash, cudnn, efficient"),
    (["trainer.max_loss_ratio=0.5"], "trainer.max_loss_ratio=0.5: use a ratio above 1"),
    (["optim.name=sgd"], "optim.name=sgd: use one of adamw, muon"),
    (["optim.betas=[0.9,1.2]"], "optim.betas=[0.9, 1.2]: use two numbers in [0, 1)"),
    (["optim.eps=0"], "optim.eps=0.0: use a small positive number"),
    (["optim=muon", "optim.muon_beta2=1"], "optim.muon_beta2=1.0: use 0 (plain Muon) or a number below 1 for NorMuon"),
    (["optim=muon", "optim.muon_coefficients=cubic"], "optim.muon_coefficients=cubic: use one of jordan, polar_express"),
    (["optim=muon", "optim.muon_momentum_start=1.2"], "optim.muon_momentum_start=1.2: use null (no warmup) or a number in [0, 1)"),
    (["eval.batch_size=0"], "eval.batch_size=0: use 1 or more rows"),
    (["replay.ratio=1.5"], "replay.ratio=1.5: is outside [0, 1)"),
    (["stage=cpt"], "init_from=null: is missing: this stage continues from a model"),
    ([*DPO, "init_from=/nowhere", "dpo.beta=0"], "dpo.beta=0.0: use a positive number"),
    ([*DPO, "init_from=/nowhere", "dpo.loss_type=kto"], "dpo.loss_type=kto: use one of sigmoid, ipo, hinge, robust"),
    ([*DPO, "init_from=/nowhere", "dpo.max_prompt_length=64"], "dpo.max_prompt_length=64: use null or fewer tokens"),
    ([*DPO, "init_from=/nowhere", "dpo.max_train_pairs=0"], "dpo.max_train_pairs=0: use null (all) or 1 or more"),
    ([*DPO, "init_from=/nowhere", "dpo.max_eval_pairs=0"], "dpo.max_eval_pairs=0: use null (all) or 1 or more"),
    ([*DPO, "init_from=/nowhere", "dpo.reference=policy"], "dpo.reference=policy: use one of frozen, precomputed, none"),
]


def _compose(overrides: list[str], tmp: Path):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*TINY, "logger=none", f"ledger={tmp}/results.tsv",
                                           f"output_dir={tmp}/run", *overrides])


def _run(overrides: list[str], tmp: Path, capsys) -> tuple[int, str, str]:
    """train.py's run of an already composed config, in this process: (exit code, stdout, stderr)."""
    cfg = _compose(overrides, tmp)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(cfg)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def _refused(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and len(lines) <= 3, err
    assert needle in err and "Traceback" not in err + out, err
    assert report.parse_summary(out)["status"] == "invalid"  # the summary block still ends the output


@pytest.fixture
def ledger(tmp_path) -> Path:
    """A ledger with one earlier row, which must survive whatever the run does."""
    path = tmp_path / "results.tsv"
    report.append_row(path, {"stage": "earlier", "status": "ok", "description": "written before"})
    return path


def _rows_after(ledger: Path) -> list[dict]:
    rows = report.read_ledger(ledger)
    assert rows[0]["description"] == "written before" and rows[0]["status"] == "ok"
    return rows[1:]


@pytest.mark.parametrize("overrides, needle", CONFIG_VALUES, ids=[" ".join(o[-1:]) for o, _ in CONFIG_VALUES])
def test_config_values_are_refused_before_anything_loads(overrides, needle, tmp_path, cache, ledger, capsys):
    code, out, err = _run(overrides, tmp_path, capsys)
    _refused(code, out, err, needle)
    assert [r["status"] for r in _rows_after(ledger)] == ["invalid"]  # the run that started has its row
    assert not (tmp_path / "run").exists()  # nothing was made for it


@pytest.mark.parametrize("override, needle", [
    ("schedule.peak_lr=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("trainer.max_steps=1.5", "could not be converted to Integer"),
    ("model.n_layer=[1,2]", "could not be converted to Integer"),
    ("trainer.require_gpu=maybe", "Value 'maybe' is not a valid bool"),
    ("optim.no_such_key=1", "Key 'no_such_key' not in 'OptimConf'"),
    ("stage=nonsense", "options: cpt, dpo, grpo, pretrain, reward, sft"),
])
def test_hydra_refuses_wrong_types_and_names_in_at_most_three_lines(override, needle, tmp_path, cache):
    r = run_train([*TINY, "logger=none", override], tmp_path, cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[0].startswith("error: ") and len(lines) <= 3, r.stderr
    assert needle in r.stderr and override.split("=")[0] in r.stderr and "Traceback" not in r.stderr


def test_an_unwritable_ledger_is_refused_before_training(tmp_path, cache, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    for bad in (folder, "/proc/autolab/results.tsv"):  # a directory; a place no file can be made
        cfg = _compose([f"ledger={bad}"], tmp_path)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(cfg)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"ledger={bad}: cannot write a row there" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3 and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Corpora: prepare.py --dataset


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _empty(folder: Path) -> Path:
    (folder / "empty.jsonl").write_bytes(b"")
    return folder / "empty.jsonl"


def _not_utf8(folder: Path) -> Path:
    (folder / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9 au lait, encoded as Latin-1"}\n' * 50)
    return folder / "latin1.jsonl"


def _no_data_files(folder: Path) -> Path:
    (folder / "nothing").mkdir()
    (folder / "nothing" / "readme.txt").write_text("no data here")
    return folder / "nothing"


CORPORA = {
    "empty": (_empty, "empty.jsonl"),
    "not_utf8": (_not_utf8, "could not be read"),
    "not_json": (lambda p: _jsonl(p / "bad.jsonl", [{"text": "fine " * 50}] * 5 + ["this line is not json"]),
                 "could not be read"),
    "no_text_column": (lambda p: _jsonl(p / "body.jsonl", [{"body": "text " * 50}] * 20), "has no column 'text'"),
    "only_empty_texts": (lambda p: _jsonl(p / "blank.jsonl", [{"text": "   "}] * 20), "got no train documents"),
    "no_data_files": (_no_data_files, "holds no .jsonl, .json or .parquet files"),
}


def _truncated_parquet(folder: Path) -> Path:
    path = folder / "cut.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 40 for i in range(2000)]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CORPORA["truncated_parquet"] = (_truncated_parquet, "could not be read")


@pytest.mark.parametrize("case", sorted(CORPORA))
def test_corpora_that_cannot_be_read_are_one_line_and_keep_what_was_prepared(case, tmp_path, cache, capsys):
    make, needle = CORPORA[case]
    source = make(tmp_path)
    before = (prepare.data_dir("prose") / "manifest.json").read_text()
    capsys.readouterr()
    assert prepare.main(["--dataset", str(source), "--name", "hostile"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "B/s" not in line and "it/s" not in line]  # progress bars
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in err and "Traceback" not in err, err
    assert (prepare.data_dir("prose") / "manifest.json").read_text() == before  # nothing prepared before changed
    assert not (prepare.data_dir("hostile") / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# Preference rows: files of nothing but one kind of bad row


def _pairs(n: int, **fields) -> list[dict]:
    return [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Sure! Answer {i}.", **fields}
            for i in range(n)]


def _conversation(i: int, role: str) -> dict:
    return {"prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": role, "content": f"Answer {i}."}],
            "rejected": [{"role": role, "content": f"Sure! Answer {i}."}]}


PREFERENCE_ROWS = {
    "missing_field": ([{k: v for k, v in r.items() if k != "rejected"} for r in _pairs(40)], "missing_field"),
    "chosen_equals_rejected": ([{**r, "rejected": r["chosen"]} for r in _pairs(40)], "identical_pair"),
    "wrong_roles": ([_conversation(i, "robot") for i in range(40)], "bad_roles"),
    "non_string_fields": ([{**r, "chosen": i} for i, r in enumerate(_pairs(40))], "not_text"),
    "empty_prompt": (_pairs(40, prompt=""), "empty_prompt"),
}


@pytest.mark.parametrize("case", sorted(PREFERENCE_ROWS))
def test_preference_files_of_bad_rows_are_refused_with_their_counts(case, tmp_path, cache, tiny_llama, ledger, capsys):
    rows, reason = PREFERENCE_ROWS[case]
    data = _jsonl(tmp_path / f"{case}.jsonl", rows)
    code, out, err = _run([*DPO, f"init_from={tiny_llama}", f"dpo.dataset={data}"], tmp_path, capsys)
    _refused(code, out, err, "no usable preference pairs")
    assert f"'{reason}'" in err
    assert [r["status"] for r in _rows_after(ledger)] == ["invalid"]


def test_conversational_rows_for_a_model_without_a_chat_template_are_refused(tmp_path, cache, tiny_llama, ledger,
                                                                           capsys):
    data = _jsonl(tmp_path / "chat.jsonl", [_conversation(i, "assistant") for i in range(40)])
    code, out, err = _run([*DPO, f"init_from={tiny_llama}", f"dpo.dataset={data}"], tmp_path, capsys)
    _refused(code, out, err, "init_from's tokenizer has no chat template")


def test_a_preference_file_that_is_not_json_is_refused(tmp_path, cache, tiny_llama, ledger, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("prompt,chosen,rejected\nwhy?,because.,Sure! because.\n")
    code, out, err = _run([*DPO, f"init_from={tiny_llama}", f"dpo.dataset={data}"], tmp_path, capsys)
    _refused(code, out, err, f"dpo.dataset={data} (split train) could not be loaded")


# ---------------------------------------------------------------------------------------------
# Checkpoints given to init_from


class _Boom:  # what a hostile pickle does when it is loaded: here, it would write a file
    def __reduce__(self):
        return (Path.write_text, (Path(os.environ["AUTOLAB_PICKLE_PROOF"]), "executed"))


def _checkpoint(case: str, tiny_llama: Path, tmp: Path) -> Path:
    folder = tmp / case
    shutil.copytree(tiny_llama, folder)
    weights = folder / "model.safetensors"
    if case == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "pickle_only":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    elif case == "no_config":
        (folder / "config.json").unlink()
    elif case == "not_causal":
        from transformers import ViTConfig

        ViTConfig().save_pretrained(folder)
    elif case == "tokenizer_mismatch":
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case, needle", [
    ("truncated_safetensors", "could not be loaded as a causal LM"),
    ("pickle_only", "has only pickled (.bin) weights, which are never loaded here"),
    ("no_config", "Should have a `model_type` key in its config.json"),
    ("not_causal", "is not a causal language model"),
    ("tokenizer_mismatch", "its tokenizer has 400 tokens but the model's embedding only 100"),
])
def test_checkpoints_that_cannot_be_used_are_refused(case, needle, tmp_path, cache, tiny_llama, ledger, capsys,
                                                      monkeypatch):
    proof = tmp_path / "pickle_ran"
    monkeypatch.setenv("AUTOLAB_PICKLE_PROOF", str(proof))
    folder = _checkpoint(case, tiny_llama, tmp_path)
    code, out, err = _run(["stage=cpt", "data=code", f"init_from={folder}"], tmp_path, capsys)
    _refused(code, out, err, needle)
    assert f"init_from={folder}" in err and not proof.exists()  # a pickle handed to us is never run
    assert [r["status"] for r in _rows_after(ledger)] == ["invalid"]


# ---------------------------------------------------------------------------------------------
# resume=


@pytest.fixture
def finished_run(trained_run) -> Path:
    """A short run with snapshots: the run dir that resume= cases start from (the session's, read-only)."""
    return trained_run


def test_resume_with_changed_overrides_is_refused(finished_run, tmp_path, cache):
    r = run_train([f"resume={finished_run}", "model.n_layer=1"], tmp_path, cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "drop model.n_layer=1" in r.stderr, r.stderr
    assert report.read_ledger(tmp_path / "results.tsv")[-1]["status"] == "invalid"


def test_resume_of_a_snapshot_from_another_model_is_refused(finished_run, tmp_path, cache, ledger, capsys):
    other = tmp_path / "other"
    r = run_train([*TINY, "logger=none", "model.n_layer=1", "trainer.snapshot_every_steps=2",
                   f"hydra.run.dir={other}"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = tmp_path / "mixed"
    shutil.copytree(finished_run, run_dir)
    shutil.rmtree(run_dir / "resume")
    shutil.copytree(other / "resume", run_dir / "resume")  # weights of a 1-layer model in a 2-layer run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, out, err = _run([f"resume={run_dir}"], tmp_path, capsys)
    _refused(code, out, err, "the snapshot does not fit this run's model")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # the run dir is left as it was


@pytest.mark.parametrize("what, needle", [
    ("not_a_run", "not found; give the output dir of a train.py run"),
    ("no_snapshot", "the run wrote no snapshot yet"),
])
def test_resume_of_a_folder_that_is_not_a_resumable_run_is_refused(what, needle, finished_run, tmp_path, cache,
                                                                   ledger, capsys):
    folder = tmp_path / what
    folder.mkdir()
    if what == "no_snapshot":
        shutil.copytree(finished_run / ".hydra", folder / ".hydra")
    code, out, err = _run([f"resume={folder}"], tmp_path, capsys)
    _refused(code, out, err, needle)
