"""Preference pairs for DPO and the reward model: load, normalise the formats TRL accepts, tokenize,
truncate, batch. Each stage has the same keys under its own group (`dpo.*`, `reward.*`), which the
messages name (`group`).

Sources (`dpo.dataset`): `embedded` (prepare.py's set), a local .jsonl/.json/.parquet file or
folder, or a Hugging Face dataset id (through `datasets`). Formats, as in TRL: standard
(`prompt`, `chosen`, `rejected` strings), implicit prompt (`chosen`/`rejected` only, sharing a
prefix: trl.data_utils.extract_prompt), conversational (lists of messages, rendered with the
tokenizer's chat template; ours has a simple one of its own). `dpo.columns` maps other names
(e.g. system/input/chosen/rejected of argilla/distilabel-intel-orca-dpo-pairs).

Truncation keeps the prompt's end (to `max_prompt_length`, when set) and each response's start
(to what is left of `max_length`). Bad rows are dropped and counted, never a crash, never silent:
a missing field, empty text, chosen identical to rejected, a prompt with no room left for a response,
a margin that is not a number (the reward model reads an optional `margin` column, as TRL does).

Batches: `input_ids` [2B, T] (the B chosen sequences, then the B rejected ones, right-padded: with
causal attention no real token sees padding), `response_mask` [2B, T], `response_lengths` [2B],
`margin` [B] (zeros without a margin column), optional precomputed reference log-probs, and `state` (the
position after this batch). Padding is `pad_id` (0 unless given: the reward model finds each
sequence's end by its pad token).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import torch

import prepare
from autolab.data.packed import IndexBatches
from autolab.errors import UserError, first_line

FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Pairs:
    """Tokenized pairs and what was dropped on the way."""

    prompt: list[list[int]] = field(default_factory=list)
    chosen: list[list[int]] = field(default_factory=list)
    rejected: list[list[int]] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)  # r_c - r_r must exceed it (reward model); 0 without a column
    dropped: collections.Counter = field(default_factory=collections.Counter)

    def __len__(self) -> int:
        return len(self.prompt)


def load_rows(cfg, split: str, group: str = "dpo", embedded=None) -> list[dict]:
    """Raw rows of one split ("train" or "eval", or "all" of a local file) from the configured source
    (`cfg`: the stage's group of keys, named `group` in messages; `embedded`: what `dataset=embedded`
    loads by split, prepare.py's preference pairs unless given); `max_train_pairs` keeps the first
    training rows only, `max_eval_pairs` the first held-out rows (a quick run's measures; runs compare
    only where both measured the same held-out rows)."""
    source = str(cfg.dataset)
    if source == "embedded":
        rows = (embedded or prepare.load_preferences)("train" if split == "train" else "val")
    else:
        rows = _dataset_rows(cfg, split, group)
    limit = cfg.get("max_train_pairs" if split == "train" else "max_eval_pairs")
    if limit:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"{group}.dataset={source} has no {'training' if split == 'train' else 'held-out'} rows: "
                        "give more rows (local files hold out ~10% by a hash of the row)")
    return rows


def _dataset_rows(cfg, split: str, group: str) -> list[dict]:
    """A local file or folder, or a hub dataset's split, through `datasets`."""
    import datasets

    source = str(cfg.dataset)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a file it cannot read is one UserError below
    name = cfg.train_split if split == "train" else cfg.eval_split
    path = Path(source).expanduser()
    try:
        if path.exists():
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            files = [str(f) for f in files if f.suffix in (".jsonl", ".json", ".parquet")]
            if not files:
                raise UserError(f"{group}.dataset={source} holds no .jsonl, .json or .parquet files")
            builder = "parquet" if files[0].endswith(".parquet") else "json"
            ds = datasets.load_dataset(builder, data_files={"rows": files}, split="rows")
        else:
            ds = datasets.load_dataset(source, split=name)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types for unreadable or malformed files
        raise UserError(f"{group}.dataset={source} (split {name}) could not be loaded: {first_line(e)}") from None
    rows = list(ds)
    if split == "all":
        return rows
    if path.exists() or name is None:  # one file or no named split: hold out ~10% by a hash of the row
        held = {i for i in range(len(rows)) if prepare.split_of(f"{source}/{i}") == "val"}
        if not held and len(rows) >= 2:  # a small set still gets one held-out pair
            held = {len(rows) - 1}
        rows = [r for i, r in enumerate(rows) if (i in held) == (split != "train")]
    return rows


class _Drop(Exception):
    pass


def _encoder(tokenizer):
    """(encode text, encode text with special tokens, bos id) for our tokenizer or an HF one."""
    if isinstance(tokenizer, prepare.Tokenizer):
        specials = set(tokenizer.special)
        return tokenizer.encode, (lambda t: tokenizer.enc.encode(t, allowed_special=specials)), tokenizer.bos_id
    plain = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    return plain, plain, prepare._encoder(tokenizer)[1]  # prepare owns the BOS choice (and its error)


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """autolab's chat template, in its special tokens: <|user_start|>...<|user_end|><|assistant_start|>...<|assistant_end|>."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            out.append(f"<|assistant_start|>{m['content']}<|assistant_end|>")
        else:  # system and user turns are both given as user text
            out.append(f"<|user_start|>{m['content']}<|user_end|>")
    return "".join(out) + ("<|assistant_start|>" if add_generation_prompt else "")


def _as_text(example: dict, tokenizer, group: str = "dpo") -> tuple[str, str, str, bool]:
    """(prompt, chosen, rejected, uses special tokens) of one normalised example."""
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    if is_conversational(example):
        if isinstance(tokenizer, prepare.Tokenizer):  # the prompt opens the assistant turn; completions close it
            prompt = render_chat(example["prompt"], add_generation_prompt=True)
            completion = lambda messages: render_chat(messages).removeprefix("<|assistant_start|>")  # noqa: E731
            return prompt, completion(example["chosen"]), completion(example["rejected"]), True
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"{group}.dataset holds conversational rows but init_from's tokenizer has no chat template: "
                            "use a model with one, or give the rows as plain prompt/chosen/rejected text")
        out = maybe_apply_chat_template(example, tokenizer)
        return out["prompt"], out["chosen"], out["rejected"], True
    return example["prompt"], example["chosen"], example["rejected"], False


ROLES = ("system", "user", "assistant")


def usable_prompt(value) -> bool:
    """A prompt a model can answer: non-empty text, or a non-empty list of chat messages."""
    return _text_or_messages(value) and bool(value.strip() if isinstance(value, str) else value)


def _text_or_messages(value) -> bool:
    """A string, or a list of {"role": str, "content": str} messages (TRL's conversational format)."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def _roles_ok(example: dict) -> bool:
    """Conversational rows: all three are message lists, known roles, answers from the assistant."""
    if not all(isinstance(example[f], list) and example[f] for f in FIELDS):
        return False
    roles_ok = all(m["role"] in ROLES for f in FIELDS for m in example[f])
    return roles_ok and all(m["role"] == "assistant" for f in ("chosen", "rejected") for m in example[f])


def _normalise(row: dict, columns: dict) -> dict:
    from trl.data_utils import extract_prompt

    example = {f: row.get(columns.get(f, f)) for f in FIELDS}
    system = row.get(columns["system"]) if columns.get("system") else None
    if example["chosen"] is None or example["rejected"] is None:
        raise _Drop("missing_field")
    for value in example.values():
        if value is not None and not _text_or_messages(value):
            raise _Drop("not_text")
    if example["prompt"] is None:  # implicit prompt: the shared prefix of chosen and rejected
        example = {**example, **extract_prompt({"chosen": example["chosen"], "rejected": example["rejected"]})}
    if isinstance(example["prompt"], str) and not example["prompt"].strip():
        raise _Drop("empty_prompt")
    if any(isinstance(v, list) for v in example.values()) and not _roles_ok(example):
        raise _Drop("bad_roles")
    if system:
        if isinstance(example["prompt"], list):
            example["prompt"] = [{"role": "system", "content": system}, *example["prompt"]]
        else:
            example["prompt"] = f"{system}\n{example['prompt']}"
    return example


def tokenize_pairs(rows: list[dict], tokenizer, cfg, group: str = "dpo", margins: bool = False) -> Pairs:
    """Tokenize and truncate every row; count what is dropped and why. `margins`: read each row's margin
    (the column `cfg.columns.margin`, else `margin`; 0 where a row has none)."""
    encode, encode_special, bos = _encoder(tokenizer)
    columns = dict(cfg.get("columns") or {})
    out = Pairs()
    max_len, max_prompt, min_resp = cfg.max_length, cfg.get("max_prompt_length"), cfg.min_response_tokens
    for row in rows:
        try:
            example = _normalise(row, columns)
            prompt, chosen, rejected, special = _as_text(example, tokenizer, group)
            if not str(chosen).strip() or not str(rejected).strip():
                raise _Drop("empty_text")
            if chosen == rejected:
                raise _Drop("identical_pair")
            enc = encode_special if special else encode
            p = [bos] + enc(prompt)
            if max_prompt:
                p = p[-max_prompt:]  # keep the prompt's end: the question right before the answer
            room = max_len - len(p)
            if room < min_resp:
                raise _Drop("no_room_for_response")
            c, r = enc(chosen)[:room], enc(rejected)[:room]  # keep each response's start
            if c == r:
                raise _Drop("identical_after_truncation")
            margin = row.get(columns.get("margin", "margin")) if margins else None
            if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                       or margin != margin or abs(margin) == float("inf")):
                raise _Drop("bad_margin")  # not a finite number
        except _Drop as why:
            out.dropped[str(why)] += 1
            continue
        out.prompt.append(p)
        out.chosen.append(c)
        out.rejected.append(r)
        out.margin.append(float(margin or 0.0))
    if not len(out):
        raise UserError(f"no usable preference pairs (dropped: {dict(out.dropped)}): check {group}.dataset and {group}.columns")
    return out


def collate(pairs: Pairs, index: list[int], ref: dict | None = None, pad_to: int = 16, pad_id: int = 0) -> dict:
    """One batch of pairs as a concatenated [chosen; rejected] block, right-padded with pad_id to a multiple of pad_to."""
    seqs = [pairs.prompt[i] + pairs.chosen[i] for i in index] + [pairs.prompt[i] + pairs.rejected[i] for i in index]
    prompt_lens = [len(pairs.prompt[i]) for i in index] * 2
    T = -(-max(len(s) for s in seqs) // pad_to) * pad_to
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for j, (s, lp) in enumerate(zip(seqs, prompt_lens)):
        ids[j, : len(s)] = torch.tensor(s)
        mask[j, lp : len(s)] = 1
    batch = {"input_ids": ids, "response_mask": mask, "response_lengths": mask.sum(1).float(),
             "margin": torch.tensor([pairs.margin[i] for i in index], dtype=torch.float)}
    if ref is not None:
        idx = torch.tensor(index)
        batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref["chosen"][idx], ref["rejected"][idx]
    return batch


class PreferenceBatches(IndexBatches):
    """Batches of pairs forever, in the seeded epoch order PackedRows uses; resumable like it."""

    def __init__(self, pairs: Pairs, batch_size: int, seed: int = 0, ref: dict | None = None, part: slice = slice(None),
                 pad_id: int = 0, group: str = "dpo"):
        if len(pairs) < batch_size:
            raise UserError(f"{len(pairs)} preference pairs, fewer than one batch of {batch_size}: lower {group}.batch_size")
        super().__init__(len(pairs), batch_size, lambda index: collate(pairs, index, ref, pad_id=pad_id), seed, part)
        self.pairs = pairs


def behaviour_markers(dataset: str) -> tuple[str, ...]:
    """Openings that mark a rejected-style answer in this preference set, for the behaviour measures
    (preamble share and probability, the DPO win rate's rule judge): the embedded set's sycophancy
    preambles; none are known for other sets."""
    return prepare.REJECTED_PREAMBLES if dataset == "embedded" else ()
