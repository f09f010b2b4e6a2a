"""CPU runs with and without PyTorch's transparent-huge-page allocation (THP_MEM_ALLOC_ENABLE, which
autolab sets to 1 unless the environment says otherwise: src/autolab/__init__.py).

    python benchmarks/cpu_hugepages.py --model ~/.cache/autolab/experiments/quickstart-*/checkpoint \\
        --rounds 5 --out benchmarks/results/cpu_hugepages.json

Each round runs `evaluate_bpb` (the fixed evaluator, on the prose domain's validation text) in a fresh
process, once with THP_MEM_ALLOC_ENABLE=0 and once with 1, alternating which goes first; the result
gives the medians of wall, user and system seconds, their ratio, and the bpb of both (which must be the
same: only where memory comes from changes). Without the setting, each batch's logits (more than
glibc's 32 MB mmap threshold) are a fresh mapping that the kernel faults in 4 KB at a time, so a large
part of the time is system time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
import torch
import prepare
import autolab.models  # noqa: F401  registers autolab_gpt
from transformers import AutoModelForCausalLM
torch.set_num_threads({threads})
model = AutoModelForCausalLM.from_pretrained({model!r})
tokenizer, texts = prepare.Tokenizer.load(), prepare.val_documents({domain!r})
t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
bpb = prepare.evaluate_bpb(model, tokenizer, texts, seq_len={seq_len}, batch_size={batch})
e = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"bpb": bpb, "wall": time.perf_counter() - t, "user": e.ru_utime - r.ru_utime, "sys": e.ru_stime - r.ru_stime}}))
"""


def one(args, thp: str) -> dict:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": thp}
    code = PROBE.format(root=str(ROOT), threads=args.threads, model=str(args.model), domain=args.domain,
                        seq_len=args.seq_len, batch=args.batch_size)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a saved checkpoint folder (autolab's or any causal LM)")
    p.add_argument("--domain", default="prose")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="eval.batch_size")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"0": [], "1": []}
    for k in range(args.rounds):
        for thp in ("0", "1") if k % 2 == 0 else ("1", "0"):
            runs[thp].append(one(args, thp))
            print(f"round {k + 1} THP_MEM_ALLOC_ENABLE={thp}: {json.dumps(runs[thp][-1])}", flush=True)
    median = {thp: {key: statistics.median(r[key] for r in rs) for key in ("wall", "user", "sys")} for thp, rs in runs.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
        "model": str(args.model), "domain": args.domain, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "rounds": args.rounds, "median_off": median["0"], "median_on": median["1"],
        "speedup_wall": median["0"]["wall"] / median["1"]["wall"],
        "same_bpb": len({r["bpb"] for rs in runs.values() for r in rs}) == 1, "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
