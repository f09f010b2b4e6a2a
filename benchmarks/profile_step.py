"""Where a training step's GPU time goes: the default model's step (compiled loss, bf16 autocast,
fused AdamW), profiled with torch.profiler after warm-up, kernels grouped into matrix products,
attention, the loss, the optimiser and the rest.

    python benchmarks/profile_step.py                          # the default GPT (needs a GPU)
    python benchmarks/profile_step.py data.batch_size=64 --out profile.txt

The table lists the 25 kernels that take the most GPU time; the groups add up to the step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from throughput import compose  # benchmarks/ is the working directory or on sys.path

GROUPS = {  # substring of a kernel's name -> group (first match wins)
    "flash": "attention", "fmha": "attention", "cudnn": "attention", "sdpa": "attention", "attention": "attention",
    "gemm": "matmul", "sm90_xmma": "matmul", "cutlass": "matmul", "nvjet": "matmul", "Kernel2": "matmul",
    "cross_entropy": "loss", "log_softmax": "loss", "nll": "loss",
    "adam": "optimizer", "multi_tensor": "optimizer", "foreach": "optimizer",
}


def main() -> None:
    import prepare
    from autolab.data import build_training_data
    from autolab.models import build_gpt, flops_per_token, use_attention
    from autolab.objectives import packed_rows_loss
    from autolab.optim import build_optimizers

    p = argparse.ArgumentParser()
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="profile.txt")
    args, overrides = p.parse_known_args()
    cfg = compose(overrides)
    use_attention(cfg.trainer.attention)
    device = torch.device("cuda")
    tok = prepare.Tokenizer.load()
    model = build_gpt(cfg.model, tok.vocab_size).to(device)
    data = iter(torch.utils.data.DataLoader(build_training_data(cfg, tok, cfg.data.seq_len), batch_size=None,
                                            pin_memory=True))
    opts = build_optimizers(model, cfg.optim, cfg.schedule.peak_lr)

    @torch.compile
    def batch_loss(tokens):
        return packed_rows_loss(model, tokens)

    def step():
        tokens = next(data)["tokens"].to(device, non_blocking=True)
        with torch.autocast("cuda", torch.bfloat16):
            loss = batch_loss(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    tokens = cfg.data.batch_size * cfg.data.seq_len
    mfu = 100 * tokens / seconds * flops_per_token(model, cfg.data.seq_len) / 989.5e12
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        group = next((g for k, g in GROUPS.items() if k.lower() in e.key.lower()), "elementwise/other")
        groups[group] = groups.get(group, 0.0) + e.self_device_time_total
    lines = [f"{' '.join(overrides) or 'default'}: {seconds * 1e3:.1f} ms/step, {tokens / seconds:,.0f} tok/s, MFU {mfu:.1f}%",
             "GPU time by group (share of the step):"]
    lines += [f"  {g:18s} {t / total:6.1%}  {t / args.steps / 1e3:7.2f} ms" for g, t in sorted(groups.items(), key=lambda x: -x[1])]
    lines.append("top kernels:")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:25]:
        lines.append(f"  {e.self_device_time_total / total:6.1%} {e.self_device_time_total / args.steps / 1e3:7.2f} ms "
                     f"x{e.count // args.steps:<3d} {e.key[:110]}")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
