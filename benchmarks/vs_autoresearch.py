"""autolab's default GPU run against karpathy/autoresearch's train.py, on the same corpus and split,
for the same 300 s of training: val_bpb, tokens, passes over the data, MFU, peak RSS, wall time.

    python prepare.py --sources                       # the corpus: installed packages' sources, 4 kB pieces
    python prepare.py --sources --new-tokenizer       # optional: our tokenizer trained on it too, as autoresearch's is
    python benchmarks/vs_autoresearch.py autolab --out autolab.json
    python benchmarks/vs_autoresearch.py autoresearch --repo .ar --out autoresearch.json
    python benchmarks/vs_autoresearch.py autolab --seconds 5 --eval-bytes 20000 +experiment=quickstart \
        model=gpt_50m data.batch_size=2 trainer.max_steps=2      # a CPU smoke run of this harness (~1 min)

Every result names its GPU (`device`): compare rows of one kind only. autolab's result also has
`phases`: where its wall time went (start-up, setup, first step with compilation, training, final
snapshot, evaluation, checkpoint, report, exit; see `phases`), for the overhead around the budget.

`--repo` holds autoresearch's train.py and prepare.py as fetched (never committed here). It is run as
its README says, with two changes its users make on machines without FA3: attention through
PyTorch's scaled_dot_product_attention, and sliding windows off (WINDOW_PATTERN "L"); nothing else.
Its data folder gets the `sources` domain's Parquet shards (train shards as its training shards, the
val shard as its pinned validation shard), and its own prepare.py trains its own tokenizer on them.
Pieces are at most 4 kB, so its best-fit packing (which crops documents longer than a row) keeps
every document whole.

Each program's own val_bpb scores different text: ours the first 500 kB of validation documents in
pinned order (prepare.EVAL_BYTES), autoresearch's 21M tokens of its validation loader (best-fit
packed rows, the split and a half again). So both final models are also scored by autolab's fixed
evaluator, `prepare.evaluate_bpb`, on the same documents: the first `--eval-bytes` of the validation
split in pinned order (default: all of it). That is `same_text_bpb`, the figure to compare; for
autoresearch it runs in its own process after its summary (APPEND), on its model and tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from autolab.report import parse_summary

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import json, resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[1:]); "
         "print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
         "'wall_s': time.time() - t}), file=sys.stderr); sys.exit(r.returncode)")
PATCHES = [  # (what autoresearch's train.py says, what it becomes): SDPA instead of FA3, no sliding windows
    ("from kernels import get_kernel\n", ""),
    ('repo = "varunneal/flash-attention-3" if cap == (9, 0) else "kernels-community/flash-attn3"\n', ""),
    ("fa3 = get_kernel(repo).flash_attn_interface\n", ""),
    ("y = fa3.flash_attn_func(q, k, v, causal=True, window_size=window_size)",
     "y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)"),
    ('WINDOW_PATTERN = "SSSL"', 'WINDOW_PATTERN = "L"'),
]

APPEND = """
# appended by autolab's vs_autoresearch.py: the final model scored by autolab's evaluator on autolab's text
import importlib.util, resource, types
print(f"train_rss_mb:     {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")  # before ours: its RSS
_spec = importlib.util.spec_from_file_location("autolab_prepare", os.environ["AUTOLAB_PREPARE"])
_ap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ap)


class _Tokenizer:  # the Hugging Face tokenizer interface that prepare.evaluate_bpb reads
    bos_token_id, eos_token_id = tokenizer.get_bos_token_id(), None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": tokenizer.enc.encode_ordinary_batch(texts, num_threads=8)}


class _Logits(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return types.SimpleNamespace(logits=self.m(input_ids))


_t = time.time()
_texts = _ap.val_documents(_ap.SOURCES, int(os.environ["AUTOLAB_EVAL_BYTES"]))
_bpb = _ap.evaluate_bpb(_Logits(getattr(model, "_orig_mod", model)), _Tokenizer(), _texts)
print(f"same_text_bpb:    {_bpb:.6f}")
print(f"same_text_bytes:  {sum(len(t.encode()) for t in _texts)}")
print(f"same_text_eval_s: {time.time() - _t:.1f}")
"""


def same_text_bpb(checkpoint: Path, max_bytes: int) -> dict:
    """autolab's final model (its run's checkpoint folder) scored on the first max_bytes of the
    validation split: the text the APPEND scores autoresearch's model on."""
    import torch
    from transformers import AutoModelForCausalLM

    import autolab.models  # noqa: F401  (registers the GPT with AutoModelForCausalLM)
    import prepare

    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(checkpoint).to("cuda" if torch.cuda.is_available() else "cpu")
    texts = prepare.val_documents(prepare.SOURCES, max_bytes)
    bpb = prepare.evaluate_bpb(model, prepare.Tokenizer.load(checkpoint), texts)
    return {"same_text_bpb": bpb, "same_text_bytes": sum(len(x.encode()) for x in texts), "same_text_eval_s": time.time() - t}


def measured(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """Runs cmd under PROBE (peak RSS, wall time); `stamps` holds when each output line came, in
    seconds since the start (unix time in `t0`), for the breakdown of the wall time (`phases`)."""
    stamps, t0 = [], time.time()
    with log.open("w") as f, subprocess.Popen([sys.executable, "-c", PROBE, *cmd], cwd=cwd, env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
        for line in p.stdout:
            stamps.append((time.time() - t0, line))
            f.write(line)
    text = log.read_text()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    return {**json.loads(text.strip().splitlines()[-1]), "summary": parse_summary(text),  # both programs end with a --- block
            "stamps": stamps, "t0": t0}


def phases(out: dict, run_dir: Path) -> dict:
    """Where autolab's wall time goes, in seconds, from when its lines were printed, the times
    summary.json keeps (run start, first step) and when the run's files were written:
    start-up (interpreter, imports, Hydra) until run() starts; setup (data, model) until the
    `model:` line; first_step (Lightning's set-up, compilation, the first step); training (until the
    last progress line: the untimed steps and the budget); final_snapshot (resume/ written at the
    end); final_eval (fit's teardown and evaluate_bpb at EVAL_BYTES, until the checkpoint's weights
    start); checkpoint (weights and tokenizer); report (ledger, summary); exit (interpreter teardown)."""
    t0, stamps = out["t0"], out["stamps"]
    facts = json.loads((run_dir / "summary.json").read_text())
    model_line = next(t for t, line in stamps if line.startswith("model:"))
    last_step = [t for t, line in stamps if line.startswith("step ")][-1]
    summary_line = next(t for t, line in stamps if line.strip() == "---")
    mtime = lambda p: (run_dir / p).stat().st_mtime - t0  # noqa: E731
    snap = mtime("resume/state.pt") if (run_dir / "resume/state.pt").exists() else last_step
    weights_start = min(mtime(f"checkpoint/{x.name}") for x in (run_dir / "checkpoint").iterdir())
    marks = [("startup", facts["started_at"] - t0), ("setup", model_line), ("first_step", facts["first_step_at"] - t0),
             ("training", last_step), ("final_snapshot", snap), ("final_eval", weights_start),
             ("checkpoint", max(mtime(f"checkpoint/{x.name}") for x in (run_dir / "checkpoint").iterdir())),
             ("report", summary_line), ("exit", out["wall_s"])]
    result, before = {}, 0.0
    for name, at in marks:
        result[name] = round(at - before, 2)
        before = at
    return result


def run_autolab(args, env: dict) -> dict:
    import prepare

    out = measured([sys.executable, str(ROOT / "train.py"), f"trainer.time_budget={args.seconds}", "logger=none",
                    *args.overrides], ROOT, env, args.log)
    s = out["summary"]
    tok = prepare.Tokenizer.load()
    train_tokens = sum(len(x) for x in prepare.load_tokens(prepare.SOURCES, "train", tok))
    breakdown = phases(out, Path(s["output_dir"]))
    same = same_text_bpb(Path(s["output_dir"]) / "checkpoint", args.eval_bytes)
    return {"val_bpb": float(s["val_bpb"]), **same, "tokens_M": float(s["total_tokens_M"]),
            "passes": float(s["total_tokens_M"]) * 1e6 / train_tokens,
            "mfu_percent": None if s["mfu_percent"] == "n/a" else float(s["mfu_percent"]),  # n/a: a CPU smoke run
            "training_seconds": float(s["training_seconds"]), "num_steps": int(s["num_steps"]),
            "rss_mb": out["rss_mb"], "wall_s": out["wall_s"], "peak_vram_mb": float(s["peak_vram_mb"]),
            "phases": breakdown}


def run_autoresearch(args, env: dict) -> dict:
    import prepare

    repo = args.repo.resolve()
    work = Path("/tmp/autoresearch_run")
    work.mkdir(parents=True, exist_ok=True)
    train = (repo / "train.py").read_text()
    for old, new in PATCHES:
        if old not in train:
            raise SystemExit(f"autoresearch's train.py changed: {old.strip()!r} not found; update PATCHES")
        train = train.replace(old, new)
    (work / "train.py").write_text(train + APPEND)
    (work / "prepare.py").write_text((repo / "prepare.py").read_text())
    home = work / "home"
    data = home / ".cache" / "autoresearch" / "data"
    data.mkdir(parents=True, exist_ok=True)
    src = prepare.data_dir(prepare.SOURCES)
    for i, shard in enumerate(sorted(src.glob("train-*.parquet"))):
        (data / f"shard_{i:05d}.parquet").unlink(missing_ok=True)
        (data / f"shard_{i:05d}.parquet").symlink_to(shard)
    val = data / "shard_06542.parquet"  # its pinned validation shard
    val.unlink(missing_ok=True)
    val.symlink_to(next(src.glob("val-*.parquet")))
    ours = {str(ROOT), str(ROOT / "src"), str(ROOT / "benchmarks")}  # its `prepare` must be its own
    env = {**env, "HOME": str(home), "AUTOLAB_PREPARE": str(ROOT / "prepare.py"),
           "AUTOLAB_CACHE": str(prepare.cache_dir()), "AUTOLAB_EVAL_BYTES": str(args.eval_bytes),
           "PYTHONPATH": ":".join(x for x in env.get("PYTHONPATH", "").split(":") if x and x.rstrip("/") not in ours)}
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import prepare; prepare.train_tokenizer()"], cwd=work, env=env, check=True)
    tokenizer_s = time.time() - t0
    out = measured([sys.executable, "train.py"], work, env, args.log)
    s = out["summary"]
    count = ("import prepare, pyarrow.parquet as pq, glob; t = prepare.Tokenizer.from_directory(); "
             "files = [f for f in sorted(glob.glob(prepare.DATA_DIR + '/shard_*.parquet')) if prepare.VAL_FILENAME not in f]; "
             "print(sum(len(ids) + 1 for f in files for ids in t.encode(pq.read_table(f, columns=['text']).column('text').to_pylist())))")
    train_tokens = int(subprocess.run([sys.executable, "-c", count], cwd=work, env=env, capture_output=True,
                                      text=True, check=True).stdout.strip())
    return {"val_bpb": float(s["val_bpb"]), "same_text_bpb": float(s["same_text_bpb"]),
            "same_text_bytes": int(s["same_text_bytes"]), "same_text_eval_s": float(s["same_text_eval_s"]),
            "tokens_M": float(s["total_tokens_M"]),
            "passes": float(s["total_tokens_M"]) * 1e6 / train_tokens, "mfu_percent": float(s["mfu_percent"]),
            "training_seconds": float(s["training_seconds"]), "num_steps": int(s["num_steps"]),
            "rss_mb": float(s["train_rss_mb"]), "wall_s": out["wall_s"] - float(s["same_text_eval_s"]),
            "peak_vram_mb": float(s["peak_vram_mb"]), "tokenizer_training_s": tokenizer_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("system", choices=["autolab", "autoresearch"])
    p.add_argument("--repo", type=Path, default=ROOT / ".ar", help="autoresearch's train.py and prepare.py")
    p.add_argument("--seconds", type=int, default=300)
    p.add_argument("--eval-bytes", type=int, default=2**40,
                   help="validation text both final models are scored on by autolab's evaluator (default: the whole split)")
    p.add_argument("--log", type=Path, default=Path("run.log"))
    p.add_argument("--out", type=Path, default=Path("vs_autoresearch.json"))
    args, args.overrides = p.parse_known_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = run_autolab(args, env) if args.system == "autolab" else run_autoresearch(args, env)
    import torch  # which GPU: runs compare only on the same kind (an H100's table is no H200's)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"system": args.system, "device": device, "torch": torch.__version__, "overrides": args.overrides, **result}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
