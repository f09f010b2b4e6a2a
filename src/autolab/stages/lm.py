"""Language-model stage (pretraining, continued pretraining, SFT): next-token loss on packed rows.

Continued pretraining uses it unchanged: a fresh optimiser state, the schedule re-warmed from
progress 0, and batches that may mix in replay rows (the measured share is reported every step).
"""

from __future__ import annotations

import torch

from autolab.errors import UserError
from autolab.objectives import packed_rows_loss
from autolab.stages.base import OptimisedStage
from autolab.stages.recipe import Context, Recipe, StageParts


class LMStage(OptimisedStage):
    def __init__(self, *args, compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay_rows = self.rows = 0
        # Only the loss is compiled (cast, model, cross-entropy in one graph): compiling the whole
        # module would make Lightning compile training_step, whose Python step counters recompile.
        self.batch_loss = torch.compile(self._batch_loss) if compile else self._batch_loss

    def _batch_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        return packed_rows_loss(self.model, tokens)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        self.set_lr()
        tokens = batch["tokens"]
        loss = self.batch_loss(tokens)
        grad_norm = self.optimise(loss)
        self.rows += batch["rows"]  # of the global batch, on every rank
        self.replay_rows += batch["replay_rows"]
        # replay_share: a host-side number (no sync), the measured share of this step's tokens
        return {"loss": loss.detach(), "grad_norm": grad_norm, "replay_share": batch["replay_rows"] / batch["rows"]}

    def snapshot_state(self) -> dict:
        return {"rows": self.rows, "replay_rows": self.replay_rows}

    def load_snapshot_state(self, state: dict) -> None:
        self.rows, self.replay_rows = state["rows"], state["replay_rows"]


def build(ctx: Context) -> StageParts:
    """Pretraining, continued pretraining and SFT: packed rows of data.domain, replay mixed in at
    replay.ratio; reports the measured replay share."""
    from autolab.data import build_training_data
    from autolab.distributed import rank_slice
    from autolab.models import flops_per_token

    cfg = ctx.cfg
    seq_len, batch_size = cfg.data.seq_len, cfg.data.batch_size
    if seq_len > ctx.max_len:
        raise UserError(f"data.seq_len={seq_len} is longer than the model's {ctx.max_len} positions: lower it")
    data = build_training_data(cfg, ctx.tokenizer, seq_len, rank_slice(batch_size, ctx.world, "data.batch_size"))
    module = LMStage(ctx.model, compile=ctx.compiled, **ctx.common)

    def finals() -> dict:  # the measured share of replayed tokens over the whole run
        if cfg.replay.ratio > 0 or cfg.stage.measure_forgetting:
            return {"replay_share": module.replay_rows / max(module.rows, 1)}
        return {}

    return StageParts(data, module, "tokens", seq_len * batch_size, flops_per_token(ctx.model, seq_len),
                      source=f"{cfg.data.domain}, {data.n_rows} rows", finals=finals)


RECIPE = Recipe(build)
