"""A bare DDP training loop on N processes against the same loop on one, and what DDP's choices cost:
the ceiling that train.py's several-GPU runs (benchmarks/multi_gpu.py) are held against.

    python benchmarks/ddp_step.py --devices 2                      # the default GPT (needs N GPUs)
    python benchmarks/ddp_step.py --devices 2 stage=cpt init_from=/tmp/llama150m data=code
    python benchmarks/ddp_step.py --devices 2 --cpu +experiment=quickstart data.seq_len=128   # gloo smoke

Each process runs throughput.py's bare loop on its own `data.batch_size` rows (weak scaling, as
multi_gpu.py), the loss compiled and called inside DDP's forward, as Lightning's DDP strategy calls
a LightningModule's training_step. Variants:

- `one`: one process, no DDP (the baseline);
- `ddp`: DDP as train.py uses it with `trainer.overlap_grad_sync=true` (torch.compile's
  DDPOptimizer splits the graph at DDP's 25 MB buckets, so each bucket's all-reduce overlaps the
  rest of the backward);
- `no_overlap`: the same without DDPOptimizer (one graph: every all-reduce waits for the backward);
- `bf16`: `ddp` with bf16 gradient compression (half the bytes on the wire);
- `rank_sync`: `ddp` plus what train.py's RankSync does after every step: a small broadcast from
  rank 0 over a gloo (CPU) group, which makes the processes' hosts meet once a step;
- `pair`: N processes, each training its own model on its own GPU with no communication at all:
  what the host and the GPUs give N processes before DDP takes its share;
- `no_broadcast`: `ddp` without DDP's broadcast of the module's buffers before every forward (the
  rotary tables, computed the same on every rank);
- `bucket_view`: `ddp` with the gradients kept as views into DDP's buckets (no copy in or out);
- `one_bucket`: `no_overlap` with all the gradients in one bucket (one all-reduce after the
  backward): train.py's default, `trainer.overlap_grad_sync=false`;
- `big_buckets`: `ddp` with 100 MB buckets instead of DDP's 25 MB.

`--profile DIR` traces a few steps of each variant after its timed ones, on every rank (the chrome
traces and each rank's kernel table land in DIR).

Also the all-reduce's bus bandwidth for a message the size of the model's gradients and for one of
DDP's default 25 MB buckets (NCCL's busbw: bytes x 2(N-1)/N / seconds). Tokens/s count every
process's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from autolab import profiling
from autolab.distributed import ONE_BUCKET_MB
from throughput import bare_step, compose, sync  # benchmarks/ is the working directory or on sys.path


class Loss(torch.nn.Module):
    """What Lightning's DDP wraps: a module whose forward runs the compiled loss of the model."""

    def __init__(self, model, compiled: bool):
        super().__init__()
        self.model = model
        self.loss = torch.compile(self._loss) if compiled else self._loss

    def _loss(self, tokens):
        from autolab.objectives import packed_rows_loss

        return packed_rows_loss(self.model, tokens)

    def forward(self, tokens):
        return self.loss(tokens)


def allreduce_busbw(numel: int, device, repeats: int = 10) -> float:
    """GB/s of bus bandwidth for an fp32 all-reduce of `numel` elements (NCCL-tests' busbw)."""
    x = torch.ones(numel, device=device)
    for _ in range(3):
        dist.all_reduce(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(x)
    sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    n = dist.get_world_size()
    return x.numel() * 4 * 2 * (n - 1) / n / seconds / 1e9


DDP_KWARGS = {"no_broadcast": {"broadcast_buffers": False}, "bucket_view": {"gradient_as_bucket_view": True},
              "one_bucket": {"bucket_cap_mb": ONE_BUCKET_MB}, "big_buckets": {"bucket_cap_mb": 100}}
NO_OVERLAP = ("no_overlap", "one_bucket")  # one compiled graph: torch._dynamo's DDPOptimizer off


def profile_steps(step, device, directory: Path, name: str, steps: int = 4) -> None:
    """A torch.profiler trace of `steps` steps after an untraced one and the profiler's warm-up
    step: DIR/name.json.gz and DIR/name.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    step()
    with profiling.tracer(steps, directory / name) as prof:
        for i in range(steps + 1):  # one step warms the profiler up
            step()
            if i == steps:
                sync(device)
            prof.step()


def worker(rank: int, world: int, variant: str, overrides: list[str], args, port: int, results) -> None:
    import prepare
    from autolab.data import build_training_data
    from autolab.models import build_gpt, load_pretrained, use_attention
    from autolab.optim import build_optimizers

    cuda = not args.cpu
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    cfg = compose(overrides)
    use_attention(cfg.trainer.attention)
    if cfg.init_from:
        model, tok = load_pretrained(cfg.init_from)
    else:
        tok = prepare.Tokenizer.load()
        torch.manual_seed(cfg.seed)
        model = build_gpt(cfg.model, tok.vocab_size)
    model = model.to(device).train()
    torch._dynamo.config.optimize_ddp = variant not in NO_OVERLAP
    step_module = Loss(model, compiled=cuda)
    busbw = None
    if world > 1 and variant != "pair":
        if variant == "ddp":
            busbw = {"gradients": allreduce_busbw(sum(p.numel() for p in model.parameters()), device),
                     "bucket_25MB": allreduce_busbw(25 * 2**20 // 4, device)}
        step_module = torch.nn.parallel.DistributedDataParallel(step_module, device_ids=[rank] if cuda else None,
                                                                **DDP_KWARGS.get(variant, {}))
        if variant == "bf16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            step_module.register_comm_hook(None, default_hooks.bf16_compress_hook)
    gloo = dist.new_group(backend="gloo") if variant == "rank_sync" else None
    data = build_training_data(cfg, tok, cfg.data.seq_len)  # each process: its own batch_size rows
    it = iter(torch.utils.data.DataLoader(data, batch_size=None, pin_memory=cuda))
    opts = build_optimizers(model, cfg.optim, cfg.schedule.peak_lr)

    def step():
        bare_step(step_module, next(it)["tokens"].to(device, non_blocking=True), model, opts, cfg.trainer.grad_clip)
        if gloo is not None:
            dist.broadcast(torch.tensor([time.perf_counter(), 0.0, 0.0], dtype=torch.float64), src=0, group=gloo)

    t0 = 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    results[f"{variant}/rank{rank}"] = seconds  # each rank's own time (pair: how evenly the GPUs run)
    if world > 1:
        dist.barrier()
    if rank == 0:
        tokens = world * args.steps * cfg.data.batch_size * cfg.data.seq_len
        per_rank = [results[f"{variant}/rank{r}"] for r in range(world)]
        results[variant] = {"tokens_per_sec": tokens / max(per_rank), "busbw_GBps": busbw,
                            "ms_per_step_by_rank": [1000 * t / args.steps for t in per_rank]}
    if args.profile:
        profile_steps(step, device, args.profile, f"{variant}_rank{rank}")
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", type=lambda s: s.split(","), default=["one", "ddp", "no_overlap", "bf16"])
    p.add_argument("--cpu", action="store_true", help="gloo on the CPU: checks the script, measures nothing")
    p.add_argument("--profile", type=Path, help="trace a few steps of each variant on every rank into this folder")
    p.add_argument("--out", type=Path)
    args, overrides = p.parse_known_args()
    if args.cpu:
        overrides.append("trainer.require_gpu=false")
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    with mp.Manager() as manager:
        for r in range(args.rounds):
            order = args.variants if r % 2 == 0 else args.variants[::-1]  # alternate which goes first
            for variant in order:
                results = manager.dict()
                world = 1 if variant == "one" else args.devices
                mp.spawn(worker, args=(world, variant, overrides, args, _free_port(), results), nprocs=world)
                runs[variant].append(dict(results[variant]))
                bw = runs[variant][-1]["busbw_GBps"]
                ms = " / ".join(f"{t:.2f}" for t in runs[variant][-1]["ms_per_step_by_rank"])
                bw = " | all-reduce busbw GB/s " + ", ".join(f"{k} {v:.0f}" for k, v in bw.items()) if bw else ""
                print(f"round {r + 1} {variant:12s} on {world}: {runs[variant][-1]['tokens_per_sec']:,.0f} tok/s"
                      f" | ms/step by rank {ms}{bw}", flush=True)
                if args.out:  # what is done so far survives a run cut short
                    args.out.write_text(json.dumps({"overrides": overrides, "runs": runs}, indent=2) + "\n")
    base = statistics.median(x["tokens_per_sec"] for x in runs["one"]) if "one" in runs else None
    summary = {"device": torch.cuda.get_device_name() if not args.cpu else "cpu", "devices": args.devices,
               "overrides": overrides, "steps": args.steps, "runs": runs}
    print(f"\n| variant | tok/s | over one process (median of {args.rounds}) |\n| --- | --- | --- |")
    for variant, rs in runs.items():
        rate = statistics.median(x["tokens_per_sec"] for x in rs)
        summary[f"{variant}_over_one"] = rate / base if base else None
        print(f"| {variant} | {rate:,.0f} | {rate / base:.3f}x |" if base else f"| {variant} | {rate:,.0f} | |")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
