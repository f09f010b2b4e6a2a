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



def configs(args) -> dict[str, list[str]]:
    if args.cpu:
        return {"quickstart GPT (CPU)": ["+experiment=quickstart", "data.seq_len=128"]}
    out = {}
    if "gpt" in args.models:
        out["default GPT 50M (pretrain, Muon)"] = [f"data={args.data}"]
    if "llama" in args.models and args.llama:
        out["Llama 171M (CPT, AdamW)"] = ["stage=cpt", f"init_from={args.llama}", f"data={args.data}",
                                          "trainer.activation_checkpointing=false"]
    return out


def rate(overrides: list[str], devices: int, args, work: Path) -> dict:
    """One train.py run in a folder of its own: its tokens/s over the timed steps, from its summary."""
    run = work / f"run{len(list(work.glob('run*')))}"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"trainer.devices={devices}",
           f"data.batch_size={args.batch * devices}", f"trainer.max_steps={args.steps}",
           f"trainer.untimed_steps={args.untimed}", "logger=none", "eval.curve_every=0",
           f"ledger={work / 'results.tsv'}", f"hydra.run.dir={run}"]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if args.log:  # the run's output and its other ranks' logs
        with args.log.open("a") as f:
            f.write(f"\n=== {' '.join(overrides)} on {devices}\n{r.stdout}{r.stderr[-3000:]}")
            for log in sorted(run.glob("rank*.log")):
                f.write(f"--- {log.name}\n{log.read_text()[-3000:]}")
    if r.returncode or not (run / "summary.json").exists():
        raise SystemExit(f"{' '.join(overrides)} on {devices}: failed\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    s = json.loads((run / "summary.json").read_text())  # the printed block rounds; this does not
    steps, seconds = int(s["num_steps"]), float(s["training_seconds"])
    per_step = float(s["total_tokens_M"]) * 1e6 / steps
    return {"tokens_per_sec": (steps - args.untimed) * per_step / seconds, "val_bpb": s["val_bpb"],
            "mfu_percent": s.get("mfu_percent"), "peak_vram_mb": s.get("peak_vram_mb")}


def _label(devices: int, extra: list[str]) -> str:
    return f"{devices} device(s)" + "".join(f" {o}" for o in extra)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=220)
    p.add_argument("--untimed", type=int, default=20)
    p.add_argument("--batch", type=int, default=32, help="rows per device")
    p.add_argument("--data", default="code", help="the corpus (tokens/s does not depend on it)")
    p.add_argument("--llama", help="an HF Llama folder (benchmarks/make_llama.py) for the CPT row")
    p.add_argument("--models", type=lambda s: s.split(","), default=["gpt", "llama"])
    p.add_argument("--also", action="append", default=[], help="an override for one more N-device run per round")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--log", type=Path, help="append every run's output here")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in configs(args).items():
            # 1 device, N devices, and N devices with each --also override
            kinds = [(1, []), (args.devices, []), *((args.devices, [o]) for o in args.also)]
            runs = {_label(n, extra): [] for n, extra in kinds}
            for i in range(args.rounds):
                for n, extra in kinds if i % 2 == 0 else kinds[::-1]:  # alternate which goes first
                    runs[_label(n, extra)].append(rate(overrides + extra, n, args, Path(tmp)))
                    print(f"{name} | round {i + 1} | {_label(n, extra)}: {runs[_label(n, extra)][-1]['tokens_per_sec']:,.0f} tok/s",
                          flush=True)
            for label, rs in list(runs.items())[1:]:
                ratios = [b["tokens_per_sec"] / a["tokens_per_sec"] for a, b in zip(runs[_label(1, [])], rs)]
                results[f"{name}, {label}"] = {"runs": {"1": runs[_label(1, [])], str(args.devices): rs}, "ratios": ratios,
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
