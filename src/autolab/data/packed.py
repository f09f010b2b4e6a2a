"""Packed rows: a domain's documents as one token stream, cut into rows of seq_len + 1 tokens.

Every row is a window of the stream ([bos] doc [bos] doc ...), so no token is padding. Rows are
visited in a fresh random order each epoch, drawn from (seed, epoch): the order is deterministic,
and the position (epoch, index) is all the state a resumed run needs.
"""

from __future__ import annotations

import time

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
    """Yields int32 batches [batch_size, seq_len + 1] forever; `state_dict` marks the position."""

    def __init__(self, stream: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0):
        n_rows = (len(stream) - 1) // seq_len
        if n_rows < batch_size:
            raise UserError(
                f"the data holds {n_rows} rows of {seq_len} tokens, fewer than one batch of "
                f"{batch_size}: lower data.batch_size or data.seq_len, or prepare more text"
            )
        # rows overlap by one token: row r is stream[r*T : r*T + T + 1]
        self.rows = stream[: n_rows * seq_len + 1].unfold(0, seq_len + 1, seq_len)
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0

    @property
    def n_rows(self) -> int:
        return self.rows.size(0)

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=g)

    def __iter__(self):
        order = self._order(self.epoch)
        while True:
            if self.index + self.batch_size > self.n_rows:
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order(self.epoch)
            idx = order[self.index : self.index + self.batch_size]
            self.index += self.batch_size
            yield self.rows[idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]


def loader_tokens_per_second(dataset: PackedRows, seconds: float = 2.0) -> float:
    """How many tokens/s the data path delivers on its own (batches built, nothing trained)."""
    batches, t0 = 0, time.perf_counter()
    it = iter(dataset)
    while time.perf_counter() - t0 < seconds:
        next(it)
        batches += 1
    return batches * dataset.batch_size * (dataset.rows.size(1) - 1) / (time.perf_counter() - t0)
