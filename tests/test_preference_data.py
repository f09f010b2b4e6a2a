"""Preference data: TRL's formats, a column mapping, local files, truncation, bad rows counted."""

import json

import pytest
import torch
from omegaconf import OmegaConf

import prepare
from autolab.data.preference import PreferenceBatches, collate, load_rows, render_chat, tokenize_pairs
from autolab.errors import UserError
from autolab.stages.dpo import DPOStage


def cfg(**kw):
    base = {"dataset": "embedded", "train_split": "train", "eval_split": "test", "columns": {},
            "max_length": 64, "max_prompt_length": None, "min_response_tokens": 2}
    return OmegaConf.create({**base, **kw})


def test_embedded_set_has_a_held_out_split_and_the_three_behaviours(cache):
    train, val = load_rows(cfg(), "train"), load_rows(cfg(), "eval")
    assert len(train) > 1000 and len(val) > 100
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}  # no held-out prompt is trained on
    kinds = {r["kind"] for r in train}
    assert kinds == {"sycophantic", "verbose", "rude"}
    syc = next(r for r in train if r["kind"] == "sycophantic")
    assert syc["rejected"].startswith(prepare.REJECTED_PREAMBLES) and syc["rejected"].endswith(syc["chosen"])
    rude = next(r for r in train if r["kind"] == "rude")
    assert "stupid" in rude["rejected"] or "every single time" in rude["rejected"]


def test_standard_implicit_and_conversational_formats_give_the_same_tokens(cache):
    tok = prepare.Tokenizer.load()
    standard = {"prompt": "What is two plus two?\n", "chosen": "Four.", "rejected": "Sure! Here's the answer: four."}
    implicit = {"chosen": standard["prompt"] + standard["chosen"], "rejected": standard["prompt"] + standard["rejected"]}
    a, b = tokenize_pairs([standard], tok, cfg()), tokenize_pairs([implicit], tok, cfg())
    assert a.prompt[0] + a.chosen[0] == b.prompt[0] + b.chosen[0]  # same sequence; extract_prompt finds the prefix
    assert a.prompt[0][0] == tok.bos_id

    convo = {"prompt": [{"role": "user", "content": "What is two plus two?"}],
             "chosen": [{"role": "assistant", "content": "Four."}],
             "rejected": [{"role": "assistant", "content": "Sure! Four."}]}
    c = tokenize_pairs([convo], tok, cfg())
    special = tok.special
    assert c.prompt[0][1] == special["<|user_start|>"] and c.prompt[0][-1] == special["<|assistant_start|>"]
    assert c.chosen[0][-1] == special["<|assistant_end|>"]
    assert render_chat(convo["prompt"], add_generation_prompt=True) == "<|user_start|>What is two plus two?<|user_end|><|assistant_start|>"


def test_column_mapping_with_a_system_prompt(cache):
    tok = prepare.Tokenizer.load()
    row = {"system": "You are terse.", "input": "Name a colour.", "chosen": "Blue.", "rejected": "Great question! Blue."}
    pairs = tokenize_pairs([row], tok, cfg(columns={"prompt": "input", "system": "system"}))
    assert tok.decode(pairs.prompt[0][1:]) == "You are terse.\nName a colour."


def test_bad_rows_are_dropped_and_counted_never_a_crash(cache):
    tok = prepare.Tokenizer.load()
    good = {"prompt": "Say hi.\n", "chosen": "Hi.", "rejected": "Sure! Here's a hi: Hi."}
    rows = [
        good,
        {"prompt": "Say hi.\n", "chosen": "Hi."},  # missing field
        {"prompt": "Say hi.\n", "chosen": "   ", "rejected": "x"},  # empty text
        {"prompt": "Say hi.\n", "chosen": "Hi.", "rejected": "Hi."},  # identical
        {"prompt": "word " * 200, "chosen": "Hi.", "rejected": "Hello."},  # no room left for a response
    ]
    pairs = tokenize_pairs(rows, tok, cfg())
    assert len(pairs) == 1
    assert dict(pairs.dropped) == {"missing_field": 1, "empty_text": 1, "identical_pair": 1, "no_room_for_response": 1}
    with pytest.raises(UserError, match="no usable preference pairs"):
        tokenize_pairs(rows[1:], tok, cfg())


def test_truncation_keeps_the_prompt_end_and_the_response_start(cache):
    tok = prepare.Tokenizer.load()
    prompt = " ".join(f"w{i}" for i in range(100)) + "\n"
    row = {"prompt": prompt, "chosen": " ".join(f"c{i}" for i in range(100)), "rejected": " ".join(f"r{i}" for i in range(100))}
    pairs = tokenize_pairs([row], tok, cfg(max_length=64, max_prompt_length=20))
    assert len(pairs.prompt[0]) == 20 and tok.decode(pairs.prompt[0]).endswith("w99\n")
    assert len(pairs.prompt[0]) + len(pairs.chosen[0]) == 64 and tok.decode(pairs.chosen[0]).startswith("c0 c1")


def test_local_jsonl_source_holds_out_a_split(tmp_path, cache):
    path = tmp_path / "prefs.jsonl"
    rows = [{"question": f"q{i}?", "chosen": f"a{i}.", "rejected": f"Sure! Here's a{i}."} for i in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = cfg(dataset=str(path))
    train, held = load_rows(c, "train"), load_rows(c, "eval")
    assert len(train) + len(held) == 200 and 5 < len(held) < 40
    assert not {r["question"] for r in train} & {r["question"] for r in held}


def test_batches_concatenate_chosen_then_rejected_and_mask_the_prompt(cache):
    tok = prepare.Tokenizer.load()
    rows = [{"prompt": f"Prompt {i}\n", "chosen": f"good {i}", "rejected": f"Sure! Here's bad {i} and more"} for i in range(6)]
    pairs = tokenize_pairs(rows, tok, cfg())
    b = collate(pairs, [0, 1])
    assert b["input_ids"].shape[0] == 4 and b["input_ids"].shape[1] % 16 == 0
    n_prompt = len(pairs.prompt[0])
    assert b["response_mask"][0, :n_prompt].sum() == 0 and b["response_mask"][0].sum() == len(pairs.chosen[0])
    assert b["response_mask"][2].sum() == len(pairs.rejected[0])  # row B + 0 is pair 0's rejected
    it = iter(PreferenceBatches(pairs, 2, seed=1))
    assert next(it)["input_ids"].shape[0] == 4


def test_a_precomputed_reference_is_never_replaced_by_the_policy():
    stage = DPOStage.__new__(DPOStage)
    torch.nn.Module.__init__(stage)
    stage.dpo = OmegaConf.create({"reference": "precomputed"})
    batch = {"input_ids": torch.zeros(4, 8, dtype=torch.long), "response_mask": torch.ones(4, 8)}
    with pytest.raises(RuntimeError, match="refusing to use the policy"):
        stage.reference_logps(batch)
    ref = {"ref_chosen_logps": torch.tensor([-1.0, -2.0]), "ref_rejected_logps": torch.tensor([-3.0, -4.0])}
    assert stage.reference_logps({**batch, **ref})[1].tolist() == [-3.0, -4.0]
