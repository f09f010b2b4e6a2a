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
