"""GRPO stage: online RL from rewards (Shao et al. 2024, arXiv 2402.03300), as TRL's GRPOTrainer does it.

Each step takes `grpo.batch_size` prompts (each process its slice), samples `grpo.num_generations`
completions of each with the policy (batched, KV cache, seeded by the run's seed, the step and the rank,
so a resumed run samples what the straight one did: autolab.generation.sample_ids), scores them with
every reward of `grpo.reward_funcs` (functions named as module.function, reward-model folders:
autolab.rewards), turns the weighted sum into group-relative advantages and takes `grpo.num_iterations`
optimiser steps on the clipped objective with a KL term to a frozen copy of the starting weights
(none when beta=0): autolab.objectives.grpo, equal to TRL 1.16 to 1e-5.

Logged under TRL's names: reward, reward_std, rewards/<name>/mean and /std, frac_reward_zero_std,
completions/mean_length (min, max, clipped_ratio: the share that hit max_completion_length), kl,
entropy, clip_ratio/low_mean (high_mean, region_mean). The policy's entropy falling below
`grpo.entropy_floor` is a warning line: entropy collapse is the method's known failure.
Measured before and after: `reward`, the mean weighted reward of one sampled completion of each
held-out prompt (the embedded task's held-out phrases by default), and val_bpb as every LM stage.
"""

from __future__ import annotations

import sys

import torch

import prepare
from autolab.errors import UserError
from autolab.objectives import group_advantages, grpo_loss, token_logps_and_entropy
from autolab.objectives.grpo import masked_mean
from autolab.stages.base import OptimisedStage
from autolab.stages.recipe import Context, Recipe, StageParts


class GRPOStage(OptimisedStage):
    progress_keys = ("train/reward", "train/entropy")  # on the progress line beside the loss (callbacks.Monitor)

    def __init__(self, *args, grpo, prompts: list[str], columns: list[dict], rewards: list, tokenizer,
                 reference: torch.nn.Module | None = None, seed: int = 0, rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.grpo, self.prompts, self.columns, self.rewards = grpo, prompts, columns, rewards
        self.tokenizer, self.reference, self.seed, self.rank = tokenizer, reference, seed, rank
        self.entropy_low = False  # below grpo.entropy_floor at the last logged step (warned once a crossing)
        self.entropy = None  # the last step's mean entropy (a tensor: read on logging steps and at the end)

    def rollout(self, index: list[int]) -> dict:
        """G sampled completions of each prompt, their rewards and advantages, as a right-padded batch."""
        from autolab.generation import Sampling, sample_ids

        g, G = self.grpo, self.grpo.num_generations
        prompts = [self.prompts[i] for i in index for _ in range(G)]
        sampling = Sampling(max_new_tokens=g.max_completion_length, temperature=g.temperature, top_k=g.top_k,
                            seed=self.seed * 1_000_003 + self.budget.steps * 1009 + self.rank, batch_size=len(prompts))
        prompt_ids, completion_ids = sample_ids(self.model, self.tokenizer, prompts, sampling, self.device)
        local = score_completions(self.rewards, self.tokenizer, prompts, completion_ids,
                                  [self.columns[i] for i in index for _ in range(G)])
        # the statistics and a batch-scaled advantage are the global batch's (every rank's completions), as TRL's:
        # each completion's rewards and its length, gathered in one collective
        lengths = torch.tensor([[len(c)] for c in completion_ids], dtype=local.dtype)
        everyone = self.gather(torch.cat([local, lengths], dim=1))
        rewards, lengths = everyone[:, :-1], everyone[:, -1]
        total = rewards @ torch.tensor([r.weight for r in self.rewards])
        mine = slice(self.rank * len(prompts), (self.rank + 1) * len(prompts))
        seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
        ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (s, p) in enumerate(zip(seqs, prompt_ids)):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, len(p) : len(s)] = 1
        groups = total.view(-1, G)
        metrics = {"reward": total.mean(), "reward_std": total.std() if len(total) > 1 else torch.tensor(0.0),
                   "frac_reward_zero_std": (groups.std(1) < 1e-6).float().mean() if G > 1 else torch.tensor(1.0),
                   "completions/mean_length": lengths.mean(), "completions/min_length": lengths.min(),
                   "completions/max_length": lengths.max(),
                   "completions/clipped_ratio": (lengths >= g.max_completion_length).float().mean()}
        for k, r in enumerate(self.rewards):
            metrics[f"rewards/{r.name}/mean"] = rewards[:, k].mean()
            metrics[f"rewards/{r.name}/std"] = rewards[:, k].std() if len(total) > 1 else torch.tensor(0.0)
        return {"input_ids": ids.to(self.device), "mask": mask.to(self.device),
                "advantages": group_advantages(total, G, g.scale_rewards)[mine].to(self.device), "metrics": metrics}

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's `rows` (equal counts), concatenated in rank order: this rank's own on one process."""
        if self.trainer.world_size == 1:
            return rows
        return self.all_gather(rows.to(self.device)).flatten(0, 1).cpu()

    def token_logps(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and entropies [N, T-1] of each sequence's next tokens (no attention mask: the
        padding is on the right, where causal attention keeps it from every real token)."""
        ids = batch["input_ids"]
        return token_logps_and_entropy(model(input_ids=ids).logits[:, :-1], ids[:, 1:], self.grpo.temperature)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        self.set_lr()
        g = self.grpo
        rollout = self.rollout(batch["index"].tolist())
        mask = rollout["mask"][:, 1:]
        old = ref = None
        with torch.no_grad():
            if g.num_iterations > 1:  # the sampling policy's log-probs, for the ratio of the later updates
                old = self.token_logps(self.model, rollout)[0]
            if g.beta != 0.0:
                ref = self.token_logps(self.reference, rollout)[0]
        for _ in range(g.num_iterations):
            logps, entropy = self.token_logps(self.model, rollout)
            loss, metrics = grpo_loss(logps, old, ref, rollout["advantages"], mask, beta=g.beta, epsilon_low=g.epsilon,
                                      epsilon_high=g.epsilon_high if g.epsilon_high is not None else g.epsilon,
                                      loss_type=g.loss_type, max_completion_length=g.max_completion_length,
                                      use_bias_correction_kl=g.use_bias_correction_kl)
            grad_norm = self.optimise(loss)
        self.entropy = masked_mean(entropy.detach(), mask)
        metrics = {**rollout["metrics"], **metrics, "entropy": self.entropy}
        return {"loss": loss.detach(), "grad_norm": grad_norm, "metrics": metrics}

    def extra_metrics(self, outputs: dict) -> dict:
        metrics = super().extra_metrics(outputs)
        entropy, floor = metrics["train/entropy"], self.grpo.entropy_floor
        if entropy < floor and not self.entropy_low and self.trainer.is_global_zero:
            print(f"warning: the policy's entropy {entropy:.4f} fell below grpo.entropy_floor={floor:g} at step "
                  f"{self.budget.steps}: entropy collapse; raise grpo.temperature or grpo.beta, or lower the learning rate",
                  file=sys.stderr, flush=True)
        self.entropy_low = entropy < floor
        return metrics


def score_completions(rewards: list, tokenizer, prompts: list[str], completion_ids: list[list[int]], columns: list[dict]
                      ) -> torch.Tensor:
    """Every reward [N, F] of each completion (its text, the stop token left out) of its prompt."""
    from autolab import rewards as reward_fns
    from autolab.generation import decode_completion

    return reward_fns.score(rewards, prompts, [decode_completion(tokenizer, c) for c in completion_ids], columns)


def prompt_rows(rows: list[dict], g, tokenizer) -> tuple[list[str], list[dict], int]:
    """(prompts as the model reads them, every other column of each row, rows dropped): a row whose prompt is
    missing, empty or not text is dropped and counted."""
    from autolab.data.preference import usable_prompt
    from autolab.generation import chat_prompt

    key = dict(g.columns or {}).get("prompt", "prompt")
    prompts, columns = [], []
    for row in rows:
        prompt = row.get(key)
        if not usable_prompt(prompt):
            continue
        prompts.append(chat_prompt(tokenizer, prompt, g.chat))
        columns.append({k: v for k, v in row.items() if k != key})
    return prompts, columns, len(rows) - len(prompts)


def build(ctx: Context) -> StageParts:
    """Prompts (and the columns the rewards read) from grpo.dataset, the rewards, the frozen reference
    when beta != 0, and the held-out reward before and after."""
    from autolab import rewards as reward_fns
    from autolab.data.packed import IndexBatches
    from autolab.data.preference import load_rows
    from autolab.distributed import rank_slice
    from autolab.generation import Sampling, sample_ids

    cfg, model, device, g = ctx.cfg, ctx.model, ctx.device, ctx.cfg.grpo
    train, columns, dropped = prompt_rows(load_rows(g, "train", "grpo", prepare.load_tasks), g, ctx.tokenizer)
    held, held_columns, held_dropped = prompt_rows(load_rows(g, "eval", "grpo", prepare.load_tasks), g, ctx.tokenizer)
    if len(train) < g.batch_size or not held:
        raise UserError(f"grpo.dataset={g.dataset} has {len(train)} usable training prompts and {len(held)} held-out "
                        f"ones (dropped {dropped + held_dropped}): give rows with a text `prompt`, at least grpo.batch_size")
    if dropped + held_dropped:
        print(f"dropped {dropped + held_dropped} prompts: missing, empty or not text", flush=True)
    held, held_columns = held[: g.eval_prompts], held_columns[: g.eval_prompts]
    rewards = reward_fns.load(list(g.reward_funcs), list(g.reward_weights) if g.reward_weights else None, device)
    reference = None
    if g.beta != 0.0:  # the starting weights, loaded again (a resumed run's model holds its snapshot's), frozen
        reference = ctx.initial_model().to(device).eval().requires_grad_(False)
        if device.type == "cuda":
            reference.to(torch.bfloat16)  # it only runs forward, under autocast: half the memory
    module = GRPOStage(model, grpo=g, prompts=train, columns=columns, rewards=rewards, tokenizer=ctx.tokenizer,
                       reference=reference, seed=cfg.seed, rank=ctx.world.rank, **ctx.common)
    data = IndexBatches(len(train), g.batch_size, lambda index: {"index": torch.tensor(index)}, cfg.seed,
                        rank_slice(g.batch_size, ctx.world, "grpo.batch_size"))
    weights = torch.tensor([r.weight for r in rewards])

    def held_out_reward(m) -> float:  # one sampled completion of each held-out prompt, the same seed before and after
        sampling = Sampling(max_new_tokens=g.max_completion_length, temperature=g.temperature, top_k=g.top_k,
                            seed=cfg.seed, batch_size=g.eval_batch_size)
        _, completion_ids = sample_ids(m, ctx.tokenizer, held, sampling, device)
        return (score_completions(rewards, ctx.tokenizer, held, completion_ids, held_columns) @ weights).mean().item()

    def finals() -> dict:
        return {"prompts": len(train), "dropped_prompts": dropped + held_dropped,
                "entropy": module.entropy.item() if module.entropy is not None else None}

    return StageParts(data, module, "prompts", g.batch_size, None, source=f"{g.dataset}, {len(train)} prompts",
                      measures={"reward": held_out_reward}, finals=finals, loss_has_scale=False)


RECIPE = Recipe(build)
