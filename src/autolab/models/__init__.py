"""Models: our GPT, registered with transformers' Auto classes so any HF tool can load it."""

from transformers import AutoConfig, AutoModelForCausalLM

from autolab.models.gpt import GPT, GPTConfig

# Registration only fills transformers' name tables (no I/O, no device work).
AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
AutoModelForCausalLM.register(GPTConfig, GPT, exist_ok=True)

__all__ = ["GPT", "GPTConfig"]


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
        )
    )
