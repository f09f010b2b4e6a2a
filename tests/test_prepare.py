"""prepare.py: corpora, shards, tokenizer text format and round trip, bpb exactness."""

import base64
import json
import math
import os
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import prepare


def test_embedded_corpora_are_deterministic_and_split_by_document(cache):
    manifest = json.loads((prepare.data_dir("prose") / "manifest.json").read_text())
    again = prepare.write_domain("prose_again", prepare.embedded_documents("prose"))
    assert again["splits"] == manifest["splits"]  # same bytes, same hashes, same split
    train = set(prepare.load_documents("prose", "train"))
    val = set(prepare.load_documents("prose", "val"))
    assert train and val and not train & val


def test_docstrings_go_to_prose_and_the_rest_to_code(cache):
    source = 'x = 1\n\n\ndef f():\n    """Return one, a value that every caller expects here."""\n\n\nclass C:\n    """A class."""\n    y = """not a docstring"""\n'
    prose, code = prepare._split_module(source)
    assert prose == "Return one, a value that every caller expects here."  # short docstrings skipped
    assert "Return one" not in code and "A class" not in code and '"""not a docstring"""' in code
    compile(code, "<code>", "exec")  # a function left with no body gets `...`

    phrase = "JSON (JavaScript Object Notation)"  # json/__init__.py's module docstring
    everything = {d: "".join(prepare.load_documents(d, "train") + prepare.load_documents(d, "val")) for d in ("prose", "code")}
    assert phrase in everything["prose"] and phrase not in everything["code"]
    assert "def dumps(" in everything["code"]


def test_tokenizer_files_are_text_and_round_trip(cache):
    folder = prepare.tokenizer_dir()
    lines = (folder / "tiktoken.bpe").read_text().splitlines()
    token, rank = lines[300].split(" ")
    assert int(rank) == 300 and base64.b64decode(token)  # tiktoken's base64 ranks format
    meta = json.loads((folder / "tiktoken.json").read_text())
    assert set(meta["special_tokens"]) == set(prepare.SPECIAL_TOKENS) and meta["pattern"]
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pickle"))

    tok = prepare.Tokenizer.load()
    assert tok.vocab_size == prepare.VOCAB_SIZE
    samples = [
        "plain ASCII, with numbers 12345 and punctuation!?",
        "emoji 🙂👩‍👩‍👧 flags 🇫🇷 and CJK 世界你好 한국어",
        "combining: e\u0301 a\u0308 \u0915\u094d\u0937 zero-width\u200bjoiner",
        "control \x00\x01\x07\t\r\n\x1b[0m and a \ufeff BOM",
        "looks special but is text: <|bos|> <|assistant_end|>",
        "",
    ]
    for text in samples:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.bos_id not in ids


def _byte_tokenizer(merges=()):
    ranks = {bytes([i]): i for i in range(256)}
    for m in merges:
        ranks[m] = len(ranks)
    special = {t: len(ranks) + i for i, t in enumerate(prepare.SPECIAL_TOKENS)}
    return prepare.Tokenizer(ranks, r"\S+|\s+", special)


class UniformLM(torch.nn.Module):
    """Equal probability for every token: each scored token costs exactly ln(V) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.w)


def test_bpb_hand_worked_example():
    # "ab" is one token (a merge), "c" one token; the stream is [bos, ab, bos, c].
    # Scored: "ab" and "c" (the bos target is not text) -> 2 tokens; bytes = 3.
    # bpb = 2 ln(V) / (ln 2 * 3) with V = 257 + 5 = 262.
    tok = _byte_tokenizer([b"ab"])
    assert tok.encode("ab") == [256] and tok.vocab_size == 262
    expected = 2 * math.log(262) / (math.log(2) * 3)
    assert expected == pytest.approx(5.355615, abs=1e-6)  # log2(262) = 8.033423
    for seq_len in (1, 2, 3, 64):  # however the stream is cut, each token is scored once
        bpb = prepare.evaluate_bpb(UniformLM(262), tok, ["ab", "c"], seq_len=seq_len, batch_size=2)
        assert bpb == pytest.approx(expected, rel=1e-6)  # float32 softmax


def test_bpb_counts_utf8_bytes_not_characters():
    tok = _byte_tokenizer()
    text = "é世"  # 2 characters, 5 UTF-8 bytes, 5 byte tokens
    bpb = prepare.evaluate_bpb(UniformLM(261), tok, [text], seq_len=8)
    assert bpb == pytest.approx(math.log2(261))


def test_bpb_of_a_perfect_model_is_zero():
    tok = _byte_tokenizer()
    stream = prepare.document_stream(tok, ["hello"])

    class Oracle(UniformLM):
        def forward(self, input_ids):
            logits = torch.full((*input_ids.shape, self.vocab), -1e4)
            for t in range(input_ids.size(1)):
                nxt = stream[t + 1] if t + 1 < len(stream) else 0
                logits[:, t, nxt] = 1e4
            return SimpleNamespace(logits=logits)

    assert prepare.evaluate_bpb(Oracle(261), tok, ["hello"], seq_len=16) == pytest.approx(0.0, abs=1e-6)


def test_unigram_reference_is_printed(cache, capsys):
    tok = prepare.Tokenizer.load()
    bpb = prepare.unigram_bpb(tok, "prose")
    assert 1.0 < bpb < 8.0


def test_hub_path_on_local_jsonl_and_parquet(tmp_path, cache):
    jsonl = tmp_path / "docs.jsonl"
    rows = [{"text": f"document number {i} " * 20, "meta": i} for i in range(40)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = list(prepare.hub_documents(str(jsonl), max_docs=30))
    assert len(docs) == 30 and docs[3][1] == rows[3]["text"]

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pq.write_table(pa.table({"content": [r["text"] for r in rows]}), pq_dir / "part-0.parquet")
    docs = list(prepare.hub_documents(str(pq_dir), text_column="content"))
    assert [d[1] for d in docs] == [r["text"] for r in rows]
    with pytest.raises(prepare.PrepareError, match="no column 'text'"):
        list(prepare.hub_documents(str(pq_dir)))

    # ids that do not depend on tmp_path (hub_documents' ids name the file): the split is by a hash of
    # the id, and 40 random ids leave the validation split empty about once in 70 runs
    manifest = prepare.write_domain("localdocs", [(f"localdocs/{i}", text) for i, (_, text) in enumerate(docs)])
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 40


def test_missing_corrupt_and_empty_shards_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path))
    with pytest.raises(prepare.PrepareError, match="run `python prepare.py`"):
        prepare.load_documents("prose", "train")
    folder = prepare.data_dir("prose")
    folder.mkdir(parents=True)
    bad = folder / "train-00000.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(prepare.PrepareError, match=str(bad)):
        prepare.load_documents("prose", "train")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), bad)
    with pytest.raises(prepare.PrepareError, match=f"{bad} is empty"):
        prepare.load_documents("prose", "train")
