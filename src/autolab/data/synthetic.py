"""Generated text at any size, for scale tests and the data-path benchmark: documents of pseudo-words
drawn from a Zipf distribution (so BPE finds merges and token counts behave like prose), written
as JSONL that `prepare.py --dataset <file>` reads like any local dataset.

    python -m autolab.data.synthetic /tmp/corpus_1g.jsonl 1e9
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def write_corpus(path: Path | str, n_bytes: float, seed: int = 0, doc_bytes: int = 4000) -> Path:
    """Write about `n_bytes` of text as JSONL ({"text": ...} per line) to `path`, in bounded memory."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lengths = rng.integers(2, 10, size=5000)
    vocab = np.array(["".join(rng.choice(letters, n)) for n in lengths])
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    path = Path(path)
    written, words_per_doc = 0, doc_bytes // 6
    with path.open("w", encoding="utf-8") as f:
        while written < n_bytes:
            words = vocab[rng.choice(len(vocab), size=(64, words_per_doc), p=weights)]
            for row in words.tolist():  # Python strings: joining numpy's str_ items costs 3x as much
                text = " ".join(row) + ".\n"
                f.write(json.dumps({"text": text}) + "\n")
                written += len(text)
    return path


if __name__ == "__main__":
    write_corpus(sys.argv[1], float(sys.argv[2]))
