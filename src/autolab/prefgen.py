"""Preference data made from documents (the LLM Engineer's Handbook method, Iusztin & Labonne 2024):
for each passage a generator model writes an instruction; *chosen* is an answer extracted verbatim
from the passage, *rejected* the generator's own answer to the instruction, without the passage.

    python -m autolab.prefgen source=<domain | .txt | .jsonl> generator=<checkpoint or HF folder> n=256
    python train.py +experiment=dpo dpo.dataset=<the preferences.jsonl it wrote>

Filters, each counted in the report (`prefgen.json`, and printed):
- short: the instruction, chosen or rejected has fewer than `min_chars` characters;
- unsupported: the extracted answer shares no content word with the instruction (the passage does
  not answer what was asked);
- identical: chosen and rejected are the same text (ignoring case and spacing);
- duplicate: an instruction or a chosen answer already kept.
The kept pairs are written as TRL's standard format (`prompt`, `chosen`, `rejected` strings) to
`preferences.jsonl`; generation is batched, through the generator's chat template when it has one,
and seeded.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

import prepare
from autolab.cli import device, hydra_tool, load_model, output_dir
from autolab.errors import UserError
from autolab.generation import Sampling, chat_prompt, generate

INSTRUCTION_PROMPT = "Write one question that the following passage answers.\n\nPassage: {passage}\n\nQuestion:"
STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out has him his how its may new now old see "
    "two who did get let put say she too use that with have this will your from they been what when which "
    "there their would about could other into more some than then them these only also does each where why "
    "question passage answer following write".split()
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")


@dataclass
class PrefgenConf:
    source: str = MISSING
    generator: str = MISSING
    n: int = MISSING
    passage_chars: int = MISSING
    answer_sentences: int = MISSING
    min_chars: int = MISSING
    chat: str = MISSING
    instruction: Sampling = MISSING
    answer: Sampling = MISSING
    device: str = MISSING


def content_words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if len(w) >= 3 and w not in STOPWORDS}


def passage_of(document: str, limit: int) -> str:
    """The document's opening, cut at the last sentence end within `limit` characters (or at the limit)."""
    text = " ".join(document.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[: end + 1] if end > limit // 3 else cut


def extract_answer(passage: str, instruction: str, sentences: int = 2) -> tuple[str, int]:
    """(the passage's run of `sentences` sentences sharing the most content words with the instruction,
    verbatim; that overlap). Ties go to the earliest run."""
    parts = [s for s in _SENTENCE.split(passage) if s.strip()] or [passage]
    wanted = content_words(instruction)
    best, best_overlap = parts[0:sentences], -1
    for i in range(len(parts)):
        run = parts[i : i + sentences]
        overlap = len(wanted & content_words(" ".join(run)))
        if overlap > best_overlap:
            best, best_overlap = run, overlap
    return " ".join(best).strip(), max(best_overlap, 0)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def drop_reason(instruction: str, chosen: str, overlap: int, rejected: str, seen: set[str], min_chars: int) -> str | None:
    """Which filter drops this candidate, or None to keep it (then `seen` remembers it)."""
    if min(len(instruction.strip()), len(chosen.strip()), len(rejected.strip())) < min_chars:
        return "short"
    if overlap == 0:
        return "unsupported"
    if _norm(chosen) == _norm(rejected):
        return "identical"
    keys = ("instruction:" + _norm(instruction), "chosen:" + _norm(chosen))
    if any(k in seen for k in keys):
        return "duplicate"
    seen.update(keys)
    return None


def documents(source: str):
    """Texts from a prepared domain's train split, a .txt file (paragraphs) or a .jsonl file (`text`)."""
    path = Path(source).expanduser()
    if not path.exists():
        if "/" in source or "." in source:
            raise UserError(f"source={source}: no such file (give a prepared domain name, a .txt or a .jsonl file)")
        yield from prepare.iter_documents(source, "train")
        return
    if path.suffix == ".txt":
        yield from (p for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")) if p.strip())
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"source={source}: line {number} is not JSON: fix or remove it") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise UserError(f"source={source}: line {number} has no string `text` field")
                yield row["text"]
    else:
        raise UserError(f"source={source}: give a .txt or .jsonl file, or a prepared domain name")


def make_pairs(model, tokenizer, passages: list[str], cfg, dev) -> tuple[list[dict], Counter]:
    """(kept pairs in TRL's standard format, candidates dropped per filter)."""
    asks = [chat_prompt(tokenizer, INSTRUCTION_PROMPT.format(passage=p), cfg.chat) for p in passages]
    instructions = generate(model, tokenizer, asks, Sampling(**cfg.instruction), dev, progress="instructions")
    extracted = [extract_answer(p, q, cfg.answer_sentences) for p, q in zip(passages, instructions)]
    questions = [chat_prompt(tokenizer, q, cfg.chat) for q in instructions]
    rejected = generate(model, tokenizer, questions, Sampling(**cfg.answer), dev, progress="answers")
    kept, dropped, seen = [], Counter(), set()
    for q, (chosen, overlap), r in zip(instructions, extracted, rejected):
        why = drop_reason(q, chosen, overlap, r, seen, cfg.min_chars)
        if why:
            dropped[why] += 1
        else:
            kept.append({"prompt": q, "chosen": chosen, "rejected": r})
    return kept, dropped


def main(cfg) -> dict:
    dev = device(cfg.device)
    model, tokenizer = load_model(cfg.generator, "generator", dev)
    passages = []
    for doc in documents(str(cfg.source)):
        passage = passage_of(doc, cfg.passage_chars)
        if len(passage) >= 2 * cfg.min_chars:
            passages.append(passage)
        if len(passages) == cfg.n:
            break
    if not passages:
        raise UserError(f"source={cfg.source} has no passage of at least {2 * cfg.min_chars} characters")
    kept, dropped = make_pairs(model, tokenizer, passages, cfg, dev)
    out = output_dir()
    path = out / "preferences.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    tmp.replace(path)
    report = {"source": str(cfg.source), "generator": str(cfg.generator), "passages": len(passages),
              "kept": len(kept), "dropped": dict(sorted(dropped.items())), "path": str(path)}
    (out / "prefgen.json").write_text(json.dumps(report, indent=2) + "\n")
    print("---")
    print(f"passages: {len(passages)}\nkept: {len(kept)}")
    for why in ("short", "unsupported", "identical", "duplicate"):
        print(f"dropped_{why}: {dropped[why]}")
    print(f"preferences: {path}\n(train on it: python train.py +experiment=dpo dpo.dataset={path})")
    return report


if __name__ == "__main__":
    hydra_tool("prefgen", main, PrefgenConf)
