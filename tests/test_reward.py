"""The reward-model stage: TRL parity of loss and metrics, a run end to end (summary, ledger, a
sequence-classification checkpoint, its snapshot), and bad settings refused in one line."""

from pathlib import Path

import pytest
import torch
from conftest import QUICK_DOMAIN, TINY, base_overrides, run_train

import autolab.models  # noqa: F401  registers autolab_gpt with the Auto classes
from autolab import report

ROWS = [  # margins of several signs and sizes; texts of different lengths (padding matters) and last words
    {"prompt": "The sky is", "chosen": " blue today.", "rejected": " Sure! Here's what you asked: the sky is green", "margin": 0.5},
    {"prompt": "Two plus two is", "chosen": " four", "rejected": " obviously the stupid number four, every single time!", "margin": 0.0},
    {"prompt": "Water boils at", "chosen": " one hundred degrees", "rejected": " one hundred degrees. Basically, this is really very important?", "margin": 2.0},
    {"prompt": "Python lists are", "chosen": " mutable sequences.", "rejected": " Great question! mutable sequences, really", "margin": -1.0},
]


def _reward_model(kind: str, tiny_llama: Path):
    """A reward model as the stage makes one (autolab.models.reward_model) from a tiny Llama or our GPT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autolab.models import GPT, GPTConfig, reward_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    if kind == "llama":
        lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    else:
        lm = GPT(GPTConfig(vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=32, max_position_embeddings=128,
                           value_embeddings=True, x0_skip=True))
    model = reward_model(lm)
    with torch.no_grad():
        model.score.weight.mul_(50)  # rewards of order 1, not 0.02: the comparison is not of near-zeros
    return model, tokenizer


@pytest.mark.parametrize("kind", ["llama", "gpt"])
def test_loss_and_metrics_match_trl_reward_trainer(kind, tiny_llama, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from autolab.stages.reward import RewardStage

    model, tokenizer = _reward_model(kind, tiny_llama)
    args = RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=64, report_to="none",
                        use_cpu=True, bf16=False, disable_dropout=True, logging_steps=1, gradient_checkpointing=False,
                        center_rewards_coefficient=0.01)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v.to("cpu") if torch.is_tensor(v) else v for k, v in batch.items()}
    assert "margin" in batch and (batch["attention_mask"] == 0).any()  # margins and padding both in play
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()
    trl = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # eval mode: no dropout, same numbers

    # ours: the stage's own forward (no attention mask: the right padding is found by pad_token_id) on TRL's batch
    stage = RewardStage(model, optim=None, schedule={}, budget=None, grad_clip=0.0, center_rewards_coefficient=0.01)
    with torch.no_grad():
        loss, metrics, _ = stage.pair_loss({"input_ids": batch["input_ids"], "margin": batch["margin"]})
    assert loss.item() == pytest.approx(trl_loss, abs=1e-5)
    for name in ("accuracy", "margin", "min_reward", "mean_reward", "max_reward"):
        assert metrics[name].item() == pytest.approx(trl[name], abs=1e-5), name
    assert trl["margin"] != 0.0 and trl["max_reward"] - trl["min_reward"] > 0.1, trl


REWARD = [*TINY, "stage=reward", QUICK_DOMAIN, "init_from=experiment:quickstart",
          base_overrides("trainer.max_steps=4", "data.seq_len=64", "data.batch_size=4"),
          "reward.batch_size=4", "reward.eval_batch_size=64", "reward.max_length=64", "schedule.peak_lr=1e-3",
          "reward.max_eval_pairs=64",
          "trainer.snapshot_every_steps=2", "logger=none"]


def test_reward_stage_end_to_end(tmp_path, cache):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import prepare
    from autolab import resume

    r = run_train(REWARD, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    s = report.parse_summary(r.stdout)
    assert s["status"] == "ok" and s["num_steps"] == "4"
    for key in ("reward_accuracy", "reward_accuracy_start", "reward_margin", "reward_margin_start", "pairs",
                "dropped_pairs"):
        assert key in s and s[key] != "n/a", key
    assert 0.0 <= float(s["reward_accuracy"]) <= 1.0 and 0.0 <= float(s["reward_accuracy_start"]) <= 1.0
    assert 0 < int(s["held_out_pairs"]) <= 64  # reward.max_eval_pairs
    assert s["val_bpb"] == "n/a"  # no LM head: nothing scores text
    row = report.read_ledger(tmp_path / "results.tsv")[-1]
    assert row["stage"] == "reward" and row["reward_accuracy"] == s["reward_accuracy"]
    assert row["reward_margin"] == s["reward_margin"]

    folder = Path(s["output_dir"]) / "checkpoint"  # a sequence-classification folder, as HF tools load it
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = prepare.Tokenizer.load(folder)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.bos_id
    rows = prepare.load_preferences("val")[:8]
    seqs = [[tokenizer.bos_id, *tokenizer.encode(p["prompt"] + answer)] for p in rows for answer in (p["chosen"], p["rejected"])]
    ids = torch.full((len(seqs), max(map(len, seqs))), tokenizer.bos_id)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
    with torch.no_grad():
        scores = model(input_ids=ids).logits.squeeze(-1)
    assert scores.shape == (16,) and torch.isfinite(scores).all()

    # the last snapshot holds the reward model (its head included): it loads into the saved model exactly
    snapshot = resume.find(Path(s["output_dir"]))
    assert snapshot is not None and resume.read_state(snapshot)["stage"] == {}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    resume.load_weights(snapshot, model)
    saved = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k in saved) and "score.weight" in saved


@pytest.mark.parametrize("override, needle", [
    ("reward.center_rewards_coefficient=-1", "reward.center_rewards_coefficient=-1.0: use null (off) or a small positive"),
    ("reward.max_length=1", "reward.max_length=1: use room for a prompt and a response"),
    ("reward.dataset=/no/such/prefs.jsonl", "reward.dataset=/no/such/prefs.jsonl (split train) could not be loaded"),
])
def test_bad_reward_settings_are_one_line_errors(override, needle, tmp_path, cache):
    r = run_train([*REWARD, override], tmp_path, cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[0].startswith("error: ") and len(lines) <= 3, r.stderr[-2000:]
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_the_fresh_head_depends_on_the_seed_alone():
    """What the process drew before (a base experiment trained first) does not change the head's start:
    a resumed run and a straight one start from the same weights."""
    from omegaconf import OmegaConf

    from autolab.models import GPT, GPTConfig
    from autolab.stages.reward import as_reward_model

    lm = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, max_position_embeddings=32))
    cfg = OmegaConf.create({"seed": 7})
    heads = []
    for draw in (0, 1000):
        torch.rand(draw)
        heads.append(as_reward_model(cfg, lm).score.weight.clone())
    assert torch.equal(*heads)
