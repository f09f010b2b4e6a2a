"""Training-step speed of the default model under candidate kernel and compiler options, one variant
per process (inductor's settings and caches stay apart), the bare loop of throughput.py.

    python benchmarks/step_variants.py --variant base --out base.json        # needs a GPU
    for v in base cdt flce base; do python benchmarks/step_variants.py --variant $v --out $v.json; done

Variants:
  base      the default: the loss compiled whole (model, soft cap, cross-entropy), torch.compile's default mode
  cdt       base with inductor's coordinate-descent tuning of its Triton kernels' launch settings
  autotune  base compiled with mode="max-autotune-no-cudagraphs" (Triton matmul templates, epilogue fusion)
  fusion    base with inductor's aggressive_fusion: elementwise kernels fused even where they share no input
  flce      liger-kernel's fused linear cross-entropy with the soft cap (the logits never written whole):
            the model's final hidden states and the head's weight in bf16, the rest compiled as in base
            (needs the optional extra: pip install -e '.[gpu]')

Prints one JSON line: tok/s, MFU, the step's peak memory, compile+warm-up seconds. Compare variants of
one call only (the same GPU); run `base` first and last: its spread is the noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from throughput import compose  # benchmarks/ is the working directory or on sys.path


def flce_loss(model, softcap: float):
    """Mean next-token loss through liger's fused head + soft cap + cross-entropy."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=-1, softcap=softcap or None)

    @torch.compile
    def hidden(x):
        return model.hidden(x).to(torch.bfloat16)

    def loss(tokens):
        tokens = tokens.long()
        h = hidden(tokens[:, :-1])
        return fused(model.lm_head.weight.to(torch.bfloat16), h.reshape(-1, h.size(-1)), tokens[:, 1:].reshape(-1))

    return loss


def main() -> None:
    import prepare
    from autolab.callbacks import peak_flops
    from autolab.data import build_training_data
    from autolab.models import build_gpt, flops_per_token, use_attention
    from autolab.objectives import packed_rows_loss
    from autolab.optim import build_optimizers
    from throughput import bare_step

    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="base", choices=["base", "cdt", "autotune", "fusion", "flce"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    args, overrides = p.parse_known_args()
    cfg = compose(overrides)
    device = torch.device("cuda")
    use_attention(cfg.trainer.attention)
    if args.variant == "cdt":
        torch._inductor.config.coordinate_descent_tuning = True
    if args.variant == "fusion":
        torch._inductor.config.aggressive_fusion = True
    tok = prepare.Tokenizer.load()
    torch.manual_seed(cfg.seed)
    model = build_gpt(cfg.model, tok.vocab_size).to(device)
    data = iter(torch.utils.data.DataLoader(build_training_data(cfg, tok, cfg.data.seq_len), batch_size=None,
                                            pin_memory=True))
    opts = build_optimizers(model, cfg.optim, cfg.schedule.peak_lr)
    if args.variant == "flce":
        loss_of = flce_loss(model, cfg.model.logit_softcap)
    else:
        mode = "max-autotune-no-cudagraphs" if args.variant == "autotune" else None
        loss_of = torch.compile(lambda tokens: packed_rows_loss(model, tokens), mode=mode)
    check = {}
    if args.variant == "flce":  # the same loss as the plain path, on one batch (bf16 tolerance)
        tokens = next(data)["tokens"].to(device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            check = {"loss_plain": packed_rows_loss(model, tokens).item(), "loss_variant": loss_of(tokens).item()}
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        bare_step(loss_of, next(data)["tokens"].to(device, non_blocking=True), model, opts, cfg.trainer.grad_clip)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        bare_step(loss_of, next(data)["tokens"].to(device, non_blocking=True), model, opts, cfg.trainer.grad_clip)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rate = args.steps * cfg.data.batch_size * cfg.data.seq_len / seconds
    result = {"variant": args.variant, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len, "steps": args.steps,
              "tokens_per_sec": rate, "ms_per_step": 1000 * seconds / args.steps,
              "mfu_percent": 100 * rate * flops_per_token(model, cfg.data.seq_len) / peak_flops(device),
              "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20, "compile_and_warmup_s": warmup_s,
              "overrides": overrides, **check}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
