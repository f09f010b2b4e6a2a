"""DPO stage: preference optimisation on (prompt, chosen, rejected) pairs.

Chosen and rejected go through one concatenated forward pass; only response tokens are scored.
The reference is one of (`dpo.reference`):
- frozen: a frozen copy of the starting weights (costs one more model in memory),
- precomputed: reference log-probs computed once before training and cached beside the data, so a
  sweep over beta does not recompute them; a batch without them is an error, never the policy,
- none: reference-free (log-probs of zero),
and with LoRA (`dpo.lora.r > 0`) the reference is the base with the adapter disabled.
"""

from __future__ import annotations

import torch

from autolab.objectives import dpo_loss, preference_metrics, sequence_logps
from autolab.stages.base import OptimisedStage

class DPOStage(OptimisedStage):
    def __init__(self, *args, dpo, reference: torch.nn.Module | None = None, compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        self.reference = reference  # kept out of the optimiser: it has no trainable parameters
        # dynamic: pair batches are padded to multiples of 16, so shapes vary from step to step
        self.logps = torch.compile(self._logps, dynamic=True) if compile else self._logps

    def _logps(self, model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return sequence_logps(model(input_ids=input_ids).logits, input_ids, mask)

    def reference_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        mode = self.dpo.reference
        if mode == "precomputed":
            raise RuntimeError("precomputed reference log-probs are missing from the batch; refusing to use the policy")
        B = batch["input_ids"].size(0) // 2
        if mode == "none":
            zeros = torch.zeros(B, device=batch["input_ids"].device)
            return zeros, zeros
        with torch.no_grad():
            if self.reference is None:  # LoRA: the base model is the adapter switched off
                with self.model.disable_adapter():
                    logps = self.logps(self.model, batch["input_ids"], batch["response_mask"])
            else:
                logps = self.logps(self.reference, batch["input_ids"], batch["response_mask"])
        return logps[:B], logps[B:]

    def pair_loss(self, batch: dict) -> tuple[torch.Tensor, dict, tuple]:
        """(mean loss, TRL-named metrics, (chosen rewards, rejected rewards)) of one batch of pairs."""
        logps = self.logps(self.model, batch["input_ids"], batch["response_mask"])
        B = logps.size(0) // 2
        ref_chosen, ref_rejected = self.reference_logps(batch)
        lengths = batch["response_lengths"]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            logps[:B], logps[B:], ref_chosen, ref_rejected, beta=self.dpo.beta, loss_type=self.dpo.loss_type,
            label_smoothing=self.dpo.label_smoothing, chosen_lengths=lengths[:B], rejected_lengths=lengths[B:],
        )
        metrics = preference_metrics(chosen_rewards, rejected_rewards, logps[:B], logps[B:])
        return losses.mean(), metrics, (chosen_rewards, rejected_rewards)

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        self.set_lr()
        loss, metrics, _ = self.pair_loss(batch)
        grad_norm = self.optimise(loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm, "metrics": metrics}

    def extra_metrics(self, outputs: dict) -> dict:
        return {**super().extra_metrics(outputs), **{f"train/{k}": v.item() for k, v in outputs["metrics"].items()}}


# ---------------------------------------------------------------------------------------------
# Building the stage, and what it measures before and after training.


def reference_logps_for(stage: DPOStage, pairs, batch_size: int, device) -> dict:
    """Reference log-probs of every pair under the stage's current (starting) policy."""
    from autolab.data.preference import collate

    chosen, rejected = [], []
    stage.model.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(pairs), batch_size):
            index = list(range(start, min(start + batch_size, len(pairs))))
            b = collate(pairs, index)
            logps = stage._logps(stage.model, b["input_ids"].to(device), b["response_mask"].to(device)).float().cpu()
            chosen.append(logps[: len(index)])
            rejected.append(logps[len(index) :])
    stage.model.train()
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}


def cached_reference(stage: DPOStage, pairs, batch_size: int, device, key: str) -> dict:
    """Precomputed reference log-probs, cached under $AUTOLAB_CACHE/ref_logps/<key>.safetensors
    (the key covers the starting weights, the tokenized pairs and the device type)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    import prepare

    digest = hashlib.sha256(key.encode())
    for seqs in (pairs.prompt, pairs.chosen, pairs.rejected):
        digest.update(repr(seqs).encode())
    path = prepare.cache_dir() / "ref_logps" / f"{digest.hexdigest()[:16]}.safetensors"
    if path.exists():
        ref = load_file(str(path))
        if len(ref["chosen"]) == len(pairs):
            print(f"reference log-probs: cached, {path}", flush=True)
            return ref
    print(f"reference log-probs: computing {len(pairs)} pairs once -> {path}", flush=True)
    ref = reference_logps_for(stage, pairs, batch_size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(ref, str(tmp))
    tmp.replace(path)
    return ref


def held_out_rewards(stage: DPOStage, pairs, ref: dict | None, batch_size: int, device) -> dict:
    """reward_accuracy and reward_margin over every held-out pair."""
    from autolab.data.preference import collate

    chosen, rejected = [], []
    stage.model.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(pairs), batch_size):
            index = list(range(start, min(start + batch_size, len(pairs))))
            batch = {k: v.to(device) for k, v in collate(pairs, index, ref).items()}
            _, _, (c, r) = stage.pair_loss(batch)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    stage.model.train()
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"reward_accuracy": (c > r).float().mean().item(), "reward_margin": (c - r).mean().item()}


def preamble_share(model, tokenizer, prompts: list[str], new_tokens: int, seed: int, device) -> float:
    """Share of sampled completions (temperature 1) that open with a rejected-style preamble
    (prepare.REJECTED_PREAMBLES), one prompt at a time, with a fixed seed."""
    import prepare
    from autolab.data.preference import _encoder

    encode, _, bos = _encoder(tokenizer)
    decode = tokenizer.decode
    rng = torch.get_rng_state()
    torch.manual_seed(seed)
    hits = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([[bos] + encode(prompt)], device=device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=True, top_k=0, temperature=1.0, pad_token_id=bos)
            text = decode(out[0, ids.size(1) :].tolist()).lstrip()
            hits += text.startswith(prepare.REJECTED_PREAMBLES)
    model.train(was_training)
    torch.set_rng_state(rng)
    return hits / max(len(prompts), 1)


def preamble_probability(model, tokenizer, prompts: list[str], device, batch_size: int = 64) -> float:
    """The expected share of sampled completions (temperature 1) that open with a rejected-style
    preamble: the mean over prompts of sum_k P(preamble_k | prompt). Exact where `preamble_share`
    samples, so a rare behaviour (a few percent) is measured without sampling noise."""
    import prepare
    from autolab.data.preference import _encoder

    encode, _, bos = _encoder(tokenizer)
    seqs = []
    for prompt in prompts:
        p = [bos] + encode(prompt)
        seqs += [(p + encode(pre), len(p)) for pre in prepare.REJECTED_PREAMBLES]
    total = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            ids = torch.zeros(len(chunk), max(len(s) for s, _ in chunk), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, (s, n_prompt) in enumerate(chunk):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, n_prompt : len(s)] = 1
            ids, mask = ids.to(device), mask.to(device)
            total += sequence_logps(model(input_ids=ids).logits, ids, mask).exp().sum().item()
    model.train(was_training)
    return total / max(len(prompts), 1)
