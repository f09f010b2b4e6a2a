"""Optimisers: AdamW (fused on CUDA), or Muon for the 2-D hidden weights with AdamW for the rest.

Each param group carries `lr_scale`: the schedule sets lr = lr_at(progress) * lr_scale, so one
curve drives every group (Muon's hidden weights run at a larger rate; Jordan et al. 2024).

`StackedMuon` is torch.optim.Muon's update (Nesterov momentum, quintic Newton-Schulz in bf16, the
learning rate scaled by sqrt(max(1, rows/cols)), decoupled weight decay) with the matrices of one
shape orthogonalised together: one batched chain of matrix products per shape instead of one per
matrix. torch.optim.Muon's per-matrix loop cost the default model 11% of its step on an H100.
With `beta2` > 0 it is NorMuon (Li et al. 2025, as in autoresearch): each orthogonalised update is
divided, row by row (column by column for wide matrices), by the root of a running mean of its
squares, then scaled back to its own Frobenius norm, so neurons move at an even pace.
Options autoresearch's Muon also runs: Polar Express coefficients (Amsel et al. 2025, a tuned
polynomial per iteration instead of one fixed quintic), momentum warmed up over the first steps
(modded-nanogpt: 0.85 to 0.95), and cautious weight decay (Chen et al. 2025: decay only the entries
the update also pushes toward zero).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from omegaconf import DictConfig

from autolab.errors import UserError

# name: (the factor the norm is inflated by, so singular values start below 1; (a, b, c) of each quintic
# step x <- a x + b (x x^T) x + c (x x^T)^2 x, the last repeated for more steps)
COEFFICIENTS = {
    "jordan": (1.0, ((3.4445, -4.7750, 2.0315),)),  # torch.optim.Muon's (Keller Jordan's): one polynomial for all
    "polar_express": (1.02, (  # Amsel et al. 2025 (arXiv 2505.16932)
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    )),
}


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, coefficients: str = "jordan") -> torch.Tensor:
    """Approximately orthogonalise each matrix of a stack [k, rows, cols], as torch.optim.Muon does one."""
    safety, polys = COEFFICIENTS[coefficients]
    x = g.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * safety).clamp(min=eps)
    for i in range(steps):  # the same fused products as torch's addmm chain, batched
        a, b, c = polys[min(i, len(polys) - 1)]
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def normalize_neurons(u: torch.Tensor, variance: torch.Tensor, beta2: float) -> torch.Tensor:
    """NorMuon's step on a stack of updates [k, rows, cols]: `variance` ([k, rows, 1] or [k, 1, cols],
    updated in place) follows the mean square of each row (of each column where cols > rows)."""
    x = u.float()
    mean_sq = x.square().mean(dim=-1 if variance.size(-1) == 1 else -2, keepdim=True)
    variance.lerp_(mean_sq, 1 - beta2)
    y = x * variance.clamp_min(1e-10).rsqrt()
    y = y * (x.norm(dim=(-2, -1), keepdim=True) / y.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    return y.to(u.dtype)


# what a snapshot saved before an option existed resumes with: the option off, as that run ran
OLD_DEFAULTS = dict(beta2=0.0, coefficients="jordan", momentum_start=None, momentum_warmup=0, cautious_wd=False, step=0)


class StackedMuon(torch.optim.Optimizer):
    """`momentum` is reached from `momentum_start` linearly over the first `momentum_warmup` steps
    (the group's `step` counts them and is saved with it)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, weight_decay: float = 0.1,
                 ns_steps: int = 5, beta2: float = 0.0, coefficients: str = "jordan",
                 momentum_start: float | None = None, momentum_warmup: int = 0, cautious_wd: bool = False,
                 compile: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps, beta2=beta2,
                                      coefficients=coefficients, momentum_start=momentum_start,
                                      momentum_warmup=momentum_warmup, cautious_wd=cautious_wd, step=0))
        self._ns = torch.compile(newton_schulz, dynamic=False) if compile else newton_schulz
        self._norm = torch.compile(normalize_neurons, dynamic=False) if compile else normalize_neurons

    def __setstate__(self, state: dict) -> None:  # load_state_dict passes through here
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in OLD_DEFAULTS.items():
                group.setdefault(key, value)

    @staticmethod
    def momentum_at(group: dict) -> float:
        warmup, start = group["momentum_warmup"], group["momentum_start"]
        if not warmup or start is None:
            return group["momentum"]
        return start + (group["momentum"] - start) * min(group["step"] / warmup, 1.0)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu, wd = group["lr"], self.momentum_at(group), group["weight_decay"]
            group["step"] += 1
            shapes = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    shapes[p.shape].append(p)
            for shape, params in shapes.items():
                grads = [p.grad for p in params]
                bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - mu)
                updates = self._ns(torch.stack(torch._foreach_lerp(grads, bufs, mu)), group["ns_steps"],
                                   coefficients=group["coefficients"])
                if group["beta2"]:  # NorMuon: one running mean square per row (per column if wide)
                    size = (shape[0], 1) if shape[0] >= shape[1] else (1, shape[1])
                    variances = [self.state[p].setdefault("variance", p.new_zeros(size, dtype=torch.float32)) for p in params]
                    stacked = torch.stack(variances)
                    updates = self._norm(updates, stacked, group["beta2"])
                    torch._foreach_copy_(variances, list(stacked.unbind(0)))
                if group["cautious_wd"] and wd:  # decay only where the update also shrinks the weight
                    stacked = torch.stack(params)
                    torch._foreach_sub_(params, list((stacked * (updates * stacked >= 0)).unbind(0)), alpha=lr * wd)
                else:
                    torch._foreach_mul_(params, 1 - lr * wd)
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                torch._foreach_add_(params, list(updates.unbind(0)), alpha=-lr * scale)


def build_optimizers(model: torch.nn.Module, cfg: DictConfig, peak_lr: float) -> list[torch.optim.Optimizer]:
    from autolab.models import embedding_tables  # here, not at the top: autolab.models loads transformers (2.5 s)

    fused = next(model.parameters()).is_cuda
    params = [p for p in model.parameters() if p.requires_grad]
    embeddings = set(embedding_tables(model))
    head = model.get_output_embeddings()
    if head is not None:
        embeddings.add(id(head.weight))
    # the embeddings' (input and value embeddings) and the head's own rates (the head's wins where tied)
    scales = {id(p): cfg.scalar_lr_scale for p in params if p.ndim < 2}  # biases, norms, the x0 skip's scalars
    scales.update({i: cfg.embedding_lr_scale for i in embeddings})
    if head is not None:
        scales[id(head.weight)] = cfg.head_lr_scale
    adamw = dict(lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)

    def scaled(ps: list, weight_decay: float) -> list[dict]:  # one group per rate
        rates = sorted({scales.get(id(p), 1.0) for p in ps})
        return [{"params": [p for p in ps if scales.get(id(p), 1.0) == r], "weight_decay": weight_decay, "lr_scale": r}
                for r in rates]

    if cfg.name == "adamw":
        groups = scaled([p for p in params if p.ndim >= 2], cfg.weight_decay) + scaled([p for p in params if p.ndim < 2], 0.0)
        return [torch.optim.AdamW(groups, **adamw)]
    if cfg.name == "muon":
        hidden = [p for p in params if p.ndim == 2 and id(p) not in embeddings]
        rest = [p for p in params if p.ndim != 2 or id(p) in embeddings]
        muon = StackedMuon(
            [{"params": hidden, "lr_scale": cfg.muon_lr_scale}],
            lr=peak_lr * cfg.muon_lr_scale, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay,
            beta2=cfg.muon_beta2, coefficients=cfg.muon_coefficients, momentum_start=cfg.muon_momentum_start,
            momentum_warmup=cfg.muon_momentum_warmup, cautious_wd=cfg.muon_cautious_wd, compile=fused,
        )
        return [muon, torch.optim.AdamW(scaled(rest, 0.0), **adamw)]
    raise UserError(f"unknown optim.name {cfg.name!r}: use adamw or muon")
