"""Data: prepared documents -> packed token rows the stage trains on."""

from autolab.data.packed import PackedRows, token_stream

__all__ = ["PackedRows", "token_stream"]
