"""Models: our GPT (registered with transformers' Auto classes so any HF tool can load it), and
loading of any Hugging Face causal LM with its own tokenizer for `init_from`."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

import prepare
from autolab.errors import UserError, first_line
from autolab.models.gpt import GPT, GPTConfig, GPTForSequenceClassification

# Registration only fills transformers' name tables (no I/O, no device work).
AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
AutoModelForCausalLM.register(GPTConfig, GPT, exist_ok=True)
AutoModelForSequenceClassification.register(GPTConfig, GPTForSequenceClassification, exist_ok=True)

__all__ = ["GPT", "GPTConfig", "GPTForSequenceClassification", "build_gpt", "load_pretrained", "flops_per_token",
           "embedding_tables", "use_attention", "reward_model"]

def use_attention(backend: str) -> None:
    """Pick the kernel of `scaled_dot_product_attention` for this process (our GPT and HF models alike):
    `auto` leaves PyTorch's choice; otherwise that backend, with the math kernel as the fallback for
    shapes or devices it does not take."""
    if backend == "auto":
        return
    torch.backends.cuda.enable_flash_sdp(backend == "flash")
    torch.backends.cuda.enable_cudnn_sdp(backend == "cudnn")
    torch.backends.cuda.enable_mem_efficient_sdp(backend == "efficient")
    torch.backends.cuda.enable_math_sdp(True)


def build_gpt(cfg, vocab_size: int) -> GPT:
    """A freshly initialised GPT from the `model` config group."""
    return GPT(
        GPTConfig(
            vocab_size=vocab_size,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            max_position_embeddings=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            value_embeddings=cfg.value_embeddings,
            logit_softcap=cfg.logit_softcap,
            x0_skip=cfg.x0_skip,
            head_init_std=cfg.head_init_std,
        )
    )


def load_pretrained(source: str):
    """(model in fp32, tokenizer) from a folder we wrote, any HF causal-LM folder, or a hub id.

    Our checkpoints carry tiktoken files and load with prepare.Tokenizer (exact, fast); anything
    else uses its own AutoTokenizer. Every problem is a one-line UserError before training starts.
    """
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    where = str(path) if path.exists() else source
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise UserError(f"init_from={source}: no such folder (give a checkpoint folder or a hub id)")
    if path.is_dir() and not list(path.glob("*.safetensors")) and list(path.glob("*.bin")):
        raise UserError(f"init_from={source} has only pickled (.bin) weights, which are never loaded here: "
                        "save them as safetensors (save_pretrained(..., safe_serialization=True))")
    try:  # safetensors only: weights a user hands us are never unpickled
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True)
    except ValueError as e:  # transformers: "Unrecognized configuration class ..."
        raise UserError(f"init_from={source} is not a causal language model: {first_line(e)}") from None
    except Exception as e:  # no config.json, damaged weights, or the hub could not be reached
        raise UserError(f"init_from={source} could not be loaded as a causal LM ({type(e).__name__}: "
                        f"{first_line(e)})") from None
    try:
        if path.exists() and (path / "tiktoken.bpe").exists():
            tokenizer = prepare.Tokenizer.load(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise UserError(f"init_from={source} has no usable tokenizer: {first_line(e)}") from None
    n_tok, n_emb = prepare.vocab_size(tokenizer), model.get_input_embeddings().num_embeddings
    if n_tok > n_emb:
        raise UserError(
            f"init_from={source}: its tokenizer has {n_tok} tokens but the model's embedding only "
            f"{n_emb}: keep the tokenizer the model was trained with in the same folder"
        )
    return model, tokenizer


def reward_model(lm: torch.nn.Module) -> torch.nn.Module:
    """The causal LM `lm` as a sequence classifier with one output (a reward model): its backbone's weights
    (shared, not copied) under the Auto class's sequence-classification head for its config, whose `score`
    starts fresh; what `AutoModelForSequenceClassification.from_pretrained(lm's folder, num_labels=1)`
    would give. `config.pad_token_id` says where each sequence ends: set it before batching."""
    import copy

    config = copy.deepcopy(lm.config)
    config.num_labels, config.architectures = 1, None
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=next(lm.parameters()).dtype)
    except ValueError as e:  # transformers: "Unrecognized configuration class ..."
        raise UserError(f"{type(lm).__name__} has no sequence-classification class in transformers, so it "
                        f"cannot be a reward model: {first_line(e)}") from None
    missing, _ = model.load_state_dict(lm.state_dict(), strict=False, assign=True)  # lm_head: unexpected, left out
    heads = {name for name, _ in model.named_parameters() if name.split(".")[0] == "score"}
    if set(missing) - heads:
        raise UserError(f"{type(lm).__name__}'s weights do not fit {type(model).__name__} (missing "
                        f"{sorted(set(missing) - heads)[:3]}): it cannot be a reward model here")
    return model


def embedding_tables(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Every lookup table's weight (the input embedding, the GPT's value embeddings), once each, by id:
    what the FLOPs leave out and what the optimiser runs at the embedding rate."""
    return {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token as AutoResearch/nanochat count them, for any HF decoder:
    6 x (parameters - embedding tables) + 12 x layers x width x sequence length. A table lookup is
    no matmul: the input embedding and the GPT's value embeddings are left out."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - sum(w.numel() for w in embedding_tables(model).values())
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq_len
