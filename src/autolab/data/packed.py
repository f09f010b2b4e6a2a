"""Packed rows: a domain's documents as one token stream, cut into rows of seq_len + 1 tokens.

Every row is a window of the stream ([bos] doc [bos] doc ...), so no token is padding. Rows are
visited in a fresh random order each epoch, drawn from (seed, epoch): the order is deterministic,
and the position (epoch, index) is all the state a resumed run needs.

Batches are dicts: `tokens` [B, seq_len + 1] int32, `replay_rows` (how many rows are replay), and
`state`, the position *after* this batch. The loader runs ahead of training, so the position that
belongs to a step travels with its batch; a checkpoint saves the state of the last batch trained.
"""

from __future__ import annotations

import numpy as np
import torch

import prepare
from autolab.errors import UserError


def token_stream(tokenizer, domain: str, split: str = "train") -> torch.Tensor:
    """The documents of one split as a 1-D int32 tensor (tokenized once, in memory)."""
    try:
        texts = prepare.load_documents(domain, split)
    except prepare.PrepareError as e:
        raise UserError(str(e)) from None
    stream = prepare.document_stream(tokenizer, texts)
    return torch.from_numpy(np.asarray(stream, dtype=np.int32))


class PackedRows(torch.utils.data.IterableDataset):
    """Yields batches of `batch_size` rows forever; `state_dict` marks the position."""

    def __init__(self, stream: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0, name: str = "data"):
        n_rows = (len(stream) - 1) // seq_len
        if n_rows < batch_size:
            raise UserError(
                f"{name} holds {n_rows} rows of {seq_len} tokens, fewer than one batch of "
                f"{batch_size}: lower data.batch_size or data.seq_len, or prepare more text"
            )
        self.stream, self.seq_len, self.n_rows = stream, seq_len, n_rows
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=g)

    def windows(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """Rows as views of the stream; rows overlap by one token: row r is stream[r*T : r*T + T + 1].
        (Stacking these slices copies at memory speed; fancy indexing of an unfold() view of the
        stream took 200x longer, 6 ms for 16 rows of 2048.)"""
        T = self.seq_len
        return [self.stream[r * T : r * T + T + 1] for r in indices.tolist()]

    def take(self, n: int) -> torch.Tensor:
        """The next n rows in order (crossing into the next epoch's order when one runs out)."""
        return torch.stack(self.windows(self.take_indices(n)))

    def take_indices(self, n: int) -> torch.Tensor:
        """Row indices of the next n rows; advances the position."""
        parts = []
        while n > 0:
            if self.index == self.n_rows:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            k = min(n, self.n_rows - self.index)
            parts.append(self._order[self.index : self.index + k])
            self.index += k
            n -= k
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def __iter__(self):
        while True:
            tokens = self.take(self.batch_size)
            yield {"tokens": tokens, "replay_rows": 0, "state": self.state_dict()}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)
