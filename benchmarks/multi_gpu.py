"""Tokens/s on N devices against 1, through train.py itself (DDP, autolab/distributed.py), for the
default GPT pretraining and for continued pretraining of a 171M HF Llama.

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m      # the Llama (171M with its vocabulary)
    python benchmarks/multi_gpu.py --devices 2 --rounds 2 --llama /tmp/llama150m --out benchmarks/results/multi_gpu_h200x2.json

Weak scaling, as a user scales out: the batch per device stays the same (`--batch` rows of 2048
tokens), so the global `data.batch_size` is N x --batch. Each run trains `--steps` steps; the first
`untimed` ones (compilation) are left out of the rate, as train.py leaves them out of its budget.
Rounds alternate 1 and N devices, and the table gives the median ratio over rounds.
On a CPU (`--cpu`) it runs the quickstart model, to check the script, not to measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from autolab import report  # noqa: E402


def configs(args) -> dict[str, list[str]]:
    if args.cpu:
        return {"quickstart GPT (CPU)": ["+experiment=quickstart", "data.seq_len=128"]}
    out = {"default GPT 50M (pretrain, Muon)": [f"data={args.data}"]}
    if args.llama:
        out["Llama 171M (CPT, AdamW)"] = ["stage=cpt", f"init_from={args.llama}", f"data={args.data}",
                                          "trainer.activation_checkpointing=false"]
    return out


def rate(overrides: list[str], devices: int, args, work: Path) -> dict:
    """One train.py run: its tokens/s over the timed steps, from its summary."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"trainer.devices={devices}",
           f"data.batch_size={args.batch * devices}", f"trainer.max_steps={args.steps}",
           f"trainer.untimed_steps={args.untimed}", "logger=none", "eval.curve_every=0",
           f"ledger={work / 'results.tsv'}", f"hydra.run.dir={work / f'run{devices}'}"]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    s = report.parse_summary(r.stdout)
    if r.returncode or s.get("status") != "ok":
        raise SystemExit(f"{' '.join(overrides)} on {devices}: failed\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    steps, seconds = int(s["num_steps"]), float(s["training_seconds"])
    per_step = float(s["total_tokens_M"]) * 1e6 / steps
    return {"tokens_per_sec": (steps - args.untimed) * per_step / seconds, "val_bpb": float(s["val_bpb"]),
            "mfu_percent": None if s["mfu_percent"] == "n/a" else float(s["mfu_percent"]),
            "peak_vram_mb": float(s["peak_vram_mb"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--untimed", type=int, default=20)
    p.add_argument("--batch", type=int, default=32, help="rows per device")
    p.add_argument("--data", default="code", help="the corpus (tokens/s does not depend on it)")
    p.add_argument("--llama", help="an HF Llama folder (benchmarks/make_llama.py) for the CPT row")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in configs(args).items():
            runs = {1: [], args.devices: []}
            for i in range(args.rounds):
                for n in (1, args.devices) if i % 2 == 0 else (args.devices, 1):  # alternate which goes first
                    runs[n].append(rate(overrides, n, args, Path(tmp)))
                    print(f"{name} | round {i + 1} | {n} device(s): {runs[n][-1]['tokens_per_sec']:,.0f} tok/s", flush=True)
            ratios = [b["tokens_per_sec"] / a["tokens_per_sec"] for a, b in zip(runs[1], runs[args.devices])]
            results[name] = {"runs": {str(k): v for k, v in runs.items()}, "ratios": ratios,
                             "median_ratio": statistics.median(ratios), "overrides": overrides}
    print(f"\n| model | 1 device tok/s | {args.devices} devices tok/s | ratio (median of {args.rounds}) |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        one = statistics.median(x["tokens_per_sec"] for x in r["runs"]["1"])
        many = statistics.median(x["tokens_per_sec"] for x in r["runs"][str(args.devices)])
        print(f"| {name} | {one:,.0f} | {many:,.0f} | {r['median_ratio']:.3f}x |")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
