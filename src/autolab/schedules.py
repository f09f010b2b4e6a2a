"""Learning rate as a pure function of progress (the fraction of the time budget or of max_steps).

Linear warmup from `initial_lr` to `peak_lr` over the first `warmup` of progress, then a decay to
`min_lr = min_lr_ratio * peak_lr` at progress 1: cosine (Loshchilov & Hutter 2017) or linear, over the
last `warmdown` of progress, the lr held at its peak before that. `warmdown: 1` decays from the end of
warmup on; `warmdown: 0.5` with a linear decay to 0 is warmup-stable-decay, the trapezoid that
karpathy/autoresearch and nanochat run (Hägele et al. 2024, arXiv 2405.18392). Continued pretraining
re-runs the same curve from progress 0: re-warming and re-decaying is what keeps a continued run
competitive with retraining (Ibrahim et al. 2024, arXiv 2403.08763).
"""

import math

DECAYS = {
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "linear": lambda t: 1.0 - t,
}


def lr_at(
    progress: float,
    *,
    peak_lr: float,
    initial_lr: float = 0.0,
    warmup: float = 0.0,
    min_lr_ratio: float = 0.1,
    decay: str = "cosine",
    warmdown: float = 1.0,
) -> float:
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return initial_lr + (peak_lr - initial_lr) * p / warmup
    start = max(warmup, 1.0 - warmdown)  # where the decay begins
    t = max(p - start, 0.0) / (1.0 - start) if start < 1.0 else 1.0  # 0 while the lr holds at its peak
    min_lr = min_lr_ratio * peak_lr
    return min_lr + (peak_lr - min_lr) * DECAYS[decay](t)
