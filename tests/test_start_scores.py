"""autolab.start_scores: a starting checkpoint's bits per byte measured once per checkpoint, text and
evaluation settings, and read back by every later run from it (a sweep over one base)."""

import json
import os
import shutil

import pytest

from conftest import QUICK_DOMAIN, base_overrides, run_train
from test_cpt import CPT

from autolab import report, start_scores


def test_a_kept_score_is_keyed_by_the_weights_and_the_facts(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert start_scores.key(str(folder), {}) is None  # no weights: measured every time
    assert start_scores.key("org/some-hub-model", {}) is None
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    calls = []

    def measure():
        calls.append(1)
        return 1.5

    facts = {"domain": "code", "text": start_scores.text_hash(["a", "b"])}
    assert start_scores.bpb(str(folder), facts, measure, tmp_path) == 1.5
    assert start_scores.bpb(str(folder), facts, measure, tmp_path) == 1.5 and len(calls) == 1  # kept
    assert start_scores.bpb(str(folder), {**facts, "domain": "prose"}, measure, tmp_path) == 1.5 and len(calls) == 2
    assert start_scores.text_hash(["a", "b"]) != start_scores.text_hash(["ab"])
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the base trained again
    assert start_scores.bpb(str(folder), facts, measure, tmp_path) == 1.5 and len(calls) == 3


def test_a_second_run_from_the_same_base_reads_the_kept_start(tmp_path, cache):
    """Two CPT runs from one experiment base: the second reports the kept val_bpb_start and replay_val_bpb_start
    (here a planted value proves they were read, not measured again); each run's end is measured as always."""
    args = [*CPT, QUICK_DOMAIN, "init_from=experiment:quickstart", base_overrides("trainer.max_steps=4"), "logger=none",
            "replay.ratio=0.25", "replay.domain=prose"]
    kept = cache / start_scores.FOLDER
    shutil.rmtree(kept, ignore_errors=True)
    first = run_train(args, tmp_path, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    s1 = report.parse_summary(first.stdout)
    files = sorted(kept.glob("*.json"))
    assert len(files) == 2  # val_bpb_start (chat) and replay_val_bpb_start (prose)
    values = {json.loads(f.read_text())["domain"]: json.loads(f.read_text())["value"] for f in files}
    assert f"{values['chat']:.6f}" == s1["val_bpb_start"] and f"{values['prose']:.6f}" == s1["replay_val_bpb_start"]
    for f in files:
        record = json.loads(f.read_text())
        f.write_text(json.dumps({**record, "value": record["value"] + 1.0}))
    second = run_train([*args, "schedule.peak_lr=1e-3"], tmp_path, cache)
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = report.parse_summary(second.stdout)
    for key in ("val_bpb_start", "replay_val_bpb_start"):
        assert float(s2[key]) == pytest.approx(float(s1[key]) + 1.0, abs=2e-6), key
    shutil.rmtree(kept)  # the session's cache keeps true values only
