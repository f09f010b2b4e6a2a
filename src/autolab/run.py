"""One run of one stage: build -> fit -> evaluate -> report. The one place that wires things.

`train.py` calls `main(cfg)`. Whatever happens, the run prints its summary block and appends its
row to the ledger; a failure the user can fix is one line on stderr, and the exit code is non-zero
(in a multirun the other jobs go on: the ledger and each summary say which failed).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import prepare
from autolab import report
from autolab.errors import DivergenceError, UserError


def main(cfg: DictConfig) -> int:
    code = run(cfg)
    if code and not _in_multirun():
        sys.exit(code)
    return code


def run(cfg: DictConfig) -> int:
    t0 = time.time()
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ledger = Path(cfg.ledger).resolve()
    metrics: dict = {key: None for key in report.SUMMARY_KEYS}
    logger, code = None, 1
    try:
        logger = _fit_and_evaluate(cfg, out, metrics)
        code = 0
    except (UserError, prepare.PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except DivergenceError as e:
        print(f"crash: {e}", file=sys.stderr)
    except Exception:
        traceback.print_exc()
    finally:
        metrics["total_seconds"] = time.time() - t0
        metrics.update(status="ok" if code == 0 else "crash", output_dir=str(out))
        _finish_logger(logger, metrics)
        commit, dirty = report.git_state()
        report.append_row(ledger, {
            **metrics, "commit": commit, "dirty": dirty, "stage": cfg.stage.name,
            "experiment": _experiment_name(), "description": cfg.description,
        })
        print(report.format_summary(metrics), flush=True)  # last, so `tail` shows it whole
    return code


def _fit_and_evaluate(cfg: DictConfig, out: Path, metrics: dict):
    import lightning as L

    from autolab.callbacks import Budget, Monitor, TimeBudget, peak_flops
    from autolab.checkpoint import save_checkpoint
    from autolab.data import PackedRows, token_stream
    from autolab.models import build_gpt
    from autolab.stages import LMStage

    _quiet_libraries()
    cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if not cuda and cfg.trainer.require_gpu:
        raise UserError(
            "no GPU: this experiment is sized for one (see conf/trainer); on a CPU run "
            "`python train.py +experiment=quickstart`, or force it with trainer.require_gpu=false"
        )
    device = torch.device("cuda" if cuda else "cpu")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tokenizer = prepare.Tokenizer.load()
    model = build_gpt(cfg.model, tokenizer.vocab_size)
    seq_len, batch_size = cfg.data.seq_len, cfg.data.batch_size
    if seq_len > cfg.model.max_seq_len:
        raise UserError(f"data.seq_len={seq_len} > model.max_seq_len={cfg.model.max_seq_len}")
    dataset = PackedRows(token_stream(tokenizer, cfg.data.domain), seq_len, batch_size, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {n_params / 1e6:.1f}M parameters | data: {cfg.data.domain}, {dataset.n_rows} rows of "
        f"{seq_len} tokens | {device.type} | output: {out}", flush=True
    )

    t = cfg.trainer
    budget = Budget(t.time_budget, t.max_steps, t.untimed_steps)
    monitor = Monitor(
        budget, t.log_every, seq_len * batch_size, model.num_flops_per_token(seq_len),
        peak_flops(device), t.max_loss_ratio,
    )
    compiled = cuda if t.compile == "auto" else bool(t.compile)
    stage = LMStage(model, cfg.optim, cfg.schedule, budget, t.grad_clip, compile=compiled)
    logger = _build_logger(cfg)
    trainer = L.Trainer(
        accelerator=device.type, devices=1,
        precision="bf16-mixed" if cuda else "32-true",
        max_epochs=-1, max_steps=-1, logger=logger or False,
        callbacks=[TimeBudget(budget), monitor],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=cuda)
    trainer.fit(stage, train_dataloaders=loader)
    model.to(device)  # Lightning hands the module back on the CPU after fit

    val_bpb = prepare.evaluate_bpb(
        model, tokenizer, cfg.data.domain, seq_len=min(prepare.MAX_SEQ_LEN, cfg.model.max_seq_len),
        batch_size=cfg.eval.batch_size, device=device,
    )
    save_checkpoint(model, tokenizer, out / "checkpoint")
    metrics.update(
        val_bpb=val_bpb,
        training_seconds=budget.training_seconds,
        peak_vram_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
        mfu_percent=_mean_mfu(budget, model, seq_len, batch_size, device),
        total_tokens_M=budget.steps * seq_len * batch_size / 1e6,
        num_steps=budget.steps,
        num_params_M=n_params / 1e6,
    )
    return logger


def _mean_mfu(budget, model, seq_len: int, batch_size: int, device) -> float | None:
    from autolab.callbacks import peak_flops

    peak, timed = peak_flops(device), budget.steps - budget.untimed_steps
    if not peak or timed <= 0 or budget.training_seconds <= 0:
        return None
    tok_s = timed * seq_len * batch_size / budget.training_seconds
    return 100 * tok_s * model.num_flops_per_token(seq_len) / peak


def _build_logger(cfg: DictConfig):
    """W&B through Lightning's WandbLogger, one W&B run per Hydra job; None for logger=none."""
    if cfg.get("logger") is None:
        return None
    from hydra.utils import instantiate

    logger = instantiate(cfg.logger)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def _finish_logger(logger, metrics: dict) -> None:
    """Write the summary values into the W&B run and close it, so the next job starts its own."""
    if logger is None:
        return
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update({k: v for k, v in metrics.items() if v is not None})
        wandb.finish(exit_code=0 if metrics["status"] == "ok" else 1)


def _experiment_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return HydraConfig.get().runtime.choices.get("experiment") or "default"


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _quiet_libraries() -> None:
    """Keep logs readable for people and agents: no per-run banners from Lightning or HF."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
