"""Reward-model pairs/s and peak memory: our `stage=reward` against TRL 1.16's RewardTrainer, same model, pairs and settings.

On a GPU (a ~150M Llama; 16 pairs a step up to 256 tokens; 20 steps after 3 warm-up, 3 rounds):

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m
    python benchmarks/reward_vs_trl.py --model /tmp/llama150m --batch-size 16 --max-length 256 \\
        --steps 20 --warmup 3 --rounds 3 --out reward_vs_trl_llama150m.json

CPU smoke (numbers mean nothing; both sides run):

    python benchmarks/make_llama.py --size tiny --out /tmp/llama_tiny
    python benchmarks/reward_vs_trl.py --model /tmp/llama_tiny --batch-size 2 --max-length 64 \\
        --steps 2 --warmup 1 --rounds 1 --out /tmp/reward_vs_trl.json

Both sides, each optimiser step: --batch-size (prompt, chosen, rejected) pairs of prepare.py's embedded
preference set (train split), each sequence up to --max-length tokens, chosen and rejected through one
forward of the causal LM's backbone under a fresh one-output sequence-classification head (the score read
at each sequence's last token before padding), the Bradley-Terry loss, backward, global-norm clipping at
1.0 and a fused AdamW step (betas 0.9/0.999, no weight decay) on a cosine schedule from --lr; fp32 master
weights, bf16 autocast on a GPU; activation checkpointing on in both (TRL's default; off in both with
--no-checkpointing); dropout off in both.
- TRL: RewardTrainer.train() as users run it, from the folder (AutoModelForSequenceClassification,
  num_labels=1, fp32), logging and saving off. Its collator pads each batch to its longest sequence; it
  DROPS pairs longer than max_length (the result counts the training `pairs` and their mean
  `tokens_a_pair`, chosen + rejected unpadded, on each side).
- Ours: the stage as run.py builds it (trl_rounds.run_stage: Hydra's composed `stage=reward` config, the
  recipe's pairs and head, Lightning's fit), torch.compile of the forward on a GPU (dynamic shapes: batches
  are padded to multiples of 16). It TRUNCATES the responses of a pair longer than max_length (keeping
  their start) where TRL drops the pair, so at a small max_length its sequences are longer than TRL's (at
  256, none of the embedded pairs is cut or dropped). Not timed: the held-out accuracy and margin
  measured before and after a real run, logging, snapshots.
Each run is timed over --steps optimiser steps after --warmup untimed ones (device sync at both ends) and
its peak GPU memory read from a counter reset just before training; it also records every step's time and
the graphs torch.compile built in the window. Rounds alternate (TRL, ours, ...) in fresh processes
(trl_rounds.py), and the table gives medians.
"""

from __future__ import annotations

import json
import time

import trl_rounds


def pair_rows() -> list[dict]:
    """The embedded preference set's training pairs, as stage=reward reads them."""
    import prepare

    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in prepare.load_preferences("train")]


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    marks = {}

    class Stopwatch(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            trl_rounds.sync()
            marks[state.global_step] = time.perf_counter()

    config = RewardConfig(
        output_dir="/tmp/trl_reward_bench", per_device_train_batch_size=args.batch_size, max_length=args.max_length,
        model_init_kwargs={"dtype": "float32"}, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0,
        max_steps=args.warmup + args.steps, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=10_000, save_strategy="no", report_to="none", disable_dropout=True, seed=0,
        dataloader_num_workers=0, gradient_checkpointing=args.checkpointing, **trl_rounds.trl_device_args(),
    )
    trainer = RewardTrainer(model=args.model, args=config, train_dataset=Dataset.from_list(pair_rows()),
                            processing_class=AutoTokenizer.from_pretrained(args.model), callbacks=[Stopwatch()])
    trl_rounds.reset_peak()
    trainer.train()
    data = trainer.train_dataset
    tokens = [len(c) + len(r) for c, r in zip(data["chosen_ids"], data["rejected_ids"])]
    return {**trl_rounds.rates(marks, args.warmup, args.steps, {"pairs": args.batch_size, "steps": 1}),
            "pairs": len(data), "tokens_a_pair": sum(tokens) / len(tokens)}


def run_ours(args) -> dict:
    cfg = trl_rounds.compose([
        "stage=reward", f"init_from={args.model}", "seed=0", "reward.dataset=embedded",
        f"reward.batch_size={args.batch_size}", f"reward.max_length={args.max_length}",
        "reward.center_rewards_coefficient=null",
        f"schedule.peak_lr={args.lr}", "schedule.warmup=0.0", "schedule.min_lr_ratio=0.0",
        "optim=adamw", "optim.betas=[0.9,0.999]", "optim.eps=1e-8", "optim.weight_decay=0.0", "trainer.grad_clip=1.0",
        f"trainer.activation_checkpointing={args.checkpointing}",
    ])
    marks, parts = trl_rounds.run_stage(cfg, args.model, args.warmup, args.steps, args.checkpointing)
    pairs = parts.data.pairs
    tokens = [2 * len(p) + len(c) + len(r) for p, c, r in zip(pairs.prompt, pairs.chosen, pairs.rejected)]
    return {**trl_rounds.rates(marks, args.warmup, args.steps, {"pairs": args.batch_size, "steps": 1}),
            "pairs": len(tokens), "tokens_a_pair": sum(tokens) / len(tokens)}


def main() -> None:
    import sys

    p = trl_rounds.arguments(__doc__.split("\n")[0], "RewardConfig", "reward_vs_trl.json", steps=20, warmup=3)
    p.add_argument("--batch-size", type=int, default=16, help="pairs a step")
    p.add_argument("--max-length", type=int, default=256, help="tokens of prompt + response, each of chosen and rejected")
    p.add_argument("--lr", type=float, default=1e-5)
    args = p.parse_args()
    if args.only:
        print(json.dumps((run_trl if args.only == "trl" else run_ours)(args)))
        return
    runs = trl_rounds.alternate(__file__, sys.argv[1:], args.rounds, lambda x: (
        f"{x['pairs_per_sec']:.1f} pairs/s, median step {x['median_step_ms']:.0f} ms, slowest {x['slowest_step_ms']:.0f} ms, "
        f"peak {x['peak_mb']:.0f} MB, {x['compiles_in_window']} compiles in the window, {x['pairs']} training pairs of "
        f"{x['tokens_a_pair']:.0f} tokens (chosen + rejected, unpadded) on average"))
    med = trl_rounds.medians(runs, ("pairs_per_sec", "steps_per_sec", "peak_mb", "median_step_ms", "pairs", "tokens_a_pair"))
    settings = {k: getattr(args, k) for k in ("model", "batch_size", "max_length", "lr", "steps", "warmup")}
    trl_rounds.write(args.out, {**trl_rounds.versions(), **settings, "activation_checkpointing": args.checkpointing,
                                "trl": med["trl"], "ours": med["ours"], "speedup": med["ratio"]["pairs_per_sec"],
                                "memory_ratio": med["ratio"]["peak_mb"], "rounds": runs})
    print(f"--- medians of {args.rounds} alternating rounds")
    print(f"{'':6}{'pairs/s':>10}{'peak MB':>10}{'median step ms':>16}{'training pairs':>16}{'tokens a pair':>15}")
    for name in ("trl", "ours"):
        m = med[name]
        print(f"{name:6}{m['pairs_per_sec']:>10.1f}{m['peak_mb']:>10.0f}{m['median_step_ms']:>16.0f}{m['pairs']:>16.0f}"
              f"{m['tokens_a_pair']:>15.1f}")
    print(f"speedup: {med['ratio']['pairs_per_sec']:.2f}x, memory: {med['ratio']['peak_mb']:.2f}x of TRL's")


if __name__ == "__main__":
    main()
