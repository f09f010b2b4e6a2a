"""Learning rate as a pure function of progress (the fraction of the time budget or of max_steps).

Linear warmup from `initial_lr` to `peak_lr` over the first `warmup` of progress, then cosine decay
to `min_lr = min_lr_ratio * peak_lr` at progress 1 (Loshchilov & Hutter 2017). Continued
pretraining re-runs the same curve from progress 0: re-warming and re-decaying is what keeps a
continued run competitive with retraining (Ibrahim et al. 2024, arXiv 2403.08763).
"""

import math


def lr_at(
    progress: float,
    *,
    peak_lr: float,
    initial_lr: float = 0.0,
    warmup: float = 0.0,
    min_lr_ratio: float = 0.1,
) -> float:
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return initial_lr + (peak_lr - initial_lr) * p / warmup
    min_lr = min_lr_ratio * peak_lr
    decay = (p - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * decay))
