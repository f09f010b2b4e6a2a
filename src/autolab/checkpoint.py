"""Checkpoint folders in Hugging Face format: `save_pretrained` (safetensors) plus the tokenizer,
both as tiktoken text files and as a `tokenizer.json` that `AutoTokenizer` reads.
Folders are written next to their destination and renamed into place, so a crash never leaves a
half-written checkpoint where a good one was."""

from __future__ import annotations

import shutil
from pathlib import Path

import prepare


def save_tokenizer(tokenizer: prepare.Tokenizer, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.tiktoken import TikTokenConverter

    class Converter(TikTokenConverter):  # transformers reads the ranks with tiktoken's reader, which
        def load_tiktoken_bpe(self, path):  # caches every file by its path (prepare.Tokenizer.read_ranks)
            return prepare.Tokenizer.read_ranks(path)

    tokenizer.save(folder)
    converter = Converter(vocab_file=str(folder / "tiktoken.bpe"), pattern=tokenizer.pattern)
    specials = sorted(tokenizer.special, key=tokenizer.special.get)  # in id order: appended in turn
    fast = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(), bos_token=specials[0], eos_token=specials[0]
    )
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    if fast.convert_tokens_to_ids(specials) != [tokenizer.special[t] for t in specials]:
        raise RuntimeError("special token ids differ between tiktoken and the converted tokenizer")
    fast.save_pretrained(folder)


def save_checkpoint(model, tokenizer, folder: Path) -> Path:
    """Weights and tokenizer (ours, or the HF tokenizer an `init_from` model came with)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if isinstance(tokenizer, prepare.Tokenizer):
        save_tokenizer(tokenizer, tmp)
    else:
        tokenizer.save_pretrained(tmp)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return folder
