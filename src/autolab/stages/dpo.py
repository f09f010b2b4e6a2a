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

from pathlib import Path

import torch

from autolab.errors import UserError
from autolab.objectives import dpo_loss, preference_metrics, sequence_logps
from autolab.stages.base import PairStage, pair_batches
from autolab.stages.recipe import Context, Recipe, StageParts

class DPOStage(PairStage):
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


# ---------------------------------------------------------------------------------------------
# Building the stage, and what it measures before and after training.


def build(ctx: Context) -> StageParts:
    """Pairs from dpo.dataset (dropped rows counted), the reference dpo.reference asks for, the
    behaviour measures where the set has known markers, and the held-out rewards and win rate."""
    from autolab.data.preference import PreferenceBatches, behaviour_markers, load_rows, tokenize_pairs
    from autolab.distributed import rank_slice

    cfg, model, device = ctx.cfg, ctx.model, ctx.device
    d = cfg.dpo
    if d.max_length > ctx.max_len:
        raise UserError(f"dpo.max_length={d.max_length} is longer than the model's {ctx.max_len} positions: lower it")
    train_rows, eval_rows = load_rows(d, "train"), load_rows(d, "eval")
    train, held_out = tokenize_pairs(train_rows, ctx.tokenizer, d), tokenize_pairs(eval_rows, ctx.tokenizer, d)
    for why, n in sorted((train.dropped + held_out.dropped).items()):
        print(f"dropped {n} pairs: {why}", flush=True)
    reference = None
    if d.reference == "frozen" and d.lora.r <= 0:  # the starting weights, loaded again: a resumed run's model
        reference = ctx.initial_model().to(device).eval().requires_grad_(False)  # holds its snapshot instead
        if device.type == "cuda":
            reference.to(torch.bfloat16)  # it only runs forward, under autocast: half the memory
    module = DPOStage(model, dpo=d, reference=reference, compile=ctx.compiled, **ctx.common)
    ref_train = ref_held_out = None
    if d.reference == "precomputed":
        key = f"{cfg.init_from}|{_weights_identity(ctx.init_path)}|{device.type}|{d.max_length}"
        ref_train = cached_reference(module, train, d.eval_batch_size, device, key + "|train")
        ref_held_out = cached_reference(module, held_out, d.eval_batch_size, device, key + "|held_out")
    data = PreferenceBatches(train, d.batch_size, cfg.seed, ref_train, rank_slice(d.batch_size, ctx.world, "dpo.batch_size"))
    prompts = [row.get(d.columns.get("prompt", "prompt") if d.get("columns") else "prompt") for row in eval_rows]
    prompts = [p for p in prompts if isinstance(p, str)][: d.behaviour_prompts]
    markers = behaviour_markers(str(d.dataset))
    measures = {}
    if prompts and markers:
        tok = ctx.tokenizer
        measures["preamble_share"] = lambda m: preamble_share(m, tok, prompts, markers, d.behaviour_tokens, cfg.seed, device)
        measures["preamble_prob"] = lambda m: preamble_probability(m, tok, prompts, markers, device, d.eval_batch_size)

    def finals() -> dict:
        rewards = held_out_rewards(module, held_out, ref_held_out, d.eval_batch_size, device)
        return {**rewards, **win_rate(), "pairs": len(train), "held_out_pairs": len(held_out),
                "dropped_pairs": sum((train.dropped + held_out.dropped).values())}

    def win_rate() -> dict:  # against the starting (SFT) weights, judged by the markers' rule; out/win_rate.png
        if not (prompts and markers):
            return {}
        from autolab import judge
        from autolab.generation import Sampling

        start = ctx.initial_model().to(device)
        sampling = Sampling(max_new_tokens=d.behaviour_tokens, seed=cfg.seed, batch_size=d.eval_batch_size)
        return judge.win_rate(module.model, start, ctx.tokenizer, prompts, markers, sampling, device,
                              ctx.out / "win_rate.png")

    return StageParts(data, module, "pairs", d.batch_size, None, source=f"{d.dataset}, {len(train)} pairs",
                      measures=measures, finals=finals)


def with_lora(cfg, model):
    """Wrap the model with a LoRA adapter (peft) when dpo.lora.r > 0; the reference is then the base
    with the adapter switched off."""
    if cfg.dpo.lora.r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora = cfg.dpo.lora
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules))


RECIPE = Recipe(build, wrap=with_lora)


def _weights_identity(path: str | None) -> str:
    """Size and mtime of the starting weights: part of the precomputed-reference cache key."""
    folder = Path(path) if path else None
    if folder is None or not folder.exists():
        return str(path)
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(folder.glob("*.safetensors")))


def reference_logps_for(stage: DPOStage, pairs, batch_size: int, device) -> dict:
    """Reference log-probs of every pair under the stage's current (starting) policy."""
    chosen, rejected = [], []
    for n, b in pair_batches(stage.model, pairs, batch_size, device):
        logps = stage._logps(stage.model, b["input_ids"], b["response_mask"]).float().cpu()
        chosen.append(logps[:n])
        rejected.append(logps[n:])
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
    from filelock import FileLock

    path = prepare.cache_dir() / "ref_logps" / f"{digest.hexdigest()[:16]}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # the ranks of a run, the jobs of a sweep: one computes, the others read
        if path.exists():
            ref = load_file(str(path))
            if len(ref["chosen"]) == len(pairs):
                print(f"reference log-probs: cached, {path}", flush=True)
                return ref
        print(f"reference log-probs: computing {len(pairs)} pairs once -> {path}", flush=True)
        ref = reference_logps_for(stage, pairs, batch_size, device)
        tmp = path.with_suffix(".tmp")
        save_file(ref, str(tmp))
        tmp.replace(path)
    return ref


def held_out_rewards(stage: DPOStage, pairs, ref: dict | None, batch_size: int, device) -> dict:
    """reward_accuracy and reward_margin over every held-out pair."""
    chosen, rejected = [], []
    for _, batch in pair_batches(stage.model, pairs, batch_size, device, ref):
        _, _, (c, r) = stage.pair_loss(batch)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    c, r = torch.cat(chosen), torch.cat(rejected)
    return {"reward_accuracy": (c > r).float().mean().item(), "reward_margin": (c - r).mean().item()}


def preamble_share(model, tokenizer, prompts: list[str], markers: tuple[str, ...], new_tokens: int, seed: int, device) -> float:
    """Share of sampled completions (temperature 1) that open with one of `markers` (the preference
    set's rejected-style preambles), one prompt at a time, with a fixed seed."""
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
            hits += text.startswith(markers)
    model.train(was_training)
    torch.set_rng_state(rng)
    return hits / max(len(prompts), 1)


def preamble_probability(model, tokenizer, prompts: list[str], markers: tuple[str, ...], device, batch_size: int = 64) -> float:
    """The expected share of sampled completions (temperature 1) that open with a rejected-style
    preamble: the mean over prompts of sum_k P(preamble_k | prompt). Exact where `preamble_share`
    samples, so a rare behaviour (a few percent) is measured without sampling noise."""
    from autolab.data.preference import _encoder

    encode, _, bos = _encoder(tokenizer)
    seqs = []
    for prompt in prompts:
        p = [bos] + encode(prompt)
        seqs += [(p + encode(pre), len(p)) for pre in markers]
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
