"""What a starting checkpoint scores, measured once: `val_bpb_start` and `replay_val_bpb_start` of a
run that starts from weights (CPT, SFT, DPO, GRPO) are the bits per byte of the checkpoint it starts
from, and every job of a sweep over the same base measured the same numbers again (the replay sweep:
three jobs, the same two starting scores three times; on the CPU each costs seconds).

    value = start_scores.bpb(init_path, facts, lambda: evaluate(model))   # run.py, for each domain

The value is kept in $AUTOLAB_CACHE/start_scores/<key>.json, keyed by everything the number depends
on: the checkpoint's weight files (folder, names, sizes, modification times: a base trained again is a
new key), the validation text itself (a hash of it), the tokenizer, the evaluation's sequence length and
batch size, the device type and attention backend (bf16 on a GPU rounds otherwise), and torch's version.
A hub id, or a folder without safetensors files, is measured every time. Delete the folder to measure
again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

FOLDER = "start_scores"


def key(init_path: str | None, facts: dict) -> str | None:
    """The cache key of a starting score, or None where the checkpoint is not a local folder of weights."""
    folder = Path(str(init_path)).expanduser() if init_path else None
    weights = sorted(folder.glob("*.safetensors")) if folder and folder.is_dir() else []
    if not weights:
        return None
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    ident = json.dumps({"folder": str(folder.resolve()), "weights": files, **facts}, sort_keys=True, default=str)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def text_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def bpb(init_path: str | None, facts: dict, measure: Callable[[], float], root: Path) -> float:
    """The kept score for (init_path, facts) under `root`, else `measure()`, kept for next time."""
    k = key(init_path, facts)
    path = root / FOLDER / f"{k}.json" if k else None
    if path is not None and path.exists():
        try:
            return float(json.loads(path.read_text())["value"])
        except (OSError, ValueError, KeyError, TypeError):  # a damaged file: measure again
            pass
    value = measure()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"value": value, "init_from": str(init_path), **facts}, default=str) + "\n")
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
    return value
