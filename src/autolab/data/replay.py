"""Replay mixing for continued pretraining: old-domain rows replace some new-domain rows.

Each step of B rows holds k replay rows, chosen by error diffusion so that the replayed share of
training tokens is within one row of `ratio` at every step and exact over the run (every row is
seq_len tokens, none is padding, so rows measure tokens, not documents). Replay replaces new
tokens; the tokens per step and the budget stay the same. Both streams have their own
deterministic order from the seed, and the state is both positions plus the rows owed.
(Replay against forgetting in continued pretraining: Ibrahim et al. 2024, arXiv 2403.08763.)
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from autolab.data.packed import PackedRows
from autolab.errors import UserError


def check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"replay.ratio={ratio} is outside [0, 1): 0 turns replay off, 0.05 is typical")


class ReplayMixture(torch.utils.data.IterableDataset):
    def __init__(self, new: PackedRows, replay: PackedRows, ratio: float, part: slice = slice(None)):
        check_ratio(ratio)
        self.n_rows = new.n_rows
        self.new, self.replay, self.ratio = new, replay, ratio
        self.batch_size, self.part = new.batch_size, part
        per_step = Fraction(str(ratio)) * self.batch_size  # exact: no float drift over a long run
        self._num, self._den = per_step.numerator, per_step.denominator
        self.steps = 0  # batches produced: the replay rows owed follow from it

    def replay_rows(self, step: int) -> int:
        """Rows of replay in batch `step`: floor(r*B*(step+1)) - floor(r*B*step)."""
        return (self._num * (step + 1)) // self._den - (self._num * step) // self._den

    def __iter__(self):
        B = self.batch_size
        while True:
            k = self.replay_rows(self.steps)
            new, old = self.new.order.take(B - k), self.replay.order.take(k)  # the global batch: new rows, then replay
            lo, hi, _ = self.part.indices(B)  # this rank's rows of it
            rows = self.new.windows(new[lo:hi]) + self.replay.windows(old[max(lo - (B - k), 0) : max(hi - (B - k), 0)])
            tokens = torch.from_numpy(np.stack(rows))  # one copy of both sources' rows
            self.steps += 1
            yield {"tokens": tokens, "rows": B, "replay_rows": k, "state": self.state_dict()}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "new": self.new.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.new.load_state_dict(state["new"])
        self.replay.load_state_dict(state["replay"])
