"""DPO throughput and memory: our DPO stage against TRL's DPOTrainer, same model and data, one run.

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m
    python benchmarks/dpo_vs_trl.py --model /tmp/llama150m --batch-size 16 --max-length 256

CPU smoke (numbers mean nothing; both sides run, in fp32, without torch.compile):

    python benchmarks/make_llama.py --size tiny --out /tmp/llama_tiny
    python benchmarks/dpo_vs_trl.py --model /tmp/llama_tiny --batch-size 2 --max-length 64 --steps 2 --warmup 1 \
        --rounds 1 --out /tmp/dpo_vs_trl.json

Both: the same HF Llama (fp32 master weights, bf16 autocast), a frozen reference copy, activation
checkpointing on in both (TRL's default) or off in both (--no-checkpointing), the same
preference pairs (prepare.py's embedded set), the same batch size, max_length, beta, AdamW and
learning rate. Each is timed over --steps optimiser steps after --warmup untimed ones (device
sync at both ends) and its peak GPU memory read from a fresh counter. TRL runs as users run it:
DPOTrainer.train() with logging and saving turned off.

Rounds alternate (TRL, ours, TRL, ours, ...), each in a fresh process, and the table gives medians
(trl_rounds.py, shared with grpo_vs_trl.py and reward_vs_trl.py).
Each run also records every step's time and how many graphs torch.compile built inside the timed
window: a compile there (a new shape, a guard that fails) costs seconds and was what made single
runs of this benchmark disagree.
"""

from __future__ import annotations

import json
import time

import torch

import trl_rounds


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
            trl_rounds.sync()
            marks[state.global_step] = time.perf_counter()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    config = DPOConfig(
        output_dir="/tmp/trl_bench", per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        beta=0.1, learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=max(1, (args.warmup + args.steps) // 10),
        max_steps=args.warmup + args.steps,
        logging_steps=10_000, save_strategy="no", report_to="none", disable_dropout=True,
        dataloader_num_workers=0, max_grad_norm=1.0, gradient_checkpointing=args.checkpointing,
        **trl_rounds.trl_device_args(),
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_list(data),
                         processing_class=tok, callbacks=[Stopwatch()])
    trl_rounds.reset_peak()
    trainer.train()
    return trl_rounds.rates(marks, args.warmup, args.steps, {"pairs": args.batch_size})


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
    device = trl_rounds.device()
    model.to(device)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    if device.type == "cuda":
        reference.to(torch.bfloat16)  # as the DPO stage keeps it: it only runs forward, under autocast
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
            trl_rounds.sync()
            marks[budget.steps] = time.perf_counter()
            if budget.steps == args.warmup:
                marks["compiles_before"] = trl_rounds.compiles()
            if budget.steps == args.warmup + args.steps:
                marks["compiles_after"] = trl_rounds.compiles()

    cuda = device.type == "cuda"
    stage = DPOStage(model, optim, schedule, budget, 1.0, dpo=d, reference=reference, compile=cuda)
    trainer = L.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed" if cuda else "32-true",
                        max_epochs=-1, logger=False,
                        callbacks=[TimeBudget(budget), Stopwatch()], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(PreferenceBatches(pairs, args.batch_size, 0), batch_size=None, pin_memory=cuda)
    trl_rounds.reset_peak()
    trainer.fit(stage, loader)
    return trl_rounds.rates(marks, args.warmup, args.steps, {"pairs": args.batch_size})


def main() -> None:
    import sys

    p = trl_rounds.arguments(__doc__.split("\n")[0], "DPOConfig", "dpo_vs_trl.json", steps=40, warmup=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    if args.only:
        data = rows((args.warmup + args.steps) * args.batch_size)
        run = run_trl if args.only == "trl" else run_ours
        print(json.dumps(run(args, data)))
        return
    runs = trl_rounds.alternate(__file__, sys.argv[1:], args.rounds, lambda x: (
        f"{x['pairs_per_sec']:.1f} pairs/s, median step {x['median_step_ms']:.0f} ms, slowest {x['slowest_step_ms']:.0f} ms, "
        f"{x['compiles_in_window']} compiles in the window"))
    med = trl_rounds.medians(runs, ("pairs_per_sec", "peak_mb"))
    result = {**trl_rounds.versions(), "model": args.model, "batch_size": args.batch_size,
              "max_length": args.max_length, "steps": args.steps, "warmup": args.warmup,
              "activation_checkpointing": args.checkpointing, "rounds": runs, "trl": med["trl"], "ours": med["ours"],
              "speedup": med["ratio"]["pairs_per_sec"], "memory_ratio": med["ratio"]["peak_mb"]}
    trl_rounds.write(args.out, result)
    print("--- medians of", args.rounds, "alternating rounds")
    for name in ("trl", "ours"):
        print(f"{name}: {result[name]['pairs_per_sec']:.1f} pairs/s, peak {result[name]['peak_mb']:.0f} MB")
    print(f"speedup: {result['speedup']:.2f}x, memory: {result['memory_ratio']:.2f}x of TRL's")


if __name__ == "__main__":
    main()
