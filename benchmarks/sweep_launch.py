"""A 4-job sweep three ways: one after another in one process (Hydra's basic launcher), on local
slots (hydra/launcher=local, 2 at a time) and on SLURM (hydra/launcher=slurm, 1 CPU per job):
the sweep's wall time and, per job, the time from submission to its first training step.

    sudo bash scripts/slurm-local.sh up
    python benchmarks/sweep_launch.py --rounds 3 --out benchmarks/results/sweep_launch_cpu.json

Rounds alternate the launchers (A B C, A B C, ...) so that drift on a noisy machine hits each alike;
the table gives medians over rounds. Every job is the quickstart model for a fixed number of steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ["+experiment=quickstart", "trainer.max_steps=150", "data.seq_len=128", "data.batch_size=8",
       "logger=none", "optim.weight_decay=0,0.05,0.1,0.2"]
LAUNCHERS = {
    "sequential (basic launcher)": [],
    "local, 2 slots": ["hydra/launcher=local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.slots=2",
                       "hydra.launcher.cpus_per_task=1"],
    "SLURM, 1 CPU per job": ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
                             "hydra.launcher.mem_gb=2"],
}


def sweep(launcher: list[str], work: Path) -> dict:
    sweep_dir = work / "sweep"
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *JOB, *launcher, f"hydra.sweep.dir={sweep_dir}"],
                       cwd=work, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep failed: {r.stderr[-2000:]}")
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    assert len(jobs) == 4 and all(j["status"] == "ok" for j in jobs), jobs
    return {"wall_s": wall, "first_step_s": sorted(j["first_step_at"] - t0 for j in jobs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in LAUNCHERS}
    for round_ in range(args.rounds):
        for name, launcher in LAUNCHERS.items():
            with tempfile.TemporaryDirectory() as work:
                runs[name].append(sweep(launcher, Path(work)))
            print(f"round {round_ + 1}: {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    base = statistics.median(r["wall_s"] for r in runs["sequential (basic launcher)"])
    print("\n| launcher | sweep wall time | vs sequential | submission to first step, jobs 1-4 |")
    print("| --- | --- | --- | --- |")
    table = {}
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        first = [statistics.median(r["first_step_s"][i] for r in rs) for i in range(4)]
        table[name] = {"wall_s": wall, "speedup": base / wall, "first_step_s": first}
        print(f"| {name} | {wall:.1f} s | {base / wall:.2f}x | " + ", ".join(f"{s:.1f} s" for s in first) + " |")
    if args.out:
        args.out.write_text(json.dumps({"job": JOB, "rounds": args.rounds, "medians": table, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
