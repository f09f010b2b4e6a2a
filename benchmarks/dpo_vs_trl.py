"""DPO throughput and memory: our DPO stage against TRL's DPOTrainer, same model and data, one run.

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m
    python benchmarks/dpo_vs_trl.py --model /tmp/llama150m --batch-size 16 --max-length 256

Both: the same HF Llama (fp32 master weights, bf16 autocast), a frozen reference copy, activation
checkpointing on in both (TRL's default) or off in both (--no-checkpointing), the same
preference pairs (prepare.py's embedded set), the same batch size, max_length, beta, AdamW and
learning rate. Each is timed over --steps optimiser steps after --warmup untimed ones (device
sync at both ends) and its peak GPU memory read from a fresh counter. TRL runs as users run it:
DPOTrainer.train() with logging and saving turned off.
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
            if state.global_step in (args.warmup, args.warmup + args.steps):
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
    seconds = marks[args.warmup + args.steps] - marks[args.warmup]
    return {"pairs_per_sec": args.steps * args.batch_size / seconds, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def run_ours(args, data: list[dict]) -> dict:
    import copy

    import lightning as L
    from omegaconf import OmegaConf

    from autolab.callbacks import Budget, TimeBudget
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
    optim = OmegaConf.create({"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0})
    schedule = OmegaConf.create({"peak_lr": 1e-6, "initial_lr": 0.0, "warmup": 0.1, "min_lr_ratio": 0.0})
    budget = Budget(1e9, max_steps=args.warmup + args.steps, untimed_steps=args.warmup)
    marks = {}

    class Stopwatch(L.Callback):
        def on_train_batch_end(self, *a):
            if budget.steps in (args.warmup, args.warmup + args.steps):
                sync()
                marks[budget.steps] = time.perf_counter()

    stage = DPOStage(model, optim, schedule, budget, 1.0, dpo=d, reference=reference, compile=True)
    trainer = L.Trainer(accelerator="cuda", devices=1, precision="bf16-mixed", max_epochs=-1, logger=False,
                        callbacks=[TimeBudget(budget), Stopwatch()], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(PreferenceBatches(pairs, args.batch_size, 0), batch_size=None, pin_memory=True)
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(stage, loader)
    seconds = marks[args.warmup + args.steps] - marks[args.warmup]
    return {"pairs_per_sec": args.steps * args.batch_size / seconds, "peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="activation checkpointing in both (TRL 1.16's DPOConfig default is on)")
    p.add_argument("--out", default="dpo_vs_trl.json")
    args = p.parse_args()
    data = rows((args.warmup + args.steps) * args.batch_size)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
              "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps,
              "activation_checkpointing": args.checkpointing}
    result["trl"] = run_trl(args, data)
    torch.cuda.empty_cache()
    result["ours"] = run_ours(args, data)
    result["speedup"] = result["ours"]["pairs_per_sec"] / result["trl"]["pairs_per_sec"]
    result["memory_ratio"] = result["ours"]["peak_mb"] / result["trl"]["peak_mb"]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("---")
    for name in ("trl", "ours"):
        print(f"{name}: {result[name]['pairs_per_sec']:.1f} pairs/s, peak {result[name]['peak_mb']:.0f} MB")
    print(f"speedup: {result['speedup']:.2f}x, memory: {result['memory_ratio']:.2f}x of TRL's")


if __name__ == "__main__":
    main()
