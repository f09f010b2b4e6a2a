"""DPO throughput and memory: our DPO stage against TRL's DPOTrainer, same model and data, one run.

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m
    python benchmarks/dpo_vs_trl.py --model /tmp/llama150m --batch-size 16 --max-length 256

Both: the same HF Llama (fp32 master weights, bf16 autocast), a frozen reference copy, activation
checkpointing on in both (TRL's default) or off in both (--no-checkpointing), the same
preference pairs (prepare.py's embedded set), the same batch size, max_length, beta, AdamW and
learning rate. Each is timed over --steps optimiser steps after --warmup untimed ones (device
sync at both ends) and its peak GPU memory read from a fresh counter. TRL runs as users run it:
DPOTrainer.train() with logging and saving turned off.

Rounds alternate (TRL, ours, TRL, ours, ...), each in a fresh process, and the table gives medians.
Each run also records every step's time and how many graphs torch.compile built inside the timed
window: a compile there (a new shape, a guard that fails) costs seconds and was what made single
runs of this benchmark disagree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rows(n: int) -> list[dict]:
    import prepare

    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in prepare.load_preferences("train")[:n]]


def run_trl(args, data: list[dict]) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    marks = {}

    class Stopwatch(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            sync()
            marks[state.global_step] = time.perf_counter()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    config = DPOConfig(
        output_dir="/tmp/trl_bench", per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        beta=0.1, learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=max(1, (args.warmup + args.steps) // 10),
        max_steps=args.warmup + args.steps,
        bf16=True, logging_steps=10_000, save_strategy="no", report_to="none", disable_dropout=True,
        dataloader_num_workers=0, max_grad_norm=1.0, gradient_checkpointing=args.checkpointing,
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_list(data),
                         processing_class=tok, callbacks=[Stopwatch()])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return _rates(args, marks)


def _rates(args, marks: dict) -> dict:
    """Throughput over the timed window, per-step times, and graphs compiled inside the window."""
    seconds = marks[args.warmup + args.steps] - marks[args.warmup]
    steps = [1e3 * (marks[i + 1] - marks[i]) for i in range(args.warmup, args.warmup + args.steps)]
    return {"pairs_per_sec": args.steps * args.batch_size / seconds, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            "step_ms": steps, "slowest_step_ms": max(steps), "median_step_ms": sorted(steps)[len(steps) // 2],
            "compiles_in_window": marks.get("compiles_after", 0) - marks.get("compiles_before", 0)}


def _compiles() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def run_ours(args, data: list[dict]) -> dict:
    import copy

    import lightning as L
    from omegaconf import OmegaConf

    from autolab.callbacks import Budget, TimeBudget
    from autolab.config import OptimConf
    from autolab.data.preference import PreferenceBatches, tokenize_pairs
    from autolab.models import load_pretrained
    from autolab.stages import DPOStage

    torch.manual_seed(0)
    model, tok = load_pretrained(args.model)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.cuda()
    reference = copy.deepcopy(model).eval().requires_grad_(False).to(torch.bfloat16)
    d = OmegaConf.create({"reference": "frozen", "beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0,
                          "max_length": args.max_length, "max_prompt_length": None, "min_response_tokens": 4,
                          "columns": {}})
    pairs = tokenize_pairs(data, tok, d)
    optim = OmegaConf.structured(OptimConf(name="adamw", betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0,
                                           embedding_lr_scale=1.0, head_lr_scale=1.0))
    schedule = OmegaConf.create({"peak_lr": 1e-6, "initial_lr": 0.0, "warmup": 0.1, "min_lr_ratio": 0.0})
    budget = Budget(1e9, max_steps=args.warmup + args.steps, untimed_steps=args.warmup)
    marks = {}

    class Stopwatch(L.Callback):
        def on_train_batch_end(self, *a):
            sync()
            marks[budget.steps] = time.perf_counter()
            if budget.steps == args.warmup:
                marks["compiles_before"] = _compiles()
            if budget.steps == args.warmup + args.steps:
                marks["compiles_after"] = _compiles()

    stage = DPOStage(model, optim, schedule, budget, 1.0, dpo=d, reference=reference, compile=True)
    trainer = L.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=-1, logger=False,
                        callbacks=[TimeBudget(budget), Stopwatch()], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(PreferenceBatches(pairs, args.batch_size, 0), batch_size=None, pin_memory=True)
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(stage, loader)
    return _rates(args, marks)


def main() -> None:
    import statistics
    import subprocess
    import sys

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each run in a fresh process")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="activation checkpointing in both (TRL 1.16's DPOConfig default is on)")
    p.add_argument("--only", choices=["trl", "ours"], help=argparse.SUPPRESS)  # one run, in this process
    p.add_argument("--out", default="dpo_vs_trl.json")
    args = p.parse_args()
    if args.only:
        data = rows((args.warmup + args.steps) * args.batch_size)
        run = run_trl if args.only == "trl" else run_ours
        print(json.dumps(run(args, data)))
        return
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for r in range(args.rounds):
        for name in runs:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--only", name]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            x = runs[name][-1]
            print(f"round {r} {name}: {x['pairs_per_sec']:.1f} pairs/s, median step {x['median_step_ms']:.0f} ms, "
                  f"slowest {x['slowest_step_ms']:.0f} ms, {x['compiles_in_window']} compiles in the window", flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps,
              "warmup": args.warmup, "activation_checkpointing": args.checkpointing, "rounds": runs}
    for name, rs in runs.items():
        result[name] = {k: statistics.median(x[k] for x in rs) for k in ("pairs_per_sec", "peak_mb")}
    result["speedup"] = result["ours"]["pairs_per_sec"] / result["trl"]["pairs_per_sec"]
    result["memory_ratio"] = result["ours"]["peak_mb"] / result["trl"]["peak_mb"]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("--- medians of", args.rounds, "alternating rounds")
    for name in ("trl", "ours"):
        print(f"{name}: {result[name]['pairs_per_sec']:.1f} pairs/s, peak {result[name]['peak_mb']:.0f} MB")
    print(f"speedup: {result['speedup']:.2f}x, memory: {result['memory_ratio']:.2f}x of TRL's")


if __name__ == "__main__":
    main()
