"""Next-token cross-entropy, the pretraining and continued-pretraining objective, and the soft cap
on the logits it is taken over (the model's, and the logit lens's readouts)."""

import torch
import torch.nn.functional as F

from autolab.models.gpt import soft_cap  # defined with the model: its file imports only torch and transformers

__all__ = ["IGNORE_INDEX", "soft_cap", "lm_loss", "packed_rows_loss"]

IGNORE_INDEX = -1


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats over targets != IGNORE_INDEX; logits [B, T, V], targets [B, T].

    The softmax runs in float32 whatever the logits' dtype (bf16 logits lose ~3 digits otherwise).
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def packed_rows_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of packed rows [B, T + 1] (uint16 or int64): each row's first T tokens
    in, its last T as targets."""
    tokens = tokens.long()
    return lm_loss(model(input_ids=tokens[:, :-1]).logits, tokens[:, 1:])
