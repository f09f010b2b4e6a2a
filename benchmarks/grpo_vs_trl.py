"""GRPO steps/s and peak memory: our `stage=grpo` against TRL 1.16's GRPOTrainer, same model, prompts and settings.

On a GPU (a ~150M Llama; 16 prompts x G=8 completions of up to 128 tokens a step; 20 steps after 3 warm-up, 3 rounds):

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m
    python benchmarks/grpo_vs_trl.py --model /tmp/llama150m --batch-size 16 --num-generations 8 \\
        --max-completion-length 128 --steps 20 --warmup 3 --rounds 3 --out grpo_vs_trl_llama150m.json

CPU smoke (numbers mean nothing; both sides run):

    python benchmarks/make_llama.py --size tiny --out /tmp/llama_tiny
    python benchmarks/grpo_vs_trl.py --model /tmp/llama_tiny --batch-size 2 --num-generations 2 \\
        --max-completion-length 8 --steps 2 --warmup 1 --rounds 1 --out /tmp/grpo_vs_trl.json

Both sides, each optimiser step: sample G completions of each of --batch-size prompts with the policy
(Hugging Face `generate`, KV cache, temperature, whole vocabulary, stopping at the tokenizer's EOS or at
--max-completion-length; no vLLM), decode them and score each with autolab.rewards.copy_match (it has TRL's
reward signature, so TRL calls it as it is, with the rows' `answer` column), group-relative advantages
(scaled by the group's std), the frozen reference's forward for the KL term (beta > 0), the policy's
forward and backward on the clipped objective (`loss_type=grpo`, one update a batch, so no extra forward
for the old log-probs), global-norm clipping at 1.0 and a fused AdamW step (betas 0.9/0.999, no weight
decay) on a cosine schedule from --lr. The prompts are prepare.py's embedded copy task (train split), as
text (no chat template); fp32 master weights, bf16 autocast on a GPU; activation checkpointing on in both
(TRL's default; off in both with --no-checkpointing); dropout off in both.
- TRL: GRPOTrainer.train() as users run it (per_device_train_batch_size = prompts x G completions, one
  generation a step), logging and saving turned off; its reference is loaded from the folder in fp32.
  Its own per-step work is in the time: reward/metric gathering, its dataloader and RepeatSampler.
- Ours: the stage as run.py builds it (trl_rounds.run_stage: Hydra's composed `stage=grpo` config, the
  recipe's prompts, rewards and reference, Lightning's fit); its reference is the start's weights in bf16
  on a GPU (the stage's choice: half the memory). Not timed: the held-out reward and val_bpb measured
  before and after a real run, logging, snapshots.
Each run is timed over --steps optimiser steps after --warmup untimed ones (device sync at both ends) and
its peak GPU memory read from a counter reset just before training; it also records the mean completion
length of each timed step (a side whose completions stop earlier at EOS does less work), every step's time
and the graphs torch.compile built in the window. Rounds alternate (TRL, ours, ...) in fresh processes
(trl_rounds.py), and the table gives medians.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

import trl_rounds


def task_rows() -> list[dict]:
    """The embedded copy task's training rows (prompt, answer, ...), as stage=grpo reads them."""
    import prepare

    return prepare.load_tasks("train")


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from autolab.rewards import copy_match

    marks, lengths, holder = {}, {}, {}

    class Stopwatch(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            trl_rounds.sync()
            marks[state.global_step] = time.perf_counter()
            lengths[state.global_step] = holder["trainer"]._metrics["train"]["completions/mean_length"][-1]

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    G = args.num_generations
    config = GRPOConfig(
        output_dir="/tmp/trl_grpo_bench", per_device_train_batch_size=args.batch_size * G, num_generations=G,
        max_completion_length=args.max_completion_length, temperature=args.temperature, top_k=0, top_p=1.0,
        beta=args.beta, loss_type="grpo", scale_rewards="group", num_iterations=1, epsilon=0.2,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, max_steps=args.warmup + args.steps,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=10_000, save_strategy="no", report_to="none", disable_dropout=True, seed=0,
        dataloader_num_workers=0, gradient_checkpointing=args.checkpointing, **trl_rounds.trl_device_args(),
    )
    trainer = GRPOTrainer(model=model, reward_funcs=copy_match, args=config, train_dataset=Dataset.from_list(task_rows()),
                          processing_class=tok, callbacks=[Stopwatch()])
    holder["trainer"] = trainer
    trl_rounds.reset_peak()
    trainer.train()
    return _result(args, marks, [lengths[i] for i in range(args.warmup + 1, args.warmup + args.steps + 1)])


def run_ours(args) -> dict:
    cfg = trl_rounds.compose([
        "stage=grpo", f"init_from={args.model}", "seed=0", "grpo.dataset=embedded", "grpo.chat=off",
        "grpo.reward_funcs=[autolab.rewards.copy_match]", f"grpo.batch_size={args.batch_size}",
        f"grpo.num_generations={args.num_generations}", f"grpo.max_completion_length={args.max_completion_length}",
        f"grpo.temperature={args.temperature}", "grpo.top_k=0", f"grpo.beta={args.beta}", "grpo.loss_type=grpo",
        "grpo.scale_rewards=group", "grpo.num_iterations=1", "grpo.epsilon=0.2",
        f"schedule.peak_lr={args.lr}", "schedule.warmup=0.0", "schedule.min_lr_ratio=0.0",
        "optim=adamw", "optim.betas=[0.9,0.999]", "optim.eps=1e-8", "optim.weight_decay=0.0", "trainer.grad_clip=1.0",
        f"trainer.activation_checkpointing={args.checkpointing}",
    ])
    lengths = []
    marks, _ = trl_rounds.run_stage(cfg, args.model, args.warmup, args.steps, args.checkpointing,
                                    on_step=lambda out: lengths.append(out["metrics"]["completions/mean_length"].item()))
    return _result(args, marks, lengths[args.warmup : args.warmup + args.steps])


def _result(args, marks: dict, lengths: list[float]) -> dict:
    per_step = {"steps": 1, "prompts": args.batch_size, "completions": args.batch_size * args.num_generations}
    return {**trl_rounds.rates(marks, args.warmup, args.steps, per_step), "completion_length": statistics.mean(lengths)}


def main() -> None:
    import sys

    p = trl_rounds.arguments(__doc__.split("\n")[0], "GRPOConfig", "grpo_vs_trl.json", steps=20, warmup=3)
    p.add_argument("--batch-size", type=int, default=16, help="prompts a step")
    p.add_argument("--num-generations", type=int, default=8, help="completions a prompt (G)")
    p.add_argument("--max-completion-length", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.04, help="KL weight; 0: no reference model on either side")
    p.add_argument("--lr", type=float, default=1e-6)
    args = p.parse_args()
    if args.only:
        print(json.dumps((run_trl if args.only == "trl" else run_ours)(args)))
        return
    runs = trl_rounds.alternate(__file__, sys.argv[1:], args.rounds, lambda x: (
        f"{x['steps_per_sec']:.3f} steps/s, median step {x['median_step_ms']:.0f} ms, slowest {x['slowest_step_ms']:.0f} ms, "
        f"peak {x['peak_mb']:.0f} MB, completions {x['completion_length']:.1f} tokens, "
        f"{x['compiles_in_window']} compiles in the window"))
    keys = ("steps_per_sec", "prompts_per_sec", "completions_per_sec", "peak_mb", "median_step_ms", "completion_length")
    med = trl_rounds.medians(runs, keys)
    settings = {k: getattr(args, k) for k in ("model", "batch_size", "num_generations", "max_completion_length",
                                              "temperature", "beta", "lr", "steps", "warmup")}
    trl_rounds.write(args.out, {**trl_rounds.versions(), **settings, "activation_checkpointing": args.checkpointing,
                                "trl": med["trl"], "ours": med["ours"], "speedup": med["ratio"]["steps_per_sec"],
                                "memory_ratio": med["ratio"]["peak_mb"], "rounds": runs})
    print(f"--- medians of {args.rounds} alternating rounds")
    print(f"{'':6}{'steps/s':>10}{'completions/s':>15}{'peak MB':>10}{'median step ms':>16}{'completion len':>16}")
    for name in ("trl", "ours"):
        m = med[name]
        print(f"{name:6}{m['steps_per_sec']:>10.3f}{m['completions_per_sec']:>15.1f}{m['peak_mb']:>10.0f}"
              f"{m['median_step_ms']:>16.0f}{m['completion_length']:>16.1f}")
    print(f"speedup: {med['ratio']['steps_per_sec']:.2f}x, memory: {med['ratio']['peak_mb']:.2f}x of TRL's")


if __name__ == "__main__":
    main()
