"""Optimisers: AdamW (fused on CUDA), or Muon for the 2-D hidden weights with AdamW for the rest.

Each param group carries `lr_scale`: the schedule sets lr = lr_at(progress) * lr_scale, so one
curve drives every group (Muon's hidden weights run at a larger rate; Jordan et al. 2024).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from autolab.errors import UserError


def build_optimizers(model: torch.nn.Module, cfg: DictConfig, peak_lr: float) -> list[torch.optim.Optimizer]:
    fused = next(model.parameters()).is_cuda
    params = [p for p in model.parameters() if p.requires_grad]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings()
    if head is not None:
        embeddings.add(id(head.weight))
    adamw = dict(lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    if cfg.name == "adamw":
        matrices = [p for p in params if p.ndim >= 2]
        others = [p for p in params if p.ndim < 2]
        groups = [
            {"params": matrices, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
            {"params": others, "weight_decay": 0.0, "lr_scale": 1.0},
        ]
        return [torch.optim.AdamW([g for g in groups if g["params"]], **adamw)]
    if cfg.name == "muon":
        hidden = [p for p in params if p.ndim == 2 and id(p) not in embeddings]
        rest = [p for p in params if p.ndim != 2 or id(p) in embeddings]
        muon = torch.optim.Muon(
            [{"params": hidden, "lr_scale": cfg.muon_lr_scale}],
            lr=peak_lr * cfg.muon_lr_scale, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay,
        )
        return [muon, torch.optim.AdamW([{"params": rest, "lr_scale": 1.0, "weight_decay": 0.0}], **adamw)]
    raise UserError(f"unknown optim.name {cfg.name!r}: use adamw or muon")
