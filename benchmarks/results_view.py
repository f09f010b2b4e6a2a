"""How long `python -m autolab.results` takes on a big ledger: the whole command (Python start-up,
imports, reading, the view), on a generated 10,000-row ledger with every report.LEDGER_COLUMNS column
(plus patch, overrides, sweep, job, tokens_per_second where report.py lacks them), two stages, two
tokenizers, failed runs, seed waves (noise groups) and a few malformed lines.

    python benchmarks/results_view.py --rows 10000 --out benchmarks/results/results_view_cpu.json

Each command runs --repeat times; the table shows the median and the fastest, and each as a ratio
to a bare `python -c pass` on the same machine (the floor no Python command goes under), and the
CPU time (user + system) the command used, steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from autolab import report

ROOT = Path(__file__).resolve().parents[1]
NEW_COLUMNS = ("patch", "overrides", "sweep", "job", "tokens_per_second")  # added to the ledger in issue 27
VIEWS = {
    "python -c pass (floor)": None,
    "default (last 20)": [],
    "--all > /dev/null": ["--all"],
    "--best": ["--best"],
    "--noise": ["--noise"],
    "filters": ["--stage", "pretrain", "--status", "ok", "--experiment", "quick*", "--since", "2026-12-03"],
    "--diff 1 -1": ["--diff", "1", "-1"],
    "--plot (matplotlib)": ["--plot", "PNG"],
}


def columns() -> list[str]:
    return [*report.LEDGER_COLUMNS, *(c for c in NEW_COLUMNS if c not in report.LEDGER_COLUMNS)]


def write_ledger(path: Path, rows: int, seed: int = 0) -> None:
    """A ledger like a long agent session: lr/width tries, seed waves of the same config, failures."""
    rng = random.Random(seed)
    cols = columns()
    lines = ["\t".join(cols)]
    start = 1_764_979_200  # 2025-12-06 00:00 UTC; one run every ~5 minutes
    wave, wave_commit = [], ""
    for i in range(rows):
        if i % 997 == 500:
            lines.append("a line some other tool wrote\tinto the ledger")
            continue
        stage, tok = ("pretrain", "1a2b3c4d5e6f") if i % 10 < 7 else ("cpt", "9f8e7d6c5b4a")
        if i % 10 == 9:
            tok = "0badc0ffee00"  # a second tokenizer
        if not wave and rng.random() < 0.05:
            lr = rng.choice(["1e-3", "2e-3", "4e-3"])
            wave = [f"+experiment=quickstart schedule.peak_lr={lr} seed={s}" for s in (1, 2, 3)]
            wave_commit = f"{rng.randrange(16 ** 7):07x}"
        overrides = wave.pop() if wave else (f"+experiment={rng.choice(['quickstart', 'cpt_replay'])} "
                                             f"schedule.peak_lr={rng.choice(['1e-3', '2e-3', '4e-3'])} "
                                             f"model.n_embd={rng.choice([256, 384, 512])}")
        status = rng.choices(["ok", "crash", "diverged", "invalid"], [0.9, 0.04, 0.03, 0.03])[0]
        ok = status == "ok"
        row = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + 300 * i)),
            "commit": wave_commit if "seed=" in overrides else f"{rng.randrange(16 ** 7):07x}",
            "dirty": "clean", "patch": "", "stage": stage, "experiment": overrides.split()[0].split("=")[1],
            "val_bpb": 1.0 - i * 1e-5 + rng.gauss(0, 0.01) if ok else None,
            "training_seconds": 300.0, "total_seconds": 330.0 + rng.random() * 20, "num_steps": rng.randrange(500, 900),
            "tokens_per_second": rng.uniform(0.8e6, 1.6e6) if ok else None, "tokenizer": tok, "status": status,
            "description": f"try {i}: {rng.choice(['wider', 'longer warmup', 'lower lr', 'qk-norm'])}",
            "output_dir": f"/runs/outputs/{i:05d}", "overrides": overrides,
        }
        lines.append("\t".join(" ".join(report.format_value(row.get(c, ""), c).split()) for c in cols))
    path.write_text("\n".join(lines) + "\n")


def timed(args: list[str] | None, ledger: Path, repeat: int) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) of each run: on a shared machine the CPU time is the steadier one."""
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]  # this checkout's code first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-c", "pass"] if args is None else [sys.executable, "-m", "autolab.results",
                                                                "--ledger", str(ledger), *args]
    wall, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--work", default="/tmp/results_view")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/results_view_cpu.json"))
    args = p.parse_args()
    ledger = Path(args.work) / "results.tsv"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    write_ledger(ledger, args.rows)
    size = ledger.stat().st_size
    floor = None
    results = []
    print(f"{args.rows} rows, {size / 1e6:.1f} MB, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; seconds over {args.repeat} runs")
    print(f"{'command':<24} {'wall median':>11} {'wall min':>9} {'CPU median':>10} {'x floor (wall)':>14}")
    for name, view in VIEWS.items():
        view = view and [str(ledger.with_suffix(".png")) if a == "PNG" else a for a in view]
        wall, cpu = timed(view, ledger, args.repeat)
        med, low, cpu_med = statistics.median(wall), min(wall), statistics.median(cpu)
        floor = floor or med
        results.append({"view": name, "args": view, "wall_median_s": round(med, 4), "wall_min_s": round(low, 4),
                        "cpu_median_s": round(cpu_med, 4), "ratio_to_floor": round(med / floor, 2)})
        print(f"{name:<24} {med:>11.3f} {low:>9.3f} {cpu_med:>10.3f} {med / floor:>14.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "bytes": size, "repeat": args.repeat,
                               "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                               "python": platform.python_version(), "load_avg": os.getloadavg(),
                               "results": results}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
