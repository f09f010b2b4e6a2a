"""Data: prepared documents -> packed token rows the stage trains on; replay mixing."""

from autolab.data.packed import PackedRows, token_stream
from autolab.data.replay import ReplayMixture

__all__ = ["PackedRows", "ReplayMixture", "token_stream"]
