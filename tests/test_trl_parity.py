"""Parity with TRL: the same tiny model and batch through TRL's DPOTrainer and through our
objectives give the same loss and metrics (CPU, fp32), for every loss type we share."""

import pytest
import torch

from autolab.objectives import dpo_loss, preference_metrics, sequence_logps

ROWS = [
    {"prompt": "The sky is", "chosen": " blue today.", "rejected": " Sure! Here's what you asked: the sky is green."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " obviously the stupid number four, every single time."},
    {"prompt": "Water boils at", "chosen": " one hundred degrees.", "rejected": " one hundred degrees. Basically, this is really very important."},
    {"prompt": "Python lists are", "chosen": " mutable sequences.", "rejected": " Great question! mutable sequences."},
]


@pytest.fixture(scope="module")
def models(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():  # make policy and reference differ, so the log-ratios are not all zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference, AutoTokenizer.from_pretrained(tiny_llama)


@pytest.mark.parametrize("loss_type, smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)])
def test_loss_and_metrics_match_trl(loss_type, smoothing, models, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, reference, tokenizer = models
    beta = 0.3
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, beta=beta, loss_type=[loss_type],
                     label_smoothing=smoothing, max_length=64, report_to="none", use_cpu=True, bf16=False,
                     disable_dropout=True, logging_steps=1)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(ROWS),
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v.to("cpu") if torch.is_tensor(v) else v for k, v in batch.items()}
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, batch).item()
    trl = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # eval mode: no dropout, same numbers

    with torch.no_grad():  # ours, on TRL's own batch: the same tokens, masks and padding
        ids, mask = batch["input_ids"], batch["completion_mask"]
        logps = sequence_logps(policy(input_ids=ids, attention_mask=batch["attention_mask"]).logits, ids, mask)
        ref = sequence_logps(reference(input_ids=ids, attention_mask=batch["attention_mask"]).logits, ids, mask)
    B = ids.size(0) // 2
    lengths = mask.sum(1).float()
    losses, rc, rr = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta=beta, loss_type=loss_type,
                              label_smoothing=smoothing, chosen_lengths=lengths[:B], rejected_lengths=lengths[B:])
    ours = {k: v.item() for k, v in preference_metrics(rc, rr, logps[:B], logps[B:]).items()}

    assert losses.mean().item() == pytest.approx(trl_loss, abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        # log-probs of ~200 nats sit at float32's resolution (1.5e-5 there): compare to 1e-6 relative
        assert ours[name] == pytest.approx(trl[name], rel=1e-6, abs=1e-5), name
    assert trl["rewards/margins"] != 0.0  # the comparison is not of zeros


# GRPO: TRL's GRPOTrainer scores a fixed batch of completions (handed over through its own `rollout_func`
# hook, in place of its sampler) and computes its loss; ours takes the same completions and rewards.
GRPO_PROMPTS = ["The sky is", "Two plus two is"]
GRPO_COMPLETIONS = [" blue.", " blue today, and green", " green", " very blue indeed, yes",  # G = 4 a prompt
                    " four", " five, or so", " four.", " four, as always, four"]


def grpo_reward(prompts, completions, **kwargs):
    """A verifiable reward: 1 for the right word, minus a length penalty (rewards of several values a group)."""
    right = {"The sky is": "blue", "Two plus two is": "four"}
    return [float(right[p] in c) - 0.02 * len(c) for p, c in zip(prompts, completions)]


@pytest.mark.parametrize("loss_type, scale, corrected", [("grpo", "group", True), ("bnpo", "batch", False),
                                                         ("dr_grpo", "none", True)])
def test_grpo_loss_and_metrics_match_trl(loss_type, scale, corrected, tiny_llama, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from autolab.objectives import group_advantages, grpo_loss, token_logps_and_entropy
    from autolab.objectives.grpo import masked_mean

    G, temperature, beta = 4, 0.7, 0.1
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()  # TRL loads its own
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # the policy that samples differs from the reference: KL is not zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def rollout(prompts, trainer):  # the fixed completions, in the order of the G copies of each prompt
        assert prompts == [p for p in GRPO_PROMPTS for _ in range(G)]
        ids = [encode(c) + ([tokenizer.eos_token_id] if i % 2 else []) for i, c in enumerate(GRPO_COMPLETIONS)]
        return {"prompt_ids": [encode(p) for p in prompts], "completion_ids": ids,
                "logprobs": [[0.0] * len(c) for c in ids]}

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2 * G, per_device_eval_batch_size=2 * G,
                      num_generations=G, num_generations_eval=G, num_iterations=2, beta=beta, epsilon=0.2,
                      epsilon_high=0.28, loss_type=loss_type, scale_rewards=scale, temperature=temperature,
                      max_completion_length=8, use_bias_correction_kl=corrected, report_to="none", use_cpu=True, bf16=False, disable_dropout=True)
    trainer = GRPOTrainer(model=policy, reward_funcs=grpo_reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in GRPO_PROMPTS]), rollout_func=rollout)
    inputs = trainer._generate_and_score_completions([{"prompt": p} for p in GRPO_PROMPTS for _ in range(G)])
    with torch.no_grad():  # an update since sampling: ratios away from 1, so clipping is in play
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
        trl_loss = trainer.compute_loss(policy, inputs).item()
    trl = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # eval mode: no dropout, same numbers

    # ours: the same tokens and rewards through our functions
    prompts = [p for p in GRPO_PROMPTS for _ in range(G)]
    rewards = torch.tensor(grpo_reward(prompts, tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)))
    advantages = group_advantages(rewards, G, scale)
    assert torch.allclose(advantages, inputs["advantages"], atol=1e-5)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    C, mask = inputs["completion_ids"].size(1), inputs["completion_mask"]

    def per_token(model):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits[:, -C - 1 : -1]
        return token_logps_and_entropy(logits, inputs["completion_ids"], temperature)

    logps, entropy = per_token(policy)
    ref_logps, _ = per_token(reference)
    assert torch.allclose(ref_logps * mask, inputs["ref_per_token_logps"] * mask, atol=1e-5)
    loss, metrics = grpo_loss(logps, inputs["old_per_token_logps"], ref_logps, advantages, mask, beta=beta,
                              epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type, max_completion_length=8,
                              use_bias_correction_kl=corrected)
    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)
    for name in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert metrics[name].item() == pytest.approx(trl[name], abs=1e-5), name
    assert masked_mean(entropy, mask).item() == pytest.approx(trl["entropy"], abs=1e-5)
    assert rewards.mean().item() == pytest.approx(trl["reward"], abs=1e-5)
    assert rewards.std().item() == pytest.approx(trl["reward_std"], abs=1e-5)
    assert trl["kl"] > 1e-4 and trl["clip_ratio/region_mean"] > 0  # the comparison is not of zeros
