"""Throughput: our Lightning stage against a bare PyTorch loop, same model/data/settings, one run.

    python benchmarks/throughput.py                        # default experiment (needs a GPU)
    python benchmarks/throughput.py +experiment=quickstart --steps 20 --warmup 3   # CPU smoke
    python benchmarks/throughput.py stage=cpt init_from=/tmp/llama150m data=code   # CPT of an HF Llama

Both loops: the model from the composed Hydra config, the same packed rows, bf16 autocast and
torch.compile on CUDA, fused AdamW, global-norm clipping, the LR set every step from lr_at. Each is
timed over `--steps` steps after `--warmup` untimed ones, with a device sync only at both ends;
the two alternate `--rounds` times (the machine is noisy, a ratio within one run is what counts).
MFU = tokens/s x FLOPs per token (AutoResearch's count) / the GPU's dense bf16 peak. The data path
is timed alone too: batches built and copied to the device with nothing trained.
Results are printed as a table and written as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from autolab.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, "output_dir=/tmp/bench", "logger=none"])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(cfg, model, dataset, device, warmup: int, steps: int) -> float:
    """The reference: the plainest fast PyTorch loop. Returns seconds for `steps` steps."""
    from autolab.objectives import packed_rows_loss
    from autolab.optim import build_optimizers
    from autolab.schedules import lr_at

    cuda = device.type == "cuda"

    def batch_loss(batch):  # what LMStage computes, compiled whole likewise
        return packed_rows_loss(model, batch)

    fwd = torch.compile(batch_loss) if cuda else batch_loss
    opts = build_optimizers(model, cfg.optim, cfg.schedule.peak_lr)
    schedule = dict(cfg.schedule)  # as the stage reads it: out of OmegaConf once
    it = iter(torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=cuda))
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        lr = lr_at(step / (warmup + steps), **schedule)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
        bare_step(fwd, next(it)["tokens"].to(device, non_blocking=True), model, opts, cfg.trainer.grad_clip)
    sync(device)
    return time.perf_counter() - t0


def bare_step(loss_of, tokens, model, opts, grad_clip: float) -> None:
    """One plain optimisation step: the loss under bf16 autocast on CUDA, backward, global-norm
    clip, every optimiser stepped and zeroed."""
    with torch.autocast(tokens.device.type, torch.bfloat16, enabled=tokens.is_cuda):
        loss = loss_of(tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)


def lightning_loop(cfg, model, dataset, device, warmup: int, steps: int) -> float:
    """Ours: the stage and callbacks train.py runs, timed between the same two syncs."""
    import lightning as L

    from autolab.callbacks import Budget, Monitor, TimeBudget, peak_flops
    from autolab.models import flops_per_token
    from autolab.stages import LMStage

    cuda = device.type == "cuda"
    budget = Budget(1e9, max_steps=warmup + steps, untimed_steps=warmup)
    marks = {}

    class Stopwatch(L.Callback):
        def on_train_batch_end(self, *args):
            if budget.steps in (warmup, warmup + steps):
                sync(device)
                marks[budget.steps] = time.perf_counter()

    tokens = cfg.data.seq_len * cfg.data.batch_size
    monitor = Monitor(budget, cfg.trainer.log_every, tokens, flops_per_token(model, cfg.data.seq_len),
                      peak_flops(device))
    monitor._print = lambda *a, **k: None  # keep the benchmark's own output a table
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision="bf16-mixed" if cuda else "32-true",
        max_epochs=-1, logger=False, callbacks=[TimeBudget(budget), monitor, Stopwatch()],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    stage = LMStage(model, cfg.optim, cfg.schedule, budget, cfg.trainer.grad_clip, compile=cuda)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=cuda)
    trainer.fit(stage, train_dataloaders=loader)
    return marks[warmup + steps] - marks[warmup]


def data_path(dataset, device, seconds: float = 3.0) -> float:
    """Tokens/s the data path delivers alone: batches built, pinned and copied to the device."""
    cuda = device.type == "cuda"
    it = iter(torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=cuda))
    n, t0, seq_len = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        tokens = next(it)["tokens"]
        tokens.to(device, non_blocking=True)
        seq_len = tokens.size(1) - 1
        n += 1
    sync(device)
    return n * dataset.batch_size * seq_len / (time.perf_counter() - t0)


def main() -> None:
    import logging

    import prepare
    from autolab.callbacks import peak_flops
    from autolab.data import PackedRows, build_training_data, token_shards
    from autolab.models import build_gpt, flops_per_token, load_pretrained, use_attention

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--loops", type=lambda s: s.split(","), default=["bare", "lightning"], help="e.g. lightning,bare")
    p.add_argument("--out", default="benchmark.json")
    args, overrides = p.parse_known_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cfg = compose(overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    use_attention(cfg.trainer.attention)
    if cfg.init_from:  # e.g. a randomly initialised HF Llama folder (benchmarks/make_llama.py)
        def new_model():
            return load_pretrained(cfg.init_from)[0]
        tok = load_pretrained(cfg.init_from)[1]
    else:
        tok = prepare.Tokenizer.load()

        def new_model():
            return build_gpt(cfg.model, tok.vocab_size)
    dataset = build_training_data(cfg, tok, cfg.data.seq_len)  # with replay mixed in, as train.py does
    tokens = cfg.data.seq_len * cfg.data.batch_size
    results = {name: [] for name in args.loops}
    loops = {"bare": bare_loop, "lightning": lightning_loop}
    for r in range(args.rounds):
        for name in args.loops:
            loop = loops[name]
            torch.manual_seed(cfg.seed)
            model = new_model().to(device)
            seconds = loop(cfg, model, dataset, device, args.warmup, args.steps)
            results[name].append(args.steps * tokens / seconds)
            print(f"round {r} {name:9s}: {results[name][-1]:,.0f} tok/s", flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    model = new_model()
    flops, peak = flops_per_token(model, cfg.data.seq_len), peak_flops(device)
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": cfg.init_from or "autolab GPT",
        "torch": torch.__version__,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "seq_len": cfg.data.seq_len, "batch_size": cfg.data.batch_size, "steps": args.steps,
        "attention": cfg.trainer.attention, "optim": cfg.optim.name,
        "data_path_tokens_per_sec": data_path(dataset, device),
    }
    if cfg.replay.ratio > 0:  # what the mixture costs the data path, against plain packed rows
        plain = PackedRows(token_shards(tok, cfg.data.domain), cfg.data.seq_len, cfg.data.batch_size, cfg.seed)
        summary["data_path_plain_tokens_per_sec"] = data_path(plain, device)
        summary["replay_ratio"] = cfg.replay.ratio
    for name, rates in results.items():
        summary[f"{name}_tokens_per_sec"] = statistics.median(rates)
        summary[f"{name}_all"] = rates
        summary[f"{name}_mfu_percent"] = 100 * statistics.median(rates) * flops / peak if peak else None
    if len(results) == 2:
        summary["ratio_lightning_over_bare"] = summary["lightning_tokens_per_sec"] / summary["bare_tokens_per_sec"]
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print("---")
    for k, v in summary.items():
        if not k.endswith("_all"):
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
