"""Reward-model stage: a causal LM's backbone with a scalar head, trained on (prompt, chosen, rejected)
pairs with the Bradley-Terry loss (autolab.objectives.reward), as TRL's RewardTrainer trains one.

The starting LM becomes a sequence classifier with one output (`autolab.models.reward_model`: our GPT's
`GPTForSequenceClassification`, or the Auto class's for any HF causal LM), whose score is read at each
sequence's last token that is not padding (`config.pad_token_id`: the tokenizer's pad, else its EOS, as
TRL picks it; our tokenizer's BOS). Chosen and rejected go through one concatenated forward pass; the
pairs are the DPO stage's (the same formats, `columns` and truncation, autolab.data.preference), with an
optional per-pair `margin` column. The checkpoint is a Hugging Face sequence-classification folder:
`AutoModelForSequenceClassification.from_pretrained(folder)` loads it.

Measured before and after on the held-out pairs: `reward_accuracy` (the share where chosen scores
above rejected) and `reward_margin` (the mean of r_chosen - r_rejected). The model has no LM head, so
no val_bpb.
"""

from __future__ import annotations

import torch

from autolab.errors import UserError
from autolab.objectives import reward_loss, reward_metrics
from autolab.stages.base import PairStage, pair_batches
from autolab.stages.recipe import Context, Recipe, StageParts


class RewardStage(PairStage):
    def __init__(self, *args, center_rewards_coefficient: float | None = None, compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.center = center_rewards_coefficient
        # dynamic: pair batches are padded to multiples of 16, so shapes vary from step to step
        self.rewards = torch.compile(self._rewards, dynamic=True) if compile else self._rewards

    def _rewards(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """One scalar a sequence [2B], in fp32. No attention mask: padding is on the right, where causal
        attention keeps it from every real token, and the head reads the last real one."""
        return model(input_ids=input_ids).logits.squeeze(-1).float()

    def pair_loss(self, batch: dict) -> tuple[torch.Tensor, dict, tuple]:
        """(mean loss, TRL-named metrics, (chosen rewards, rejected rewards)) of one batch of pairs."""
        rewards = self.rewards(self.model, batch["input_ids"])
        chosen, rejected = rewards.chunk(2)
        losses = reward_loss(chosen, rejected, batch.get("margin"), self.center)
        return losses.mean(), reward_metrics(chosen, rejected), (chosen.detach(), rejected.detach())


def pad_id(tokenizer) -> int:
    """The token that pads pair batches and ends each sequence for the head: the tokenizer's pad, else its
    EOS (TRL's choice), else its BOS (ours: every sequence starts with it, so it never ends one)."""
    from autolab.data.preference import _encoder

    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            return getattr(tokenizer, name)
    return _encoder(tokenizer)[2]


def held_out_rewards(model: torch.nn.Module, pairs, batch_size: int, device, pad: int) -> dict:
    """reward_accuracy and reward_margin over every held-out pair (eval mode, no gradients, bf16 on a GPU)."""
    chosen, rejected = [], []
    for _, batch in pair_batches(model, pairs, batch_size, device, pad_id=pad):
        c, r = model(input_ids=batch["input_ids"]).logits.squeeze(-1).float().cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"reward_accuracy": (c > r).float().mean().item(), "reward_margin": (c - r).mean().item()}


def build(ctx: Context) -> StageParts:
    """Pairs from reward.dataset (dropped rows counted, margins read), the pad that ends each sequence,
    and the held-out accuracy and margin, before and after."""
    from autolab.data.preference import PreferenceBatches, load_rows, tokenize_pairs
    from autolab.distributed import rank_slice

    cfg, model, device = ctx.cfg, ctx.model, ctx.device
    r = cfg.reward
    if r.max_length > ctx.max_len:
        raise UserError(f"reward.max_length={r.max_length} is longer than the model's {ctx.max_len} positions: lower it")
    train = tokenize_pairs(load_rows(r, "train", "reward"), ctx.tokenizer, r, "reward", margins=True)
    held_out = tokenize_pairs(load_rows(r, "eval", "reward"), ctx.tokenizer, r, "reward", margins=True)
    for why, n in sorted((train.dropped + held_out.dropped).items()):
        print(f"dropped {n} pairs: {why}", flush=True)
    pad = pad_id(ctx.tokenizer)
    model.config.pad_token_id = pad  # where the head reads each sequence; saved in the checkpoint's config.json
    module = RewardStage(model, center_rewards_coefficient=r.center_rewards_coefficient, compile=ctx.compiled,
                         **ctx.common)
    data = PreferenceBatches(train, r.batch_size, cfg.seed, part=rank_slice(r.batch_size, ctx.world, "reward.batch_size"),
                             pad_id=pad, group="reward")
    measured: dict = {}  # both numbers come from one pass over the held-out pairs; keyed by the step measured at

    def measure(name: str):
        def fn(m) -> float:
            key = (id(m), ctx.common["budget"].steps)
            if measured.get("key") != key:
                measured.update(key=key, **held_out_rewards(m, held_out, r.eval_batch_size, device, pad))
            return measured[name]
        return fn

    def finals() -> dict:
        return {"pairs": len(train), "held_out_pairs": len(held_out),
                "dropped_pairs": sum((train.dropped + held_out.dropped).values())}

    return StageParts(data, module, "pairs", r.batch_size, None, source=f"{r.dataset}, {len(train)} pairs",
                      measures={"reward_accuracy": measure("reward_accuracy"), "reward_margin": measure("reward_margin")},
                      finals=finals, lm_measures=False)


def as_reward_model(cfg, model):
    """The starting causal LM as a one-output sequence classifier (its backbone's weights, a fresh head).
    The head's start depends on the seed alone, not on what this process drew before (a base experiment
    trained first draws from the same generator)."""
    from autolab.models import reward_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return reward_model(model)


RECIPE = Recipe(build, wrap=as_reward_model)
