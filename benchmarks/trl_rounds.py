"""What the benchmarks against TRL share (dpo_vs_trl.py, grpo_vs_trl.py, reward_vs_trl.py).

- Rounds: TRL and ours alternate (TRL, ours, TRL, ours, ...), each run in a fresh process (the script
  again, with `--only trl|ours`, printing one JSON line); the table and the --out file give medians.
- A run's numbers: step-end times (device sync at each) -> units/s over the timed window after the
  warm-up steps, every step's time, and the graphs torch.compile built inside the window; peak memory
  from a counter reset before training (GPU: max_memory_allocated; CPU smoke runs: the process's
  max RSS, which is not comparable with a GPU's number).
- `run_stage`: one of our stages driven as run.py drives it (Hydra's composed config, the stage's
  recipe builds its data and LightningModule, Lightning fits it), without the measurements before and
  after training, the logger or snapshots.

Importing this module starts nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def compiles() -> int:
    """Graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def trl_device_args() -> dict:
    """TRL's (TrainingArguments') settings for this machine: bf16 autocast on a GPU, fp32 on the CPU."""
    cuda = torch.cuda.is_available()
    return {"bf16": cuda, "use_cpu": not cuda}


def arguments(description: str, config: str, out: str, steps: int, warmup: int) -> argparse.ArgumentParser:
    """The options every comparison with TRL has (--model, --steps, --warmup, --rounds, --checkpointing, --only,
    --out); `config` names TRL's config class whose checkpointing default both sides follow. A benchmark adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="a Hugging Face causal-LM folder (benchmarks/make_llama.py makes one)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each run in a fresh process")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help=f"activation checkpointing in both (TRL 1.16's {config} default is on)")
    p.add_argument("--only", choices=["trl", "ours"], help=argparse.SUPPRESS)  # one run, in this process
    p.add_argument("--out", default=out)
    return p


def versions() -> dict:
    """The device, what peak memory means on it, the libraries' versions and autolab's commit (a result's header)."""
    import importlib.metadata as md

    out = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})",
           "memory": "GPU max_memory_allocated" if torch.cuda.is_available() else "CPU max RSS of the process",
           "versions": {}}
    for name in ("torch", "transformers", "trl", "lightning", "accelerate", "datasets"):
        try:
            out["versions"][name] = md.version(name)
        except md.PackageNotFoundError:
            out["versions"][name] = None
    try:
        out["autolab_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                               text=True).stdout.strip() or None
    except OSError:
        out["autolab_commit"] = None
    return out


def rates(marks: dict, warmup: int, steps: int, per_step: dict[str, float]) -> dict:
    """Throughput over the timed window (`<unit>_per_sec` for each unit a step consumes), per-step times, and
    graphs compiled inside the window, from `marks`: step -> time.perf_counter() at that step's end (synced),
    plus optional "compiles_before"/"compiles_after"."""
    seconds = marks[warmup + steps] - marks[warmup]
    step_ms = [1e3 * (marks[i + 1] - marks[i]) for i in range(warmup, warmup + steps)]
    return {**{f"{unit}_per_sec": steps * n / seconds for unit, n in per_step.items()}, "peak_mb": peak_mb(),
            "step_ms": step_ms, "slowest_step_ms": max(step_ms), "median_step_ms": sorted(step_ms)[len(step_ms) // 2],
            "compiles_in_window": marks.get("compiles_after", 0) - marks.get("compiles_before", 0)}


def alternate(script: str, argv: list[str], rounds: int, line: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Every round runs `script argv --only trl`, then `... --only ours`, each in a fresh process; each prints
    its result as the last line of its stdout (JSON). A failed run stops everything with its stderr's tail."""
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for r in range(rounds):
        for name in runs:
            out = subprocess.run([sys.executable, script, *argv, "--only", name], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"round {r} {name} failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r} {name}: {line(runs[name][-1])}", flush=True)
    return runs


def medians(runs: dict[str, list[dict]], keys: tuple[str, ...]) -> dict:
    """{side: {key: median over its rounds}} for trl and ours, and ours / TRL of each key (`ratio`)."""
    out = {name: {k: statistics.median(x[k] for x in rs) for k in keys if all(x.get(k) is not None for x in rs)}
           for name, rs in runs.items()}
    out["ratio"] = {k: out["ours"][k] / out["trl"][k] for k in out["ours"] if out["trl"].get(k)}
    return out


def write(out: str, result: dict) -> None:
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


def compose(overrides: list[str]):
    """The run's config as train.py composes it (conf/train.yaml + overrides), without Hydra's run dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from autolab.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, "output_dir=/tmp/trl_rounds", "logger=none"])


def run_stage(cfg, model_path: str, warmup: int, steps: int, checkpointing: bool,
              on_step: Callable[[dict], None] | None = None) -> tuple[dict, object]:
    """Our stage `cfg.stage.recipe` from the HF folder `model_path`, as run.py builds and fits it: the stage's
    recipe (its data, module, reference, rewards), bf16 autocast on a GPU (fp32 on the CPU), torch.compile
    where the stage compiles on a GPU, warmup + steps optimiser steps. Returns (step marks for `rates`, the
    recipe's StageParts); `on_step(outputs)` sees each training step's outputs after the device sync."""
    import lightning as L

    from autolab.callbacks import Budget, TimeBudget
    from autolab.models import load_pretrained
    from autolab.stages.recipe import Context, recipe_of

    dev = device()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, tokenizer = load_pretrained(model_path)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    recipe = recipe_of(cfg.stage.recipe)
    model = recipe.wrap(cfg, model).to(dev)
    budget = Budget(1e9, max_steps=warmup + steps, untimed_steps=warmup)
    common = dict(optim=cfg.optim, schedule=cfg.schedule, budget=budget, grad_clip=cfg.trainer.grad_clip, restore=None)
    max_len = getattr(model.config, "max_position_embeddings", None) or 2048
    parts = recipe.build(Context(cfg, model, tokenizer, dev, max_len, dev.type == "cuda", common, Path("/tmp/trl_rounds"),
                                 model_path, initial_model=lambda: load_pretrained(model_path)[0]))
    marks: dict = {}

    class Stopwatch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync()
            marks[budget.steps] = time.perf_counter()
            if budget.steps == warmup:
                marks["compiles_before"] = compiles()
            if budget.steps == warmup + steps:
                marks["compiles_after"] = compiles()
            if on_step is not None:
                on_step(outputs)

    trainer = L.Trainer(accelerator=dev.type, devices=1, precision="bf16-mixed" if dev.type == "cuda" else "32-true",
                        max_epochs=-1, logger=False, callbacks=[TimeBudget(budget), Stopwatch()],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    loader = torch.utils.data.DataLoader(parts.data, batch_size=None, pin_memory=dev.type == "cuda")
    model.train()
    reset_peak()
    trainer.fit(parts.module, loader)
    return marks, parts
