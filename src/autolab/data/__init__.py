"""Data: prepared documents -> packed token rows the stage trains on; replay mixing."""

from autolab.data.packed import PackedRows, token_shards
from autolab.data.replay import ReplayMixture, check_ratio

__all__ = ["PackedRows", "ReplayMixture", "build_training_data", "token_shards"]


def build_training_data(cfg, tokenizer, seq_len: int, part: slice = slice(None)):
    """Packed rows of `data.domain`, with rows of `replay.domain` mixed in at `replay.ratio`; this
    rank reads its `part` of every global batch."""
    ratio = float(cfg.replay.ratio)
    check_ratio(ratio)  # before any data is read: a bad ratio fails at once
    new = PackedRows(token_shards(tokenizer, cfg.data.domain), seq_len, cfg.data.batch_size, cfg.seed,
                     name=f"domain {cfg.data.domain!r}", part=part)
    if ratio == 0.0:
        return new
    replay = PackedRows(token_shards(tokenizer, cfg.replay.domain), seq_len, 1, cfg.seed + 1,
                        name=f"replay domain {cfg.replay.domain!r}")
    return ReplayMixture(new, replay, ratio, part)
