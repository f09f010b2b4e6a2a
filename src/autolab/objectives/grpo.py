"""GRPO (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath, arXiv 2402.03300) as pure
functions of per-token log-probabilities, as TRL's GRPOTrainer computes it (tests/test_trl_parity.py).

- Advantages: each completion's reward minus the mean reward of its group (the G completions of one
  prompt), divided by the group's std + 1e-4 (`scale="group"`), the whole batch's std (`"batch"`) or
  nothing (`"none"`: Dr. GRPO's advice, Liu et al. 2025, arXiv 2503.20783); TRL's `scale_rewards`.
- Per token, the PPO clipped objective (Schulman et al. 2017): with r = exp(logp - logp_old),
  -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) (eps_high > eps_low: DAPO's clip-higher, arXiv 2503.14476),
  plus beta x the k3 estimate of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1, by default
  times r (`use_bias_correction_kl`, TRL's default: the estimate is of the sampling policy's tokens).
- Aggregation (`loss_type`): `grpo` the mean over each sequence's tokens, then over sequences; `bnpo`
  the mean over every token of the batch; `dr_grpo` the sum over tokens / (sequences x max completion length).

Metric names are TRL's (kl, entropy, clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean).
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Advantages [N] of rewards [N] laid out as N / group_size groups of consecutive completions."""
    groups = rewards.view(-1, group_size)
    advantages = (groups - groups.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        std = groups.std(dim=1, keepdim=True).expand_as(groups).reshape(-1) if group_size > 1 else torch.zeros_like(rewards)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    elif scale == "none":
        return advantages
    else:
        raise ValueError(f"unknown grpo.scale_rewards {scale!r}: use one of {SCALES}")
    return advantages / (std + 1e-4)


def token_logps_and_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), entropy of the distribution) at each position, both [N, T], from logits [N, T, V]
    aligned with targets [N, T] (the logits that predict each target), at the sampling temperature. fp32."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logps = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logps, entropy


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of x over the tokens where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    use_bias_correction_kl: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, metrics under TRL's names) from per-token log-probs [N, T] of the completions under the
    policy, the policy that sampled them (None: this one, detached: one update per batch) and the
    reference (None with beta=0), advantages [N] and the completion mask [N, T]."""
    mask = mask.to(logps.dtype)
    old_logps = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    a = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * a, clipped * a)
    metrics = {}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("grpo_loss: beta != 0 needs the reference's log-probs")
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        if use_bias_correction_kl:
            kl = kl * ratio
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = masked_mean(per_token, mask)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo divides by the maximum completion length: pass max_completion_length")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    else:
        raise ValueError(f"unknown grpo.loss_type {loss_type!r}: use one of {LOSS_TYPES}")
    low = ((ratio < 1 - epsilon_low) & (a < 0)).detach().to(mask.dtype)
    high = ((ratio > 1 + epsilon_high) & (a > 0)).detach().to(mask.dtype)
    metrics.update({"clip_ratio/low_mean": masked_mean(low, mask), "clip_ratio/high_mean": masked_mean(high, mask),
                    "clip_ratio/region_mean": masked_mean(torch.maximum(low, high), mask)})
    return loss, metrics
