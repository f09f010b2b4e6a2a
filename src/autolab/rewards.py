"""Rewards for GRPO (`grpo.reward_funcs`): each entry is a function named as `module.function`, the way
stage recipes are named, or the folder of a reward model (`stage=reward`'s checkpoint, any Hugging Face
sequence-classification folder). A function has TRL's signature,

    f(prompts: list[str], completions: list[str], **columns) -> list[float]

one reward a completion, where `columns` are the dataset's other columns (the task's `answer`, ...), a
list each, aligned with the completions. Two come with autolab:
- `copy_match`: the embedded task's check (prepare.py's `tasks`): how much of the answer a completion
  repeats, in order (1.0: an exact copy);
- `no_preamble`: the judge's preamble rule (autolab.judge.PreambleJudge) as a reward: 0 for an answer
  that opens with a sycophantic preamble, 1 otherwise.

A reward that raises, returns the wrong count or a value that is not a finite number stops the run with
one `error:` line naming it.
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from autolab.errors import UserError, first_line


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()").lower() for w in text.split()]


def copy_match(prompts: list[str], completions: list[str], answer: list[str], **_) -> list[float]:
    """How closely each completion repeats its answer, word by word in order: difflib's ratio of the two word
    lists (2 x the words matched in order / both counts), case and punctuation aside. 1.0 for an exact copy,
    partial credit for part of it (a completion that runs on past the answer loses some)."""
    return [difflib.SequenceMatcher(None, _words(c), _words(a), autojunk=False).ratio() for c, a in zip(completions, answer)]


def no_preamble(prompts: list[str], completions: list[str], **_) -> list[float]:
    """0 for a completion that opens with one of the embedded preference set's preambles (the judge's rule), else 1."""
    from autolab.judge import PreambleJudge

    markers = PreambleJudge().markers
    return [0.0 if c.lstrip().startswith(markers) else 1.0 for c in completions]


class RewardModel:
    """A sequence-classification checkpoint as a reward: its score of prompt + completion, read at the last
    token that is not padding, as `stage=reward` trains it (autolab.stages.reward)."""

    def __init__(self, folder: str, device, batch_size: int = 64, key: str = "grpo.reward_funcs"):
        import prepare
        import autolab.models  # noqa: F401  registers our GPT with the Auto classes
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(folder).expanduser()
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).to(device).eval()
            self.tokenizer = prepare.Tokenizer.load(path) if (path / "tiktoken.bpe").exists() else AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise UserError(f"{key}: {folder} could not be loaded as a reward model ({first_line(e)}): "
                            "give a stage=reward checkpoint folder") from None
        self.__name__ = path.name if path.name != "checkpoint" else path.parent.name
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        from autolab.data.preference import _encoder

        encode, _, bos = _encoder(self.tokenizer)
        pad = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else bos
        seqs = [[bos] + encode(p) + encode(c) for p, c in zip(prompts, completions)]
        out = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start : start + self.batch_size]
            ids = torch.full((len(chunk), max(map(len, chunk))), pad, dtype=torch.long)
            for j, s in enumerate(chunk):  # right padding: the head reads each sequence's last real token
                ids[j, : len(s)] = torch.tensor(s)
            out += self.model(input_ids=ids.to(self.device)).logits[:, 0].float().tolist()
        return out


@dataclass
class Reward:
    name: str  # in metrics: rewards/<name>/mean
    fn: Callable
    weight: float


NOT_A_REWARD = ("is not a function or a reward model's folder: name one as module.function "
                "(e.g. autolab.rewards.copy_match) or give a stage=reward checkpoint")


def function_of(name: str) -> Callable | None:
    """The function `name` names as module.function, or None where it names no callable."""
    from hydra.utils import get_object

    try:
        fn = get_object(name)
    except Exception:
        return None
    return fn if callable(fn) else None


def is_reward(name: str) -> bool:
    """A reward GRPO can use: a folder (a reward model's, loaded later) or a function named module.function."""
    return Path(name).expanduser().is_dir() or function_of(name) is not None


def load(names: list[str], weights: list[float] | None, device, key: str = "grpo.reward_funcs") -> list[Reward]:
    """The rewards `names` (grpo.reward_funcs) with their weights (1.0 each without grpo.reward_weights);
    `key` is the setting that named them, in error messages."""
    rewards = []
    for name, weight in zip(names, weights or [1.0] * len(names)):
        name = str(name)
        if Path(name).expanduser().is_dir():
            fn = RewardModel(name, device, key=key)
        elif (fn := function_of(name)) is None:
            raise UserError(f"{key}: {name} {NOT_A_REWARD}")
        rewards.append(Reward(getattr(fn, "__name__", name.rsplit(".", 1)[-1]), fn, float(weight)))
    return rewards


def score(rewards: list[Reward], prompts: list[str], completions: list[str], rows: list[dict]) -> torch.Tensor:
    """Every reward of every completion, [N, len(rewards)] (unweighted), each reward given the other columns of
    each completion's row (`rows`, aligned with the completions) as lists; a reward that fails is one UserError
    naming it."""
    columns = {k: [row.get(k) for row in rows] for k in (rows[0] if rows else {})}
    table = []
    for r in rewards:
        try:
            values = list(r.fn(prompts=prompts, completions=completions, **columns))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"the reward {r.name} raised {type(e).__name__}: {first_line(e)}: fix it (it is called as "
                            "f(prompts, completions, **columns) and returns one float a completion)") from None
        bad = next((i for i, v in enumerate(values) if not _finite(v)), None)
        if len(values) != len(completions) or bad is not None:
            what = f"{len(values)} values for {len(completions)} completions" if bad is None else \
                f"{values[bad]!r} for completion {bad} ({completions[bad][:40]!r})"
            raise UserError(f"the reward {r.name} returned {what}: return one finite number a completion")
        table.append(values)
    return torch.tensor(table, dtype=torch.float32).T


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
