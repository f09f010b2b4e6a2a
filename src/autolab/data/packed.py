"""Packed rows: a domain's token shards, cut into rows of seq_len + 1 tokens.

The shards are memory maps of what prepare.py tokenized once ([bos] doc [bos] doc ...), and a row
is read from its file with `os.pread` when a batch needs it: start-up time and memory stay flat
however large the corpus and however long the run (the OS page cache keeps what is read often;
reading rows through the mapping itself put up to 2 MB of file pages into the process per row,
456 MB after 20 batches of a 1 GB corpus). Every row is a window of one shard, so no token is padding (a shard's last few
tokens, fewer than a row, are not used). Rows are visited in a fresh random order each epoch, drawn
from (seed, epoch): the order is deterministic, and the position (epoch, index) is all the state a
resumed run needs.

Batches are dicts: `tokens` [B, seq_len + 1] int32, `rows` and `replay_rows` (how many rows the global
batch has, and how many of them are replay), and `state`, the position *after* this batch. On several
processes each rank reads only its `part` of every global batch (distributed.rank_slice); the order,
and so the state, is the same on every rank. The loader runs ahead of training, so the position that
belongs to a step travels with its batch; a checkpoint saves the state of the last batch trained.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
import torch

import prepare
from autolab.errors import UserError


def token_shards(tokenizer, domain: str, split: str = "train") -> list[np.ndarray]:
    """The domain's token shards for this tokenizer, memory-mapped. prepare.py makes them for its
    tokenizer; a model with a tokenizer of its own (init_from) gets them made here, once per
    tokenizer (cached under its hash; concurrent jobs wait for the one making them)."""
    from filelock import FileLock

    try:
        return prepare.load_tokens(domain, split, tokenizer)
    except prepare.PrepareError:
        pass  # not made yet for this tokenizer or this text: make them (a damaged or foreign set fails below)
    try:
        prepare.manifest(domain)  # the domain's text exists
        with FileLock(str(prepare.data_dir(domain) / "tokens.lock")):
            print(f"tokenizing domain {domain!r} for tokenizer {prepare.tokenizer_hash(tokenizer)} (once; cached)", flush=True)
            prepare.write_tokens(domain, tokenizer, progress=sys.stderr.isatty())
        return prepare.load_tokens(domain, split, tokenizer)
    except prepare.PrepareError as e:
        raise UserError(str(e)) from None


class _Shard:
    """Windows of one token shard as int32: from a memory-mapped .npy file through os.pread, from an
    array in memory by slicing."""

    def __init__(self, tokens: np.ndarray):
        self.n = len(tokens)
        self.tokens, self.fd = tokens, None
        if isinstance(tokens, np.memmap):
            self.fd, self.offset, self.dtype = os.open(tokens.filename, os.O_RDONLY), tokens.offset, tokens.dtype

    def read(self, start: int, length: int) -> np.ndarray:
        if self.fd is None:
            return self.tokens[start : start + length].astype(np.int32)
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self.fd, length * size, self.offset + start * size), self.dtype).astype(np.int32)

    def __del__(self):
        if self.fd is not None:
            os.close(self.fd)


class PackedRows(torch.utils.data.IterableDataset):
    """Yields batches of `batch_size` rows forever; `state_dict` marks the position."""

    def __init__(self, shards: Sequence | np.ndarray | torch.Tensor, seq_len: int, batch_size: int, seed: int = 0,
                 name: str = "data", part: slice = slice(None)):
        if isinstance(shards, (np.ndarray, torch.Tensor)):  # one stream
            shards = [shards]
        self.shards = [_Shard(s.numpy() if isinstance(s, torch.Tensor) else s) for s in shards]
        rows = np.array([max(s.n - 1, 0) // seq_len for s in self.shards], dtype=np.int64)
        self.first_row = np.concatenate([[0], np.cumsum(rows)])  # global index of each shard's first row
        n_rows = int(self.first_row[-1])
        if n_rows < batch_size:
            raise UserError(
                f"{name} holds {n_rows} rows of {seq_len} tokens, fewer than one batch of "
                f"{batch_size}: lower data.batch_size or data.seq_len, or prepare more text"
            )
        self.seq_len, self.n_rows = seq_len, n_rows
        self.batch_size, self.seed, self.part = batch_size, seed, part
        self.order = EpochOrder(n_rows, seed)

    def windows(self, indices: torch.Tensor) -> list[np.ndarray]:
        """Rows as int32 copies of shard windows; row r of a shard is shard[r*T : r*T + T + 1], so
        consecutive rows overlap by one token and every token is a target once."""
        T = self.seq_len
        rows = indices.numpy()
        shard = np.searchsorted(self.first_row, rows, side="right") - 1
        local = rows - self.first_row[shard]
        return [self.shards[s].read(r * T, T + 1) for s, r in zip(shard.tolist(), local.tolist())]

    def __iter__(self):
        while True:
            rows = self.order.take(self.batch_size)[self.part]  # the next global batch, this rank's rows
            tokens = torch.from_numpy(np.stack(self.windows(rows)))
            yield {"tokens": tokens, "rows": self.batch_size, "replay_rows": 0, "state": self.state_dict()}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


class EpochOrder:
    """Indices 0..n-1 in a fresh random order each epoch, drawn from (seed, epoch): deterministic, and
    the position (epoch, index) is all the state a resumed run needs. Shared by every data source."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def take(self, k: int) -> torch.Tensor:
        """The next k indices; advances the position (into the next epoch's order when one runs out)."""
        parts = []
        while k > 0:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            m = min(k, self.n - self.index)
            parts.append(self._order[self.index : self.index + m])
            self.index += m
            k -= m
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)


class IndexBatches(torch.utils.data.IterableDataset):
    """Batches of items 0..n-1 forever, `batch_size` a step in EpochOrder (this rank's `part` of each),
    each made by `make(indices)`, with the position after it (`state`): resumable. The preference pairs'
    and GRPO's prompts' batches."""

    def __init__(self, n: int, batch_size: int, make, seed: int = 0, part: slice = slice(None)):
        self.batch_size, self.make, self.part = batch_size, make, part
        self.order = EpochOrder(n, seed)
        self.n_rows = n

    def __iter__(self):
        while True:
            index = self.order.take(self.batch_size)[self.part].tolist()
            yield {**self.make(index), "state": self.state_dict()}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
