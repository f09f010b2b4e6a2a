"""Forward hooks: record what named modules output, and find a decoder's layers, final norm and
unembedding in any Hugging Face causal LM (ours included).

    with record(model, ["blocks.3", "norm"]) as out:
        model(input_ids=ids)
    out["blocks.3"]  # [B, T, C], detached

The hooks are removed when the block exits, also when it exits through an exception.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from autolab.errors import UserError
from autolab.objectives.lm import soft_cap

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "norm_f", "final_norm")  # Llama/Mistral/Qwen, GPT-2, OPT/Phi, ...


def _first_tensor(output):
    """A decoder layer returns a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def record(model: nn.Module, names: list[str], detach: bool = True):
    """A dict filled, on each forward pass, with the output of every named module (the last call's)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        sample = ", ".join(n for n in list(modules)[1:6])
        raise UserError(f"the model has no module named {missing[0]!r} (its modules are named like: {sample}, ...)")
    out: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name):
        def hook(module, args, output):
            t = _first_tensor(output)
            out[name] = t.detach() if detach else t

        return hook

    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(keep(n)))
        yield out
    finally:
        for h in handles:
            h.remove()


@dataclass
class Decoder:
    """Where a decoder-only LM keeps what the logit lens needs, by module name."""

    embed: str  # the input embedding: the residual stream before the first layer
    layers: list[str]  # each decoder layer, in order
    norm: nn.Module  # the final norm, applied before the unembedding
    unembed: nn.Module  # the output projection to the vocabulary
    softcap: float = 0.0  # the model's tanh cap on its logits (ours, Gemma 2's); 0: none

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """A residual stream read out as the last layer's is: final norm, unembedding, soft cap."""
        return soft_cap(self.unembed(self.norm(hidden)), self.softcap)


def decoder(model: nn.Module) -> Decoder:
    """The layers are the longest ModuleList of the model's layer class (`_no_split_modules`), the final
    norm the base model's `norm`/`ln_f`/... attribute, the unembedding `get_output_embeddings()`."""
    names = {m: n for n, m in model.named_modules()}
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
             and type(m[0]).__name__ in layer_classes]
    base = getattr(model, "base_model", model)
    norm = next((getattr(base, a) for a in FINAL_NORMS if isinstance(getattr(base, a, None), nn.Module)), None)
    if norm is None:
        norm = next((getattr(model, a) for a in FINAL_NORMS if isinstance(getattr(model, a, None), nn.Module)), None)
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not lists or norm is None or unembed is None:
        raise UserError(f"{type(model).__name__}: cannot find its decoder layers, final norm and unembedding "
                        "(the logit lens needs a decoder-only causal LM with `_no_split_modules` and a final norm)")
    layers = max(lists, key=len)
    config = getattr(model, "config", None)
    softcap = getattr(config, "logit_softcap", None) or getattr(config, "final_logit_softcapping", None) or 0.0
    return Decoder(names[model.get_input_embeddings()], [names[m] for m in layers], norm, unembed, softcap)
