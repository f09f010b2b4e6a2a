"""Write a randomly initialised Llama-style causal LM and a tokenizer as a Hugging Face folder.

No weights can be fetched here, so benchmarks and tests build their Llama from a config. The
tokenizer is autolab's (converted to `tokenizer.json`) unless --tokenizer names another HF folder.

    python benchmarks/make_llama.py --size 150m --out /tmp/llama150m
"""

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import prepare
from autolab.checkpoint import save_tokenizer

SIZES = {  # hidden, layers, heads, intermediate
    "tiny": (64, 2, 4, 172),
    "150m": (1024, 12, 8, 2816),
    "350m": (1024, 24, 16, 2816),
}


def make_llama(size: str, out: Path, vocab_size: int = prepare.VOCAB_SIZE, seq_len: int = prepare.MAX_SEQ_LEN,
               seed: int = 0) -> LlamaForCausalLM:
    hidden, layers, heads, inter = SIZES[size]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=seq_len,
        tie_word_embeddings=False,
    ))
    model.save_pretrained(out, safe_serialization=True)
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=sorted(SIZES), default="150m")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    model = make_llama(args.size, out)
    save_tokenizer(prepare.Tokenizer.load(), out)
    (out / "tiktoken.bpe").unlink()  # leave only the HF tokenizer: the folder loads like any hub model
    (out / "tiktoken.json").unlink()
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {out}")


if __name__ == "__main__":
    main()
