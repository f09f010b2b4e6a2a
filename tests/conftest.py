"""Shared fixtures and helpers for the tests: a real prepared cache (prepare.py's own code) in a
temporary folder, and tiny models and runs made once per session.

Fixtures (session-scoped: made once, shared read-only; copy a folder into tmp_path before writing into it):
- `cache`: the prepared cache (embedded corpora, tokenizer, token shards); AUTOLAB_CACHE points at it.
- `trained_run`: the run dir of a finished TINY run of 30 steps: checkpoint/ (a trained HF folder), resume/
  (a snapshot), .hydra/, summary.json. Use it wherever a test needs *a* trained checkpoint or run dir.
- `tiny_llama`: a random 2-layer Llama folder with its own 400-token BPE tokenizer, as a hub model comes.
Helpers: `TINY` (the overrides every end-to-end run starts from: quickstart's recipe on a smaller GPT,
4 steps), `base_overrides(...)` (the same small model for an `experiment:NAME` base), `run_train`,
`train_to_end`, `start_and_signal`, `same_run`.

Speed (the whole suite is meant to run in minutes on 2 cores): every train.py process costs seconds of
imports and scores 500 KB of text per domain, so prefer a session fixture to a new run, `TINY`'s few steps
to a time budget, and one process to several where the CLI itself is not under test. Under pytest-xdist
(`-n 2 --dist loadfile`) each worker gets its own copy of the cache, prepared once for all, and the files
go out longest first by tests/durations.json (refresh it with `--store-durations` after adding a slow file).
"""

import collections
import json
import os
import shutil
import time
from pathlib import Path

import pytest

# Under pytest-xdist (-n N) the machine's cores are shared out among the workers before torch starts: every
# process a worker starts inherits its share, and N workers with all the cores each spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import forked  # noqa: E402  (after the thread count: it starts nothing, but its server inherits the environment)
import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = Path(__file__).with_name("durations.json")  # seconds a test file took: `pytest ... --store-durations`
_seconds: collections.Counter = collections.Counter()  # this run's, by test file (on xdist's controller: all workers')


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help=f"write the seconds each test file took (setup, call, teardown) into {DURATIONS.name}")


def pytest_configure(config):
    config.option.loadscopereorder = False  # xdist --dist loadfile hands out files in the order below, not its own


def pytest_collection_modifyitems(config, items):
    """The longest test files first (durations.json; a file it does not know first of all), each file's tests in
    their order: under `-n 2 --dist loadfile` no worker is left with a long file at the end while the other
    idles (xdist's own order, the files with most tests first, ran one-test files of a minute last)."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], float("inf")))


def pytest_runtest_logreport(report):
    _seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session):
    if session.config.getoption("store_durations") and not hasattr(session.config, "workerinput"):  # the controller's sums
        kept = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}  # files this run did not run stay
        kept.update({f: round(s, 1) for f, s in _seconds.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(kept.items())), indent=1) + "\n")


def _prepare(path: Path) -> None:
    os.environ["AUTOLAB_CACHE"] = str(path)
    assert prepare.main([]) == 0


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """Runs `prepare.main()` once per session into a temp cache and points AUTOLAB_CACHE at it.
    Under pytest-xdist (-n N) the first worker prepares into the run's shared temp folder and every
    worker copies that into a cache of its own, since some tests write into theirs."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("AUTOLAB_CACHE")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from filelock import FileLock

        shared = tmp_path_factory.getbasetemp().parent / "prepared"
        with FileLock(str(shared) + ".lock"):
            if not shared.with_suffix(".done").exists():
                _prepare(shared)
                shared.with_suffix(".done").touch()
        shutil.copytree(shared, path, dirs_exist_ok=True)
        os.environ["AUTOLAB_CACHE"] = str(path)
    else:
        _prepare(path)
    yield path
    if old is None:
        os.environ.pop("AUTOLAB_CACHE", None)
    else:
        os.environ["AUTOLAB_CACHE"] = old


def train_to_end(folder: Path, cache: Path, args: list[str]):
    """train.py run to its end in `folder` (its ledger there, its run dir folder/run): (result, run dir)."""
    r = run_train([*args, f"hydra.run.dir={folder}/run"], folder, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, folder / "run"


def start_train(args: list[str], cwd: Path, cache: Path) -> forked.Started:
    """train.py started (a fork, as run_train's) and left running: signal it with os.kill(proc.pid, ...), read
    its output (stdout and stderr in one) with `output_until`, end with proc.finish(timeout) -> (code, output)."""
    env = {**os.environ, "AUTOLAB_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    return forked.start([ROOT / "train.py", *args], cwd, env)


def output_until(proc: forked.Started, text: str, timeout: float = 300) -> str:
    """The run's output once `text` is in it (read every 2 ms: a tiny model's step takes about 10)."""
    seen, deadline = "", time.monotonic() + timeout
    with open(proc.path) as out:
        while text not in seen:
            ended = proc.poll() is not None
            seen += out.read()
            assert text in seen or not ended and time.monotonic() < deadline, seen[-3000:]
            time.sleep(0.002)
    return seen


def start_and_signal(args: list[str], cwd: Path, cache: Path, sig: int, step: int) -> tuple[int, str]:
    """Start train.py and send `sig` to it when it prints step `step` (log_every must hit it):
    (exit code, the rest of its output)."""
    proc, line = start_train(args, cwd, cache), f"step {step:6d}"
    try:
        output_until(proc, line)
        os.kill(proc.pid, sig)
    except BaseException:
        proc.close()  # it never printed the line: stopped, not waited for
        raise
    code, output = proc.finish(60)
    return code, output[output.index("\n", output.index(line)) + 1 :]


def same_run(straight, resumed, run_dir: Path) -> None:
    """A resumed run ended as the uninterrupted one (straight: (its process result, its run dir)):
    bit-identical weights, the same summary numbers, one W&B run."""
    from safetensors.torch import load_file

    from autolab import report

    a = load_file(str(straight[1] / "checkpoint" / "model.safetensors"))
    b = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical
    s1, s2 = report.parse_summary(straight[0].stdout), report.parse_summary(resumed.stdout)
    for key in ("val_bpb", "num_steps", "total_tokens_M", "replay_share", "reward"):  # those the stage reports
        assert s1.get(key) == s2.get(key), key
    ids = {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert len(ids) == 1  # the resumed run continued the same W&B run


def run_train(args: list[str], cwd: Path, cache: Path, env: dict | None = None, timeout: int = 600):
    """Run train.py in a process of its own, as a user would, from `cwd` (where results.tsv lands): a fork of
    a warm process that has imported torch and Lightning already (tests/forked.py)."""
    full_env = {**os.environ, "AUTOLAB_CACHE": str(cache), "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("WANDB_MODE", None)
    return forked.run([ROOT / "train.py", *args], cwd, full_env, timeout)


# quickstart's GPT made smaller still (0.55M parameters instead of 2.9M; the 8192-token vocabulary stays):
# every run scores 500 KB of validation text per domain before and after, which on 2 CPU cores costs far
# more than its few training steps. No test asserts on the model's size or quality beyond "it trained".
SMALL_MODEL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32"]
# The validation text of a run whose data domain is not what its test checks (DPO, GRPO, reward, start scores):
# chat's is 34k tokens, 1.0 s to score on a core for SMALL_MODEL; code's (the experiments' choice) 123k, 3.6 s.
QUICK_DOMAIN = "data.domain=chat"

TINY = [  # a few CPU steps of the tiny model: what every end-to-end test starts from
    "+experiment=quickstart",
    *SMALL_MODEL,
    "trainer.max_steps=4",
    "trainer.log_every=2",
    "data.seq_len=64",
    "data.batch_size=4",
    "eval.batch_size=64",
]


def base_overrides(*overrides: str) -> str:
    """`base_overrides=[...]` for an `experiment:NAME` base: the small model without W&B (no test reads a
    base's W&B run; its service costs a second or two a run), then `overrides`."""
    return "base_overrides=[" + ",".join(f'"{o}"' for o in [*SMALL_MODEL, "logger=none", *overrides]) + "]"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, cache) -> Path:
    """The run dir of a finished TINY train.py run of 30 steps (logger=none, a snapshot every 10 steps):
    checkpoint/ (a trained HF folder), resume/, .hydra/, summary.json. Made once per session and shared:
    read it, or copy it (shutil.copytree) before writing into it."""
    args = [*TINY, "trainer.max_steps=30", "trainer.snapshot_every_steps=10", "logger=none"]
    return train_to_end(tmp_path_factory.mktemp("trained"), cache, args)[1]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, cache) -> Path:
    """A randomly initialised Llama folder with its OWN byte-level BPE tokenizer (400 tokens),
    as a hub model would come: nothing of autolab's tokenizer in it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = prepare.load_documents("prose", "train")[:40] + prepare.load_documents("code", "train")[:40]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="<s>")
    tok.save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=128,
    )).save_pretrained(folder)
    return folder
