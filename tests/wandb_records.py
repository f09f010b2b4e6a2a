"""Read an offline W&B run file (`run-<id>.wandb`) back, for tests.

The file is a LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks of chunks with a
crc32/length/type header) of protobuf `Record`s; wandb 0.31 ships no reader of its own, so tests
use this one to prove that what was logged is in the real run file.
"""

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            chunks = [chunk]
        else:
            chunks.append(chunk)
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            yield record


def history(path: Path) -> list[dict]:
    import json

    return [
        {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records(path)
        if r.WhichOneof("record_type") == "history"
    ]


def summary(path: Path) -> dict:
    import json

    out = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update({(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update})
    return out


def config(path: Path) -> dict:
    import json

    out = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "config":
            out.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return out
