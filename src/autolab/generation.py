"""Batched, seeded text generation for the research tools (prefgen, judge, the DPO win rate), with
our checkpoints and any Hugging Face causal LM alike.

Prompts go through the model's chat template when it has one (ours: `render_chat`), are left-padded
into batches of similar length, and sampled with `generate`; each answer stops at the end of the
assistant's turn or the EOS token. The same prompts, settings and seed give the same answers, in
whatever order the models are asked. Generation keeps a KV cache (our GPT's and any HF model's): each new
token costs one token's forward pass (benchmarks/generation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import prepare
from autolab.errors import UserError


@dataclass
class Sampling:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: the whole vocabulary
    seed: int = 0
    batch_size: int = 16  # prompts per generate call: memory grows with it


def has_chat_template(tokenizer) -> bool:
    return isinstance(tokenizer, prepare.Tokenizer) or bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, prompt, chat: str = "auto") -> str:
    """A prompt (text, or TRL's list of messages) as the model's input: a user turn that opens the
    assistant's answer through the chat template when the tokenizer has one (chat=auto) or must have
    one (chat=required, and always for messages); text as it is otherwise (or chat=off)."""
    messages = prompt if isinstance(prompt, list) else None
    if messages is None and (chat == "off" or (chat == "auto" and not has_chat_template(tokenizer))):
        return prompt
    if not has_chat_template(tokenizer):
        what = "the prompts are conversations (lists of messages)" if messages else "one is needed here"
        raise UserError(f"the model's tokenizer has no chat template, and {what}: use a chat model, "
                        "or give plain-text prompts with chat=auto")
    messages = messages or [{"role": "user", "content": prompt}]
    if isinstance(tokenizer, prepare.Tokenizer):
        from autolab.data.preference import render_chat

        return render_chat(messages, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _codec(tokenizer):
    """(encode with special tokens, decode, bos id, stop ids) for our tokenizer or an HF one."""
    from autolab.data.preference import _encoder

    _, encode, bos = _encoder(tokenizer)
    if isinstance(tokenizer, prepare.Tokenizer):
        stops = set(tokenizer.special.values())  # any special token ends the text (<|assistant_end|> first of all)
        return encode, tokenizer.decode, bos, stops
    stops = {t for t in (tokenizer.eos_token_id, getattr(tokenizer, "pad_token_id", None)) if t is not None}
    return encode, (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)), bos, stops


def generate(model, tokenizer, prompts: list[str], sampling: Sampling, device=None, progress: str | None = None) -> list[str]:
    """One completion per prompt (already formatted: see `chat_prompt`), in the prompts' order."""
    return [decode_completion(tokenizer, ids) for ids in sample_ids(model, tokenizer, prompts, sampling, device, progress)[1]]


def decode_completion(tokenizer, ids: list[int]) -> str:
    """A completion's text (sample_ids' tokens): without the stop token that ended it, stripped."""
    _, decode, _, stops = _codec(tokenizer)
    return decode(ids[:-1] if ids and ids[-1] in stops else ids).strip()


@torch.no_grad()
def sample_ids(model, tokenizer, prompts: list[str], sampling: Sampling, device=None, progress: str | None = None
               ) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids) of one completion per prompt, in the prompts' order: each prompt's
    tokens (BOS first) and the tokens sampled after it, up to and including the first stop token (the
    end of the assistant's turn, EOS) where one came within max_new_tokens."""
    if not prompts:
        return [], []
    encode, _, bos, stops = _codec(tokenizer)
    device = device or next(model.parameters()).device
    ids = [[bos] + encode(p) for p in prompts]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max(map(len, ids)) + sampling.max_new_tokens > limit:
        longest = max(map(len, ids))
        raise UserError(f"a prompt of {longest} tokens + {sampling.max_new_tokens} new ones exceeds the model's "
                        f"{limit} positions: shorten the prompts or lower max_new_tokens")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: little padding
    out: list[list[int]] = [[] for _ in ids]
    rng = torch.get_rng_state()
    torch.manual_seed(sampling.seed)
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc=progress, unit="prompt", leave=False)
    try:
        for start in range(0, len(order), sampling.batch_size):
            chunk = order[start : start + sampling.batch_size]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.full((len(chunk), width), bos, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for j, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                batch[j, width - len(ids[i]) :] = torch.tensor(ids[i])
                mask[j, width - len(ids[i]) :] = 1
            greedy = sampling.temperature <= 0
            new = model.generate(
                batch.to(device), attention_mask=mask.to(device), max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                top_k=sampling.top_k if not greedy else None, top_p=None, pad_token_id=bos, use_cache=True,
                eos_token_id=sorted(stops) or None,
            )[:, width:].tolist()
            for j, i in enumerate(chunk):
                tokens = new[j]
                out[i] = tokens[: next((k + 1 for k, t in enumerate(tokens) if t in stops), len(tokens))]
            if bar:
                bar.update(len(chunk))
    finally:
        if bar:
            bar.close()
        model.train(was_training)
        torch.set_rng_state(rng)
    return ids, out
