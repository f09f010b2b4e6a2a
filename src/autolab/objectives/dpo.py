"""The DPO family of preference losses, as pure functions of sequence log-probabilities.

Inputs are per-pair sums of response-token log-probs under the policy and the reference
(zeros for reference-free). With h = (pi_c - ref_c) - (pi_r - ref_r), the log-ratio margin:

- sigmoid (DPO, Rafailov et al. 2023, arXiv 2305.18290): -log s(beta h); with label_smoothing e > 0
  it is conservative DPO (cDPO, Mitchell 2023): -(1-e) log s(beta h) - e log s(-beta h)
- robust (Chowdhury et al. 2024, arXiv 2403.00409): (-(1-e) log s(beta h) + e log s(-beta h)) / (1 - 2e)
- hinge (SLiC, Zhao et al. 2023): max(0, 1 - beta h)
- ipo (Azar et al. 2023, arXiv 2310.12036): (h' - 1 / (2 beta))^2, where h' uses log-ratios averaged
  over each response's tokens (as TRL does, confirmed with the IPO authors)

Rewards are beta x log-ratios; names follow TRL (rewards/chosen, rewards/margins, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token | prefix) over response tokens; logits [N, T, V] for input_ids [N, T],
    response_mask [N, T] marks the tokens to score (prompt and padding are 0). Computed in fp32."""
    logits, targets, mask = logits[:, :-1].float(), input_ids[:, 1:], response_mask[:, 1:]
    token_logps = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (token_logps * mask).sum(dim=1)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards). IPO needs the response lengths."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    e = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - e) * F.logsigmoid(beta * h) + e * F.logsigmoid(-beta * h)) / (1 - 2 * e)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo averages log-ratios over response tokens: pass chosen/rejected_lengths")
        h = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown dpo.loss_type {loss_type!r}: use one of {LOSS_TYPES}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def preference_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, torch.Tensor]:
    """Batch means under TRL's names (tensors: read them back only when logging)."""
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }
