"""Token shards: written once per tokenizer, read as memory maps; the tokenizer policy (kept, hashed,
mismatches refused); streaming, resumable preparation in bounded memory; flat start-up memory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_train

import prepare
from autolab import report
from autolab.data import PackedRows, token_shards
from autolab.data.synthetic import write_corpus


def test_shards_round_trip_to_the_document_stream(cache):
    tok = prepare.Tokenizer.load()
    for split in ("train", "val"):
        shards = prepare.load_tokens("prose", split, tok)
        assert all(isinstance(s, np.memmap) and s.dtype == np.uint16 for s in shards)  # read lazily
        stream = np.concatenate(shards)
        assert stream.tolist() == prepare.document_stream(tok, prepare.load_documents("prose", split))
    made = json.loads((prepare.tokens_dir("prose", tok) / "tokens.json").read_text())
    assert made["tokenizer"] == prepare.tokenizer_hash(tok) == _hash_of_saved_files()
    assert made["splits"]["train"]["tokens"] == sum(len(s) for s in prepare.load_tokens("prose", "train", tok))
    assert prepare.write_tokens("prose", tok) == made  # nothing is redone


def _hash_of_saved_files() -> str:
    """The tokenizer's hash from its files on disk alone."""
    import hashlib

    folder = prepare.tokenizer_dir()
    text = (folder / "tiktoken.bpe").read_text() + (folder / "tiktoken.json").read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_rows_cross_no_shard_boundary_and_resume_from_their_position():
    shards = [np.arange(0, 95, dtype=np.uint16), np.arange(1000, 1041, dtype=np.uint16)]  # 10 rows + 4 rows of 9
    rows = PackedRows(shards, 9, 2, seed=1)
    assert rows.n_rows == 14
    it = iter(rows)
    seen = [next(it) for _ in range(14)]  # two epochs
    firsts = sorted(int(r[0]) for b in seen[:7] for r in b["tokens"])
    assert firsts == [*range(0, 90, 9), *range(1000, 1036, 9)]  # every row once per epoch
    for b in seen:
        assert b["tokens"].dtype == torch.int32 and (b["tokens"].diff(dim=1) == 1).all()  # each row from one shard
    again = PackedRows(shards, 9, 2, seed=1)
    again.load_state_dict(seen[4]["state"])
    rest = iter(again)
    assert all(torch.equal(b["tokens"], next(rest)["tokens"]) for b in seen[5:])


def test_a_foreign_tokenizer_gets_its_own_shards_once(cache, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    folder = prepare.tokens_dir("code", tok)
    shutil.rmtree(folder, ignore_errors=True)
    shards = token_shards(tok, "code")
    assert folder.exists() and folder.name == prepare.tokenizer_hash(tok) != prepare.tokenizer_hash(prepare.Tokenizer.load())
    mtime = (folder / "tokens.json").stat().st_mtime_ns
    assert np.array_equal(np.concatenate(token_shards(tok, "code")), np.concatenate(shards))
    assert (folder / "tokens.json").stat().st_mtime_ns == mtime  # made once, then read


def test_shards_of_another_tokenizer_or_older_text_are_refused_in_one_line(cache, tmp_path):
    tok = prepare.Tokenizer.load()
    folder = prepare.tokens_dir("prose", tok)
    saved = folder.with_name("saved")
    shutil.copytree(folder, saved)
    try:
        made = json.loads((folder / "tokens.json").read_text())
        (folder / "tokens.json").write_text(json.dumps({**made, "tokenizer": "0123456789ab"}))
        r = run_train([*TINY, "logger=none"], tmp_path, cache)
        assert r.returncode == 2 and "holds tokens of tokenizer 0123456789ab" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        (folder / "tokens.json").write_text(json.dumps({**made, "source": {"train": "old", "val": "old"}}))
        with pytest.raises(prepare.PrepareError, match="made from other text"):
            prepare.load_tokens("prose", "train", tok)
    finally:
        shutil.rmtree(folder)
        saved.rename(folder)


def test_resume_and_cached_experiments_refuse_another_tokenizer(cache, tmp_path):
    run_dir = tmp_path / "run"
    r = run_train([*TINY, "logger=none", "trainer.snapshot_every_steps=2", f"hydra.run.dir={run_dir}"], tmp_path, cache)
    assert r.returncode == 0 and report.parse_summary(r.stdout)["tokenizer"] == prepare.tokenizer_hash(prepare.Tokenizer.load())
    other = tmp_path / "other_cache"  # the same data with a new tokenizer version in use
    shutil.copytree(cache, other, ignore=shutil.ignore_patterns("experiments"))
    tok = prepare.Tokenizer.load()
    ranks = {k: v for k, v in tok.enc._mergeable_ranks.items() if v < len(tok.enc._mergeable_ranks) - 1}  # one merge fewer
    special = {name: len(ranks) + i for i, name in enumerate(prepare.SPECIAL_TOKENS)}
    prepare.Tokenizer(ranks, tok.pattern, special).save(other / "tokenizer")
    r = run_train([f"resume={run_dir}"], tmp_path, cache, env={"AUTOLAB_CACHE": str(other)})
    assert r.returncode == 2 and "was trained with tokenizer" in r.stderr and "it cannot continue" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _peak_rss_mb(cmd: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command in a child of its own and read that child's peak RSS (ru_maxrss of a new process)."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    return r, int(r.stderr.strip().splitlines()[-1]) / 1024


@pytest.fixture(scope="module")
def big_corpus(cache, tmp_path_factory):
    """A generated 200 MB corpus prepared as domain `gen200` (and a 20 MB one, `gen20`), with peak RSS."""
    tmp = tmp_path_factory.mktemp("corpus")
    env = {**os.environ, "AUTOLAB_CACHE": str(cache)}
    rss = {}
    for name, size in (("gen20", 2e7), ("gen200", 2e8)):
        path = write_corpus(tmp / f"{name}.jsonl", size)
        r, rss[name] = _peak_rss_mb([sys.executable, str(ROOT / "prepare.py"), "--dataset", str(path), "--name", name],
                                    env, tmp)
        assert r.returncode == 0, r.stderr[-2000:]
        path.unlink()
    return rss


PREPARE_RSS_MB = 1500  # the bound preparing stays under, whatever the corpus size


def test_preparing_200mb_stays_in_bounded_memory(big_corpus):
    """Text is flushed every SHARD_BYTES and tokens every TOKEN_SHARD_TOKENS: the peak is set by those,
    reached once a corpus fills them (64 MB), whatever its size beyond."""
    assert big_corpus["gen200"] < PREPARE_RSS_MB


def test_startup_memory_is_flat_in_the_corpus_size(big_corpus, cache, tmp_path):
    env = {**os.environ, "AUTOLAB_CACHE": str(cache), "WANDB_SILENT": "true"}
    rss = {}
    for name in ("gen20", "gen200"):
        cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "trainer.max_steps=2", "logger=none", f"data.domain={name}",
               "eval.batch_size=1"]  # the final evaluation's logits (64 MB a row) stay below what the data path holds
        r, rss[name] = _peak_rss_mb(cmd, env, tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    assert rss["gen200"] < 1.2 * rss["gen20"]


SMALL_SHARDS = "import prepare, sys; prepare.SHARD_BYTES = 500_000; sys.exit(prepare.main(sys.argv[1:]))"
KILLED_MID_FLUSH = """
import os, signal
import pyarrow.parquet as pq
write, written = pq.write_table, []

def write_then_die(table, where, *args, **kwargs):  # kill -9 once the 8th shard file is written
    write(table, where, *args, **kwargs)
    written.append(where)
    if len(written) == 8:
        os.kill(os.getpid(), signal.SIGKILL)

pq.write_table = write_then_die
""" + SMALL_SHARDS


def test_an_interrupted_prepare_continues_where_it_stopped(cache, tmp_path):
    """A prepare killed in the middle of a flush (each flush writes a train and a val shard, each to a
    .tmp file renamed into place, then its progress note): the 8th shard file is the 4th flush's val
    shard, so three notes are on disk, the 4th train shard is in place after the last note and the
    4th val shard is a stray .tmp. Run again, it drops both, continues after the noted documents and
    ends with the same manifest as a run in one go. The kill is at a fixed point, not a race against
    the clock (a 3 MB corpus once prepared faster than a poll could catch it)."""
    corpus = write_corpus(tmp_path / "c.jsonl", 3e6, doc_bytes=2000)
    env = {**os.environ, "AUTOLAB_CACHE": str(cache)}
    args = ["--dataset", str(corpus), "--name", "resumable"]
    r = subprocess.run([sys.executable, "-c", KILLED_MID_FLUSH, *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == -9, r.stdout[-2000:] + r.stderr[-2000:]
    tmp = prepare.data_dir("resumable").with_name("resumable.tmp")
    note = json.loads((tmp / "progress.json").read_text())
    assert note["shards"] == {"train": 3, "val": 3} and note["documents"] >= 500
    assert (tmp / "train-00003.parquet").exists() and (tmp / "val-00003.parquet.tmp").exists()  # after the last note
    r = subprocess.run([sys.executable, "-c", SMALL_SHARDS, *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and f"continuing after {note['documents']:,} documents" in r.stdout + r.stderr
    resumed = prepare.manifest("resumable")
    shutil.rmtree(prepare.data_dir("resumable"))
    r = subprocess.run([sys.executable, "-c", SMALL_SHARDS, *args], env=env, cwd=tmp_path, capture_output=True,
                       text=True)  # in one go, for comparison
    assert r.returncode == 0 and prepare.manifest("resumable")["splits"] == resumed["splits"]
