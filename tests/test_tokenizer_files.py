"""A tokenizer is read from its file as it is now, never from a copy cached by its path: a new
tokenizer saved where an old one was (`prepare.py --new-tokenizer`, a checkpoint folder rewritten in
place) is the one that loads. tiktoken's own reader (load_tiktoken_bpe) keeps such a copy.

    pytest tests/test_tokenizer_files.py -q
"""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import prepare
from autolab.checkpoint import save_checkpoint
from autolab.models import load_pretrained


def _tokenizer(merge: bytes) -> prepare.Tokenizer:
    """The 256 bytes, one merge, the special tokens: two of these differ only in their merge."""
    ranks = {bytes([i]): i for i in range(256)}
    ranks[merge] = 256
    special = {t: 257 + i for i, t in enumerate(prepare.SPECIAL_TOKENS)}
    return prepare.Tokenizer(ranks, r"\S+|\s+", special)


def test_a_new_tokenizer_saved_in_the_same_folder_is_the_one_loaded(tmp_path):
    old, new = _tokenizer(b"ab"), _tokenizer(b"cd")
    old.save(tmp_path)
    assert prepare.tokenizer_hash(prepare.Tokenizer.load(tmp_path)) == prepare.tokenizer_hash(old)
    new.save(tmp_path)  # what `prepare.py --new-tokenizer` does to the cache's tokenizer/ folder
    loaded = prepare.Tokenizer.load(tmp_path)
    assert prepare.tokenizer_hash(loaded) == prepare.tokenizer_hash(new) != prepare.tokenizer_hash(old)
    assert loaded.encode("cd") == [256]


def test_a_damaged_ranks_file_is_one_line_that_says_what_to_do(tmp_path):
    _tokenizer(b"ab").save(tmp_path)
    with (tmp_path / "tiktoken.bpe").open("a") as f:
        f.write("not-base64!\n")
    with pytest.raises(prepare.PrepareError, match=r"line 258: .*--new-tokenizer"):
        prepare.Tokenizer.load(tmp_path)


def test_a_checkpoint_rewritten_in_place_loads_its_new_tokenizer(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=272, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32))
    folder = tmp_path / "checkpoint"
    for tok, merged, split in ((_tokenizer(b"ab"), "ab", "cd"), (_tokenizer(b"cd"), "cd", "ab")):
        save_checkpoint(model, tok, folder)  # the second time over the first, as a rerun in the same dir does
        _, loaded = load_pretrained(str(folder))
        assert prepare.tokenizer_hash(loaded) == prepare.tokenizer_hash(tok)
        auto = AutoTokenizer.from_pretrained(folder)  # tokenizer.json, converted from the ranks file
        assert auto.encode(merged, add_special_tokens=False) == [256]
        assert auto.encode(split, add_special_tokens=False) == list(split.encode())
