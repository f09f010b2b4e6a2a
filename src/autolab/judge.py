"""Pairwise LLM-as-judge (Zheng et al. 2023, "Judging LLM-as-a-judge"): two models answer the same
prompts; a judge compares each pair of answers in both orders, which cancels its position bias.

    python -m autolab.judge a=<model> b=<model> [judge=preamble | judge=<model>] [prompts=embedded | file] [n=64]

Per prompt, the verdicts of the two orders (a first, then b first) become one outcome for `a`:
the same side both times is a win or a loss, anything else (a tie, or a verdict that flips with the
order) a tie; a judge reply that cannot be parsed makes the prompt `invalid` (counted, not scored).
Output, in the run's output dir: `judgments.jsonl` (every judgment, written as it is made, so an
interrupted run keeps what it judged), `judge.json` (win / tie / loss rates for `a` with 95% Wilson
intervals, and the position-consistency rate: the share of prompts whose verdict did not flip), and
`judge.png`, a bar plot with the intervals.

A judge is anything with `__call__(items) -> verdicts`, items (prompt, first answer, second answer),
verdicts (`first` | `second` | `tie` | `invalid`, the judge's raw reply). Two come with autolab:
- `PreambleJudge`, a rule: the embedded preference set's sycophancy preambles
  (`prepare.REJECTED_PREAMBLES`) lose against an answer without one; where a tiny model judges poorly;
- `ModelJudge`, any causal LM, asked through its chat template which answer is better;
- `RewardJudge` (`judge=reward:NAME`), a GRPO reward (autolab.rewards): the higher score wins. With
  `prompts=tasks` it compares two policies on the embedded task's held-out prompts, e.g. GRPO's and
  DPO's, ends of the same pipeline: `judge=reward:autolab.rewards.copy_match prompts=tasks chat=off`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from autolab.cli import device, hydra_tool, load_model, output_dir
from autolab.errors import UserError
from autolab.generation import Sampling, chat_prompt, generate
from autolab.report import format_value

VERDICTS = ("first", "second", "tie", "invalid")
Judge = Callable[[list[tuple[str, str, str]]], list[tuple[str, str]]]


@dataclass
class JudgeConf:
    a: str = MISSING
    b: str = MISSING
    judge: str = MISSING
    prompts: str = MISSING
    n: int = MISSING
    chat: str = MISSING
    answers: Sampling = MISSING
    judge_tokens: int = MISSING
    device: str = MISSING


class PreambleJudge:
    """An answer that opens with one of `markers` (by default the embedded preference set's sycophancy
    preambles) loses against one that does not; else a tie."""

    name = "preamble"

    def __init__(self, markers: tuple[str, ...] | None = None):
        from autolab.data.preference import behaviour_markers

        self.markers = tuple(markers) if markers else behaviour_markers("embedded")

    def __call__(self, items):
        out = []
        for _, first, second in items:
            bad = [answer.lstrip().startswith(self.markers) for answer in (first, second)]
            verdict = "tie" if bad[0] == bad[1] else ("second" if bad[0] else "first")
            out.append((verdict, f"preamble: first={bad[0]} second={bad[1]}"))
        return out


class RewardJudge:
    """A GRPO reward as the judge (`judge=reward:NAME`, NAME as in grpo.reward_funcs: module.function or a
    reward model's folder): the answer it scores higher wins, equal scores tie. `columns` holds each
    prompt's other columns (the task's `answer`), which a reward such as copy_match reads."""

    def __init__(self, name: str, columns: dict[str, dict], dev):
        from autolab import rewards

        self.name, self.columns = name, columns
        self.reward = rewards.load([name], None, dev, key=f"judge=reward:{name}")[0]

    def __call__(self, items):
        from autolab import rewards

        prompts = [p for p, _, _ in items] * 2
        answers = [first for _, first, _ in items] + [second for _, _, second in items]
        rows = [self.columns.get(p, {}) for p in prompts]
        scores = rewards.score([self.reward], prompts, answers, rows)[:, 0].tolist()
        n = len(items)
        return [("first" if a > b else "second" if b > a else "tie", f"{self.reward.name}: first={a:.4f} second={b:.4f}")
                for a, b in zip(scores[:n], scores[n:])]


JUDGE_PROMPT = (
    "Which response answers the question better? Reply with one word: A, B or tie.\n\n"
    "Question: {prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\nBetter response:"
)


def parse_verdict(reply: str) -> str:
    """The reply's first word: A -> first, B -> second, tie -> tie; anything else is invalid."""
    words = reply.strip().strip(".*:\"'").split()
    word = words[0].strip(".,:;!*\"'").lower() if words else ""
    return {"a": "first", "b": "second", "tie": "tie"}.get(word, "invalid")


class ModelJudge:
    """A causal LM as judge: greedy, a few tokens, its first word parsed (parse_verdict)."""

    def __init__(self, model, tokenizer, name: str, chat: str = "auto", max_new_tokens: int = 4, batch_size: int = 16):
        self.model, self.tokenizer, self.name, self.chat = model, tokenizer, name, chat
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)

    def __call__(self, items):
        texts = [chat_prompt(self.tokenizer, JUDGE_PROMPT.format(prompt=p, first=f, second=s), self.chat)
                 for p, f, s in items]
        replies = generate(self.model, self.tokenizer, texts, self.sampling)
        return [(parse_verdict(r), r) for r in replies]


def outcome(a_first: str, b_first: str) -> str:
    """One prompt's outcome for `a` from the verdicts with a shown first and with b shown first."""
    if "invalid" in (a_first, b_first):
        return "invalid"
    for_a = {"first": "win", "second": "loss", "tie": "tie"}[a_first]
    for_a_swapped = {"first": "loss", "second": "win", "tie": "tie"}[b_first]
    return for_a if for_a == for_a_swapped else "tie"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n (sound at 0 and at n, unlike k/n +- 2 s.e.)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def tally(records: list[dict]) -> dict:
    """win / tie / loss rates for `a` with intervals, position consistency, invalid count."""
    counts = Counter(r["outcome"] for r in records)
    valid = [r for r in records if r["outcome"] != "invalid"]
    n = len(valid)
    out: dict[str, Any] = {"prompts": len(records), "judged": n, "invalid": counts["invalid"]}
    for key in ("win", "tie", "loss"):
        low, high = wilson(counts[key], n)
        out.update({f"{key}_rate": counts[key] / n if n else None, f"{key}_low": low, f"{key}_high": high})
    consistent = sum(r["a_first"] == {"first": "second", "second": "first", "tie": "tie"}[r["b_first"]] for r in valid)
    out["position_consistency"] = consistent / n if n else None
    return out


def compare(prompts: list[str], answers_a: list[str], answers_b: list[str], judge: Judge,
            sink: Path | None = None, chunk: int = 32) -> tuple[dict, list[dict]]:
    """Judge every prompt's pair of answers in both orders; each record is appended to `sink` (JSONL)
    as soon as it is made. Returns (tally, records)."""
    records: list[dict] = []
    f = sink.open("a", encoding="utf-8") if sink else None
    try:
        for start in range(0, len(prompts), chunk):
            part = range(start, min(start + chunk, len(prompts)))
            items = [(prompts[i], answers_a[i], answers_b[i]) for i in part]
            items += [(prompts[i], answers_b[i], answers_a[i]) for i in part]
            verdicts = judge(items)
            if len(verdicts) != len(items) or any(v not in VERDICTS for v, _ in verdicts):
                raise UserError(f"the judge gave {len(verdicts)} verdicts for {len(items)} pairs, or one outside "
                                f"{VERDICTS}: a judge returns one (verdict, reply) per pair")
            for j, i in enumerate(part):
                (v1, r1), (v2, r2) = verdicts[j], verdicts[j + len(part)]
                rec = {"index": i, "prompt": prompts[i], "a": answers_a[i], "b": answers_b[i], "a_first": v1,
                       "b_first": v2, "outcome": outcome(v1, v2), "reply_a_first": r1, "reply_b_first": r2}
                records.append(rec)
                if f:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
    finally:
        if f:
            f.close()
    return tally(records), records


def summary(result: dict, out: Path) -> str:
    """The `---` block that closes the command's output; a rate with nothing judged reads n/a."""
    lines = ["---"]
    for key in ("win_rate", "tie_rate", "loss_rate", "position_consistency", "judged", "invalid", "dropped_prompts"):
        value = result[key]
        lines.append(f"{key}: " + (f"{value:.4f}" if isinstance(value, float) else format_value(value)))
    lines += [f"win_interval: [{result['win_low']:.4f}, {result['win_high']:.4f}]", f"output_dir: {out}"]
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
    """Win / tie / loss rates for `a` as bars with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("win", "tie", "loss")
    rates = [result[f"{k}_rate"] or 0.0 for k in keys]
    errors = [[max(0.0, r - result[f"{k}_low"]) for k, r in zip(keys, rates)],  # max: rounding at 0 and 1
              [max(0.0, result[f"{k}_high"] - r) for k, r in zip(keys, rates)]]
    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=120)
    ax.bar(keys, rates, yerr=errors, capsize=6, color=["tab:green", "tab:gray", "tab:red"])
    for x, r in enumerate(rates):
        ax.text(x, r + 0.02, f"{r:.0%}", ha="center", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"share of {result['judged']} prompts (95% interval)")
    consistency = result.get("position_consistency")
    ax.set_title(title + (f"\nposition consistency {consistency:.0%}" if consistency is not None else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def win_rate(policy, start, tokenizer, prompts: list[str], markers: tuple[str, ...], sampling: Sampling, dev,
             plot_path: Path | None = None) -> dict:
    """How often `policy` beats `start` (the model it was trained from) on `prompts` under the preamble
    rule (PreambleJudge with `markers`), both answering the same prompts as they were trained on them (plain text, the same seed):
    what the DPO stage reports beside reward accuracy. Keys: win_rate, win_low, win_high, tie_rate,
    loss_rate (the rule sees no position: its verdicts never flip)."""
    answers_policy = generate(policy, tokenizer, prompts, sampling, dev)
    answers_start = generate(start, tokenizer, prompts, sampling, dev)
    result, _ = compare(prompts, answers_policy, answers_start, PreambleJudge(markers))
    if plot_path is not None:
        plot(result, plot_path, f"after DPO vs its start, {len(prompts)} held-out prompts, judge: preamble rule")
    return {k: result[k] for k in ("win_rate", "win_low", "win_high", "tie_rate", "loss_rate")}


def load_prompts(source: str, n: int) -> tuple[list, int, list[dict]]:
    """(up to n prompts, how many were dropped as empty or not text, each kept prompt's other columns):
    `embedded` (the preference set's held-out prompts), `tasks` (the embedded GRPO task's held-out prompts,
    with their `answer`), a .txt file (a prompt per line), a local preference file or folder (every row's
    `prompt`) or a HF dataset (its held-out split's prompts)."""
    import prepare
    from autolab.data.preference import load_rows, usable_prompt

    path = Path(source).expanduser()
    if path.suffix == ".txt" and path.exists():
        rows = [{"prompt": line} for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    elif source == "tasks":
        rows = prepare.load_tasks("val")
    else:
        spec = OmegaConf.create({"dataset": source, "train_split": "train", "eval_split": "test"})
        rows = load_rows(spec, "all" if path.exists() else "eval")  # a hub set: its held-out split
    usable = [r for r in rows if usable_prompt(r.get("prompt"))]
    if not usable:
        raise UserError(f"prompts={source}: no usable prompts ({len(rows)} rows, all empty or not text)")
    dropped, usable = len(rows) - len(usable), usable[:n]
    return [r["prompt"] for r in usable], dropped, [{k: v for k, v in r.items() if k != "prompt"} for r in usable]


def answers(source: str, key: str, prompts: list, cfg, dev) -> list[str]:
    import torch

    model, tokenizer = load_model(source, key, dev)
    texts = [chat_prompt(tokenizer, p, cfg.chat) for p in prompts]
    out = generate(model, tokenizer, texts, Sampling(**cfg.answers), dev, progress=f"answers of {key}")
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(cfg) -> dict:
    dev = device(cfg.device)
    prompts, dropped, columns = load_prompts(str(cfg.prompts), cfg.n)
    shown = [p if isinstance(p, str) else json.dumps(p) for p in prompts]
    if cfg.judge == "preamble":
        judge: Judge = PreambleJudge()
    elif str(cfg.judge).startswith("reward:"):
        judge = RewardJudge(str(cfg.judge).removeprefix("reward:"), dict(zip(shown, columns)), dev)
    else:
        model, tokenizer = load_model(cfg.judge, "judge", dev)
        judge = ModelJudge(model, tokenizer, str(cfg.judge), "auto", cfg.judge_tokens, cfg.answers.batch_size)
    answers_a, answers_b = answers(cfg.a, "a", prompts, cfg, dev), answers(cfg.b, "b", prompts, cfg, dev)
    out = output_dir()
    result, _ = compare(shown, answers_a, answers_b, judge, out / "judgments.jsonl")
    result.update(a=str(cfg.a), b=str(cfg.b), judge=str(cfg.judge), dropped_prompts=dropped)
    (out / "judge.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "judge.png", f"a={Path(str(cfg.a)).name} vs b={Path(str(cfg.b)).name}, judge={Path(str(cfg.judge)).name}")
    print(summary(result, out))
    return result


if __name__ == "__main__":
    hydra_tool("judge", main, JudgeConf)
