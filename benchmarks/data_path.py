"""The data path at scale: generated corpora of growing size, each prepared by prepare.py (streaming)
and then trained on for a few steps. Per size: preparation time and peak RSS, the training run's
time to its first step and peak RSS, and the data path alone (packed rows from the memory-mapped
shards, the batches the default model trains on) in tokens/s.

    python benchmarks/data_path.py --sizes 0.1 1 10 --work /tmp/data_path --out benchmarks/results/data_path_cpu.json

Every size gets its own cache folder (the tokenizer is copied from $AUTOLAB_CACHE, so all sizes use
the same one). A training run's start-up is flat in the corpus size when the shards are memory
maps: nothing is read before a batch needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = ("import resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[1:]); "
         "print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
         "'seconds': time.time() - t, 'started': t}), file=sys.stderr); sys.exit(r.returncode)")


def measured(cmd: list[str], env: dict, cwd: Path) -> dict:
    """Run `cmd` as the only child of a probe process: its wall time and peak RSS."""
    r = subprocess.run([sys.executable, "-c", "import json; " + PROBE, *cmd], env=env, cwd=cwd,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return {**json.loads(r.stderr.strip().splitlines()[-1]), "stdout": r.stdout}


def data_path_rate(cache: Path, domain: str, batch: int, seq_len: int, seconds: float = 10.0) -> float:
    """Tokens/s of the packed-row loader alone over the domain's shards (as train.py reads them)."""
    os.environ["AUTOLAB_CACHE"] = str(cache)
    import prepare
    from autolab.data import PackedRows, token_shards

    rows = PackedRows(token_shards(prepare.Tokenizer.load(), domain), seq_len, batch, seed=0)
    it = iter(rows)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    return n * batch * seq_len / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.1, 1.0, 10.0], help="corpus sizes in GB")
    p.add_argument("--work", type=Path, default=Path("/tmp/autolab_data_path"))
    p.add_argument("--train", nargs="*", default=["+experiment=quickstart", "trainer.max_steps=20", "logger=none"],
                   help="train.py overrides for the timed start-up run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    from autolab.data.synthetic import write_corpus

    base = Path(os.environ.get("AUTOLAB_CACHE", Path.home() / ".cache" / "autolab"))
    results = []
    for size in args.sizes:
        name = f"gen{size:g}gb".replace(".", "_")
        work = args.work / name
        shutil.rmtree(work, ignore_errors=True)
        cache = work / "cache"
        cache.mkdir(parents=True)
        shutil.copytree(base / "tokenizer", cache / "tokenizer")
        env = {**os.environ, "AUTOLAB_CACHE": str(cache), "WANDB_SILENT": "true"}
        t0 = time.time()
        corpus = write_corpus(work / "corpus.jsonl", size * 1e9)
        generated = time.time() - t0
        prep = measured([sys.executable, str(ROOT / "prepare.py"), "--dataset", str(corpus), "--name", name], env, work)
        corpus.unlink()
        run = measured([sys.executable, str(ROOT / "train.py"), *args.train, f"data.domain={name}",
                        f"hydra.run.dir={work / 'run'}"], env, work)
        summary = json.loads((work / "run" / "summary.json").read_text())
        tokens = json.loads(next((cache / "data" / name / "tokens").glob("*/tokens.json")).read_text())
        row = {
            "size_gb": size, "generate_s": generated, "prepare_s": prep["seconds"], "prepare_rss_mb": prep["rss_mb"],
            "train_tokens": tokens["splits"]["train"]["tokens"],
            "first_step_s": summary["first_step_at"] - run["started"], "train_rss_mb": run["rss_mb"],
            "training_tokens_per_s": summary["total_tokens_M"] * 1e6 / summary["training_seconds"],
            "data_path_tokens_per_s": data_path_rate(cache, name, args.batch, args.seq_len),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(cache / "data" / name)  # the disk for the next size
    print("\n| corpus | train tokens | prepare | prepare peak RSS | train.py to first step | train.py peak RSS | data path |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['size_gb']:g} GB | {r['train_tokens'] / 1e6:,.0f}M | {r['prepare_s']:.0f} s | {r['prepare_rss_mb']:,.0f} MB | "
              f"{r['first_step_s']:.1f} s | {r['train_rss_mb']:,.0f} MB | {r['data_path_tokens_per_s'] / 1e6:,.0f}M tok/s |")
    if args.out:
        args.out.write_text(json.dumps({"train": args.train, "batch": args.batch, "seq_len": args.seq_len,
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
