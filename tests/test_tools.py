"""The research tools: hooks and the logit lens, preference data from documents, pairwise judging."""

import json
import os
from pathlib import Path

import forked
import pytest
import torch
from conftest import QUICK_DOMAIN, run_train
from transformers import AutoModelForCausalLM

import autolab.models  # noqa: F401  registers autolab_gpt with the Auto classes
from autolab import report
from autolab.errors import UserError
from autolab.hooks import decoder, record
from autolab.judge import PreambleJudge, compare, parse_verdict, summary, wilson
from autolab.lens import readouts
from autolab.prefgen import drop_reason, extract_answer
from test_models import trained_like_gpt


def tool(module: str, args: list[str], cwd: Path, cache: Path, timeout: int = 600):
    """`python -m autolab.<module> *args`, in a process of its own (tests/forked.py)."""
    return forked.run(["-m", f"autolab.{module}", *args], cwd, {**os.environ, "AUTOLAB_CACHE": str(cache)}, timeout)


@pytest.fixture
def checkpoint(trained_run) -> Path:
    """A tiny GPT trained for 30 CPU steps, as train.py writes it (the session's, read-only)."""
    return trained_run / "checkpoint"


# --- hooks and the logit lens -------------------------------------------------------------------


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_the_last_layer_read_out_is_the_model_itself(tiny_llama):
    capped = trained_like_gpt()
    capped.config.logit_softcap = 2.0  # the readouts take the model's soft cap too (the GPU default has one)
    for model in (trained_like_gpt(), capped, AutoModelForCausalLM.from_pretrained(tiny_llama).eval()):
        ids = torch.randint(1, 100, (2, 9))
        names, logits, final = readouts(model, ids)
        assert len(names) == model.config.num_hidden_layers + 1  # the embeddings, then every layer
        assert torch.equal(logits[-1], final)  # exactly: the same final norm and unembedding
        assert not torch.equal(logits[0], final)
        assert _hook_count(model) == 0


def test_hooks_are_gone_after_the_block_also_after_an_exception():
    model = trained_like_gpt()
    ids = torch.randint(0, 100, (1, 6))
    with record(model, ["blocks.0", "blocks.1.mlp_out"]) as out:
        assert _hook_count(model) == 2
        model(input_ids=ids)
    assert out["blocks.0"].shape == (1, 6, 32) and out["blocks.1.mlp_out"].shape == (1, 6, 32)
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with record(model, ["blocks.0"]):
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    with pytest.raises(UserError, match="no module named 'blocks.9'"):
        with record(model, ["blocks.0", "blocks.9"]):
            pass
    assert _hook_count(model) == 0
    assert decoder(model).layers == ["blocks.0", "blocks.1"]


def test_lens_command_writes_its_table_and_plot(checkpoint, cache, tmp_path):
    r = tool("lens", [f"init_from={checkpoint}", "max_bytes=20000", "positions=[1,2,5]", "eval.batch_size=1"],
             tmp_path, cache)
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) <= 3  # unknown key
    r = tool("lens", [f"init_from={checkpoint}", "max_bytes=20000", "positions=[1,2,5]"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    s = report.parse_summary(r.stdout)
    out = Path(s["output_dir"])
    result = json.loads((out / "lens.json").read_text())
    n = json.loads((checkpoint / "config.json").read_text())["n_layer"]
    last = f"blocks.{n - 1}"
    assert list(result["bpb"]) == ["wte", *(f"blocks.{i}" for i in range(n))] and result["positions"] == [1, 2, 5]
    assert float(s["final_bpb"]) == pytest.approx(result["bpb"][last])
    assert result["bpb"][last] < result["bpb"]["wte"]  # a trained model predicts better at its end
    assert (out / "lens.png").stat().st_size > 10_000 and f"| {last} |" in (out / "lens.md").read_text()
    r = tool("lens", [f"init_from={tmp_path}/nothing"], tmp_path, cache)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "init_from=" in r.stderr


# --- pairwise judging ---------------------------------------------------------------------------


class FirstJudge:
    """Always prefers whatever it is shown first: pure position bias."""

    def __call__(self, items):
        return [("first", "A") for _ in items]


class LongerJudge:
    """Prefers the longer answer, wherever it stands; equal lengths tie."""

    def __call__(self, items):
        return [("tie" if len(f) == len(s) else ("first" if len(f) > len(s) else "second"), "") for _, f, s in items]


PROMPTS = [f"question {i}" for i in range(10)]
A = ["a long answer"] * 6 + ["short"] * 3 + ["same"]
B = ["short"] * 6 + ["a long answer"] * 3 + ["same"]


def test_a_position_biased_judge_gives_ties_and_zero_consistency():
    result, records = compare(PROMPTS, A, B, FirstJudge())
    assert result["tie_rate"] == 1.0 and result["win_rate"] == result["loss_rate"] == 0.0
    assert result["position_consistency"] == 0.0 and len(records) == 10


def test_swapping_a_and_b_mirrors_the_result():
    ab, _ = compare(PROMPTS, A, B, LongerJudge())
    ba, _ = compare(PROMPTS, B, A, LongerJudge())
    assert (ab["win_rate"], ab["tie_rate"], ab["loss_rate"]) == (0.6, 0.1, 0.3)
    assert (ba["win_rate"], ba["tie_rate"], ba["loss_rate"]) == (0.3, 0.1, 0.6)
    assert (ab["win_low"], ab["win_high"]) == (ba["loss_low"], ba["loss_high"])
    assert ab["position_consistency"] == ba["position_consistency"] == 1.0


def test_the_preamble_rule_judges_the_embedded_sets_marker():
    verdicts = PreambleJudge()([("q", "Sure! Here's x", "x"), ("q", "x", "Great question! x"), ("q", "x", "y")])
    assert [v for v, _ in verdicts] == ["second", "first", "tie"]


def test_wilson_interval_by_hand():
    low, high = wilson(0, 10)  # p = 0: centre = half = (1.96^2/20) / (1 + 1.96^2/10) = 0.138770
    assert low == 0.0 and high == pytest.approx(0.277540, abs=1e-6)
    low, high = wilson(5, 10)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(2 * 0.26340, abs=1e-4)


def test_unparseable_replies_are_counted_and_judgments_already_made_are_kept(tmp_path):
    assert [parse_verdict(r) for r in ("A", " b.", "Tie", "**A**", "maybe", "")] == \
           ["first", "second", "tie", "first", "invalid", "invalid"]

    class FlakyJudge:
        calls = 0

        def __call__(self, items):
            FlakyJudge.calls += 1
            if FlakyJudge.calls == 2:
                raise RuntimeError("the judge's server went away")
            return [(parse_verdict(r), r) for r in ["A", "???"] * (len(items) // 2)]

    sink = tmp_path / "judgments.jsonl"
    with pytest.raises(RuntimeError):
        compare(PROMPTS, A, B, FlakyJudge(), sink, chunk=4)
    kept = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [r["index"] for r in kept] == [0, 1, 2, 3]  # the first chunk survives the failure of the second
    result, _ = compare(PROMPTS[:4], A[:4], B[:4], FlakyJudge(), chunk=4)
    assert result["invalid"] == 2 and result["judged"] == 2  # "???" is invalid, never a guess

    nothing, _ = compare(PROMPTS[:2], A[:2], B[:2], lambda items: [("invalid", "???")] * len(items))
    block = report.parse_summary(summary({**nothing, "dropped_prompts": 0}, tmp_path))  # a judge that never answers
    assert block["win_rate"] == block["position_consistency"] == "n/a" and block["invalid"] == "2"
    assert block["win_interval"] == "[0.0000, 1.0000]" and block["output_dir"] == str(tmp_path)


def test_judge_command_on_two_models(checkpoint, cache, tmp_path, tiny_llama):
    args = [f"a={checkpoint}", f"b={checkpoint}", "n=6", "answers.max_new_tokens=6"]
    r = tool("judge", args, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    s = report.parse_summary(r.stdout)
    assert s["tie_rate"] == "1.0000" and s["position_consistency"] == "1.0000"  # a model against itself, same seed
    out = Path(s["output_dir"])
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 6 and (out / "judge.png").exists()

    r = tool("judge", [*args, f"judge={checkpoint}", "judge_tokens=2"], tmp_path, cache)  # a tiny model as judge
    assert r.returncode == 0, r.stderr[-2000:]
    s = report.parse_summary(r.stdout)
    assert int(s["judged"]) + int(s["invalid"]) == 6  # what it cannot say is counted, not guessed

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
                                "rejected": [{"role": "assistant", "content": "b"}]}) + "\n")
    r = tool("judge", [f"a={tiny_llama}", f"b={tiny_llama}", f"prompts={chat}", "n=2"], tmp_path, cache)
    assert r.returncode == 2 and "no chat template" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    r = tool("judge", [*args, f"prompts={empty}"], tmp_path, cache)
    assert r.returncode == 2 and "no usable prompts" in r.stderr and r.stderr.count("\n") == 1


def test_a_reward_judges_two_policies_on_the_task(checkpoint, cache, tmp_path, tiny_llama):
    """judge=reward:NAME prompts=tasks: the answer the reward scores higher wins (as GRPO's and DPO's ends of a
    pipeline are compared); each outcome is the one copy_match gives the two recorded answers."""
    import prepare
    from autolab.rewards import copy_match

    args = [f"a={checkpoint}", f"b={tiny_llama}", "judge=reward:autolab.rewards.copy_match", "prompts=tasks", "chat=off",
            "n=8", "answers.max_new_tokens=8", "answers.temperature=0"]
    r = tool("judge", args, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    s = report.parse_summary(r.stdout)
    records = [json.loads(line) for line in (Path(s["output_dir"]) / "judgments.jsonl").read_text().splitlines()]
    answer = {row["prompt"]: row["answer"] for row in prepare.load_tasks("val")}
    assert len(records) == int(s["judged"]) == 8 and s["position_consistency"] == "1.0000"  # a rule: no position bias
    for rec in records:
        a, b = copy_match([rec["prompt"]] * 2, [rec["a"], rec["b"]], [answer[rec["prompt"]]] * 2)
        assert rec["outcome"] == ("win" if a > b else "loss" if b > a else "tie"), rec
    assert {rec["outcome"] for rec in records} != {"tie"}  # two different models: the reward told them apart

    r = tool("judge", [*args[:2], "judge=reward:no.such.reward", "n=2"], tmp_path, cache)
    assert r.returncode == 2 and "judge=reward:no.such.reward: no.such.reward is not a function" in r.stderr
    assert r.stderr.count("\n") == 1


# --- preference data from documents ---------------------------------------------------------------


PASSAGE = "Rivers carry sediment to the sea. The delta forms where the river slows. Fish swim upstream."


def test_extract_answer_is_verbatim_and_follows_the_instruction():
    answer, overlap = extract_answer(PASSAGE, "Where does a delta form?", sentences=1)
    assert answer == "The delta forms where the river slows." and answer in PASSAGE and overlap >= 1
    _, overlap = extract_answer(PASSAGE, "Who won the match?", sentences=1)
    assert overlap == 0


@pytest.mark.parametrize("instruction, chosen, overlap, rejected, why", [
    ("Where does a delta form?", "The delta forms where the river slows.", 1, "In the mountains.", None),
    ("Where?", "The delta forms where the river slows.", 1, "In the mountains.", "short"),
    ("Where does a delta form?", "The delta forms.", 1, "Mud.", "short"),
    ("Who won the match yesterday?", "The delta forms where the river slows.", 0, "The home team.", "unsupported"),
    ("Where does a delta form?", "The delta forms where the river slows.", 1, "the delta  forms where the River slows.", "identical"),
])
def test_each_filter_drops_what_it_should_and_keeps_the_rest(instruction, chosen, overlap, rejected, why):
    assert drop_reason(instruction, chosen, overlap, rejected, set(), min_chars=8) == why


def test_duplicates_are_dropped_after_the_first():
    seen: set[str] = set()
    pair = ("Where does a delta form?", "The delta forms where the river slows.", 1, "In the mountains.")
    assert drop_reason(*pair, seen, 8) is None
    assert drop_reason(*pair, seen, 8) == "duplicate"
    assert drop_reason("Where do deltas form?", pair[1], 1, "Elsewhere entirely.", seen, 8) == "duplicate"  # same answer


def test_prefgen_writes_a_set_that_dpo_trains_on(checkpoint, cache, tmp_path):
    args = [f"generator={checkpoint}", "n=96", "min_chars=4", "instruction.max_new_tokens=12", "answer.max_new_tokens=12"]
    r = tool("prefgen", args, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    s = report.parse_summary(r.stdout)
    rows = [json.loads(line) for line in Path(s["preferences"]).read_text().splitlines()]
    dropped = sum(int(s[f"dropped_{k}"]) for k in ("short", "unsupported", "identical", "duplicate"))
    assert len(rows) == int(s["kept"]) and len(rows) + dropped == int(s["passages"]) == 96
    assert all(set(row) == {"prompt", "chosen", "rejected"} and row["chosen"] != row["rejected"] for row in rows)
    assert len(rows) >= 8, s  # enough for the DPO run below

    dpo = ["stage=dpo", QUICK_DOMAIN, "+experiment=quickstart", f"init_from={checkpoint}", f"dpo.dataset={s['preferences']}",
           "trainer.max_steps=3", "data.seq_len=64", "dpo.batch_size=2", "dpo.max_length=96", "dpo.behaviour_prompts=2",
           "eval.batch_size=64", "logger=none"]
    r = run_train(dpo, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert report.parse_summary(r.stdout)["status"] == "ok"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    r = tool("prefgen", [f"generator={checkpoint}", f"source={bad}"], tmp_path, cache)
    assert r.returncode == 2 and "line 2 is not JSON" in r.stderr and r.stderr.count("\n") == 1
