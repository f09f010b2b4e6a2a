"""prepare.py: the fixed ground truth of autolab. No experiment may change this file.

It holds the constants every run shares, builds the two embedded corpora (English prose and Python
code, both taken from the Python standard library that every install has), trains the BPE tokenizer
(rustbpe to train, tiktoken to use, saved as text), tokenizes every domain once into token shards
that training memory-maps, and owns the validation data and `evaluate_bpb`.

    python prepare.py                                   # embedded corpora, tokenizer, token shards (about 30 s)
    python prepare.py --sources                         # + the installed packages' sources: the GPU default
    python prepare.py --dataset karpathy/climbmix-400b-shuffle --name web --max-bytes 5e9
    python prepare.py --dataset ./my_docs.jsonl --name mydocs   # local JSONL / Parquet works the same

The tokenizer is trained once and kept: a dataset added later is tokenized with it, so results
measured before stay comparable (`--new-tokenizer` trains another version; every result carries the
hash of the one it used). A dataset streams in bounded memory with a progress bar, and a run that
was interrupted continues after its last written shard when started again with the same arguments.

Besides the text domains it writes an embedded preference set (`preferences`: prompt, chosen,
rejected, kind; the rejected answers show behaviours alignment trains away) and a `chat` domain of
its training pairs as plain text, for a supervised warm start before DPO; and a verifiable task
(`tasks`: prompt, answer, kind), prose phrases to repeat, whose answers a function checks (GRPO).

Everything lands in the cache folder ($AUTOLAB_CACHE, default ~/.cache/autolab):
    data/<domain>/{train,val}-NNNNN.parquet   one `id` and one `text` column, one row per document
    data/<domain>/manifest.json               document and byte counts, content hash of each split
    data/<domain>/tokens/<tokenizer hash>/    {train,val}-NNNNN.npy token shards + tokens.json
    tokenizer/tiktoken.bpe                    tiktoken's ranks format: base64(token bytes) rank
    tokenizer/tiktoken.json                   split pattern and special tokens

This file imports nothing from autolab; autolab imports from it.
"""

from __future__ import annotations

import argparse
import ast
import base64
import functools
import hashlib
import itertools
import json
import math
import os
import re
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Constants: the fixed setting every experiment is compared under.
MAX_SEQ_LEN = 2048  # context length of the default model and of evaluation
TIME_BUDGET = 300  # seconds of training per run (compilation and warm-up steps excluded)
VOCAB_SIZE = 8192  # tokenizer vocabulary, special tokens included
EVAL_BYTES = 500_000  # validation text scored per domain: whole documents, up to this many bytes
VAL_PER_MILLE = 100  # a document is in validation when its id hashes below this (10%)
DOMAINS = ("prose", "code")  # the embedded corpora: base domain, new domain
SPECIAL_TOKENS = (  # the first one starts every document; the rest are the chat template's
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
)
PREFERENCES = "preferences"  # the embedded preference set's folder under data/
CHAT = "chat"  # its training pairs as text documents: "prompt\nresponse"
TASKS = "tasks"  # the embedded verifiable task's folder under data/ (GRPO's prompts and answers)
TASK_PROMPT = "Repeat: {}\n"  # a copy task's prompt, around the words to repeat
REJECTED_PREAMBLES = ("Sure! Here's", "Great question!", "Absolutely! Here is")  # sycophancy markers
SHARD_BYTES = 64 * 2**20  # text per Parquet shard
TOKENIZER_TRAIN_BYTES = 32 * 2**20  # text per domain fed to the tokenizer trainer, at most


class PrepareError(Exception):
    """A problem the user can fix; the message is one line that says how."""


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOLAB_CACHE", Path.home() / ".cache" / "autolab")).expanduser()


def data_dir(domain: str) -> Path:
    return cache_dir() / "data" / domain


def tokenizer_dir() -> Path:
    return cache_dir() / "tokenizer"


# ---------------------------------------------------------------------------------------------
# The embedded corpora: real human-written text that exists wherever Python is installed.


def _stdlib_sources() -> list[Path]:
    """The standard library's own modules, sorted, without tests, IDLE or installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _docstring_spans(tree: ast.AST) -> Iterator[tuple[ast.Expr, list[ast.stmt]]]:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = body[0] if body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            yield first, body


def _split_module(source: str) -> tuple[str, str]:
    """(prose, code): the module's docstrings joined as prose, and its source without them."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    prose, drop, stubs = [], set(), {}
    for expr, body in _docstring_spans(tree):
        text = ast.get_docstring(ast.Module(body=[expr], type_ignores=[]), clean=True) or ""
        if len(text.split()) >= 8:  # one-line "Return x." docstrings are not prose
            prose.append(text.strip())
        drop.update(range(expr.lineno - 1, expr.end_lineno))
        if len(body) == 1:  # keep the block valid: a lone docstring becomes `...`
            stubs[expr.lineno - 1] = " " * expr.col_offset + "...\n"
    code = "".join(stubs.get(i, line) for i, line in enumerate(lines) if i not in drop or i in stubs)
    return "\n\n".join(prose), code


def _topic_documents() -> Iterator[tuple[str, str]]:
    """The language reference's topics (what `help('if')` shows), one document per section."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        sections = re.split(r"\n(?=[^\n]+\n\*{3,}\n)", topics[name])  # reST section titles
        for i, text in enumerate(sections):
            if len(text.strip()) > 200:
                yield f"topic/{name}/{i}", text.strip() + "\n"


@functools.cache
def _stdlib_split() -> tuple[tuple[str, str, str], ...]:
    """(id, prose, code) of every standard-library module, parsed once a process: four of prepare.py's
    sets read them (prose, code, the preference pairs, the tasks), and parsing is most of their cost."""
    root = Path(sysconfig.get_paths()["stdlib"])
    split = []
    for path in _stdlib_sources():
        try:
            split.append((str(path.relative_to(root)), *_split_module(path.read_text(encoding="utf-8"))))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
    return tuple(split)


def embedded_documents(domain: str) -> Iterator[tuple[str, str]]:
    """Documents of an embedded domain as (id, text), in a fixed order."""
    if domain not in DOMAINS:
        raise PrepareError(f"unknown embedded domain {domain!r}: choose one of {DOMAINS}")
    if domain == "prose":
        yield from _topic_documents()
    for doc_id, prose, code in _stdlib_split():
        text = prose if domain == "prose" else code
        if len(text) > 200:
            yield doc_id, text.rstrip() + "\n"


SOURCES = "sources"  # third-party code installed on this machine: the real corpus a GPU run needs
SOURCE_SUFFIXES = (".py", ".pyx", ".pxd", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".cuh")
PIECE_BYTES = 4096  # source files are cut at line ends into pieces of at most this many bytes


def source_documents() -> Iterator[tuple[str, str]]:
    """The Python and C/C++ sources of the installed packages (site-packages), every file cut at
    line ends into pieces of at most PIECE_BYTES (a row of the default model holds several), with
    ids `path#k` so that a file's pieces share its split. Files are visited in an order fixed by a
    hash of their path, so the validation text samples many packages. The content depends on what
    is installed: the manifest's hashes identify it, as they do the stdlib corpora."""
    roots = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    files = {}
    for root in map(Path, roots):
        for path in root.rglob("*"):
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and not path.is_symlink():
                files[str(path.relative_to(root))] = path
    for name in sorted(files, key=lambda n: hashlib.sha256(n.encode()).digest()):
        try:
            text = files[name].read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for k, piece in enumerate(_pieces(text)):
            if piece.strip():
                yield f"{name}#{k}", piece


def write_sources(max_bytes: int | None = None) -> dict:
    """The `sources` domain: every piece of a file in the split of its file."""
    return write_domain(SOURCES, source_documents(), split_key=lambda i: i.rsplit("#", 1)[0], max_bytes=max_bytes,
                        progress=True)


def _pieces(text: str, limit: int = PIECE_BYTES) -> Iterator[str]:
    """Consecutive pieces of whole lines, each at most `limit` UTF-8 bytes (a longer line is cut)."""
    piece, size = [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if size + n > limit and piece:
            yield "".join(piece)
            piece, size = [], 0
        while n > limit:  # one line longer than a piece
            head = line.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
            yield head
            line = line[len(head):]
            n = len(line.encode("utf-8"))
        piece.append(line)
        size += n
    if piece:
        yield "".join(piece)


def hub_documents(
    dataset: str, *, split: str = "train", text_column: str = "text", max_docs: int | None = None
) -> Iterator[tuple[str, str]]:
    """Documents from a Hugging Face dataset id (streamed) or local .jsonl/.json/.parquet files.
    A source that cannot be read (bad JSON, not UTF-8, a damaged Parquet file, an empty file, an
    unreachable hub) is one PrepareError naming it."""
    import datasets

    datasets.disable_progress_bars()  # prepare.py shows its own bar, in bytes
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as one line, below
    local = Path(dataset).expanduser()
    if local.exists():
        files = sorted(local.rglob("*")) if local.is_dir() else [local]
        files = [f for f in files if f.suffix in (".jsonl", ".json", ".parquet")]
        if not files:
            raise PrepareError(f"{local} holds no .jsonl, .json or .parquet files")
    i = 0
    try:
        if local.exists():
            builder = "parquet" if files[0].suffix == ".parquet" else "json"
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)
        else:
            ds = datasets.load_dataset(dataset, split=split, streaming=True)
        for i, row in enumerate(ds):
            if max_docs is not None and i >= max_docs:
                break
            if text_column not in row:
                raise PrepareError(f"{dataset} has no column {text_column!r} (it has {sorted(row)}): pass --text-column")
            text = row[text_column]
            if isinstance(text, str) and text.strip():
                yield f"{dataset}/{i}", text
    except PrepareError:
        raise
    except Exception as e:  # datasets and pyarrow raise many types for a source that is not what it says
        why = (str(e).strip().splitlines() or [""])[0][:160]
        raise PrepareError(f"{dataset}: document {i} could not be read ({type(e).__name__}: {why}): "
                           "fix or remove the file") from None


# ---------------------------------------------------------------------------------------------
# The embedded preference set: (prompt, chosen, rejected) built from the prose corpus.

_VERBOSE = (
    " Basically, to put it another way, this is really very important, and it is worth saying again.",
    " In other words, as was already said above, this matters a great deal, and you should know it.",
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _rejected(chosen: str, kind: str, h: int) -> str:
    if kind == "sycophantic":
        return f"{REJECTED_PREAMBLES[h % len(REJECTED_PREAMBLES)]} what you asked for: {chosen}"
    if kind == "verbose":
        return chosen + _VERBOSE[h % len(_VERBOSE)]
    rude = chosen.replace(" the ", " the stupid ", 1) if " the " in chosen else "Obviously, " + chosen
    return rude[:-1] + ", every single time." if rude.endswith(".") else rude + ", every single time."


def preference_examples() -> Iterator[tuple[str, dict]]:
    """One pair per prose paragraph of two or more sentences: the prompt is its first sentence, the
    chosen answer the next one as written, the rejected answer the same with one unwanted behaviour
    (sycophantic preamble, verbose padding, or rude intensifiers), chosen by a hash of the pair's id."""
    kinds = ("sycophantic", "verbose", "rude")
    for doc_id, text in embedded_documents("prose"):
        for p, paragraph in enumerate(text.split("\n\n")):
            sentences = _SENTENCE.split(" ".join(paragraph.split()))
            if len(sentences) < 2 or not all(20 <= len(x) <= 240 for x in sentences[:2]):
                continue
            pair_id = f"{doc_id}#{p}"
            h = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:4], "little")
            kind = kinds[h % 3]
            prompt, chosen = sentences[0] + "\n", sentences[1]
            yield pair_id, {"prompt": prompt, "chosen": chosen, "rejected": _rejected(chosen, kind, h // 3), "kind": kind}


def write_preferences() -> dict:
    """The preference set and the `chat` text domain, split by a hash of the prompt's text, so a
    held-out prompt (the same sentence recurs across modules) never reaches `chat`/train."""
    pairs = list(preference_examples())
    prompts = {pair_id: ex["prompt"] for pair_id, ex in pairs}
    docs = [(f"{i}/chosen", ex["prompt"] + ex["chosen"]) for i, ex in pairs]
    docs += [(f"{i}/rejected", ex["prompt"] + ex["rejected"]) for i, ex in pairs]
    return {
        "chat": write_domain(CHAT, docs, split_key=lambda doc_id: prompts[doc_id.rsplit("/", 1)[0]]),
        "preferences": write_domain(PREFERENCES, pairs, split_key=prompts.__getitem__),
    }


def load_preferences(split: str) -> list[dict]:
    return _load_records(PREFERENCES, split, "preference pairs")


# ---------------------------------------------------------------------------------------------
# The embedded verifiable task: prompts whose answers a function checks, the reward GRPO climbs.

_PLAIN_WORD = re.compile(r"[A-Za-z][a-z'-]*,?")


def task_examples() -> Iterator[tuple[str, dict]]:
    """One copy task per distinct opening of a prose paragraph: the prompt asks to repeat its first 3 to
    6 words (plain words only, the count fixed by a hash of the paragraph's id); the answer is those
    words. `autolab.rewards.copy_match` scores a completion against it (1.0: an exact copy)."""
    seen = set()
    for doc_id, text in embedded_documents("prose"):
        for p, paragraph in enumerate(text.split("\n\n")):
            h = int.from_bytes(hashlib.sha256(f"{doc_id}#{p}".encode()).digest()[:4], "little")
            words = paragraph.split()[: 3 + h % 4]
            phrase = " ".join(words).rstrip(",")
            if len(words) < 3 or not all(_PLAIN_WORD.fullmatch(w) for w in words) or phrase in seen:
                continue
            seen.add(phrase)
            yield f"{doc_id}#{p}", {"prompt": TASK_PROMPT.format(phrase), "answer": phrase, "kind": "copy"}


def write_tasks() -> dict:
    """The task set, split by a hash of the answer, so a held-out phrase is never trained on."""
    examples = list(task_examples())
    answers = {task_id: ex["answer"] for task_id, ex in examples}
    return write_domain(TASKS, examples, split_key=answers.__getitem__)


def load_tasks(split: str) -> list[dict]:
    return _load_records(TASKS, split, "tasks")


def _load_records(domain: str, split: str, what: str) -> list[dict]:
    """Every row of a prepared record set's split (the preference pairs, the tasks) as a dict."""
    import pyarrow.parquet as pq

    shards = sorted(data_dir(domain).glob(f"{split}-*.parquet"))
    if not shards:
        raise PrepareError(f"no prepared {what} in {data_dir(domain)}: run `python prepare.py`")
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


# ---------------------------------------------------------------------------------------------
# Shards: Parquet with a `text` column, split into train/val by a hash of the document id.


def split_of(doc_id: str) -> str:
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:4], "little")
    return "val" if h % 1000 < VAL_PER_MILLE else "train"


def write_domain(domain: str, documents: Iterable[tuple[str, str | dict]], split_key=None, *,
                 max_bytes: int | None = None, resume: str | None = None, progress: bool = False) -> dict:
    """Write a domain's Parquet shards and its manifest, in bounded memory, atomically (a temporary
    folder, then a rename). Documents are texts (a `text` column) or records of string fields (one
    column each); the split follows a hash of `split_key(id)` (default: the id itself). Both splits
    are flushed together every SHARD_BYTES of text; with `resume` (a description of the source),
    an interrupted run of the same source continues after the last flushed shard instead of over.
    `max_bytes` stops after that much text. The content hash of a split is the sha256 of its
    documents' sha256 digests, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    final = data_dir(domain)
    tmp = final.with_name(final.name + ".tmp")
    state_file = tmp / "progress.json"
    state = json.loads(state_file.read_text()) if resume and state_file.exists() else {}
    if state.get("source") != resume or not resume:
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir(parents=True)
        state = {"source": resume, "documents": 0}
    counts = {s: {"documents": 0, "bytes": 0, "shards": 0, "sha256": hashlib.sha256()} for s in ("train", "val")}
    for split, c in counts.items():  # what an interrupted run already wrote: counted and hashed again
        for shard in sorted(tmp.glob(f"{split}-*.parquet")):
            if c["shards"] >= state.get("shards", {}).get(split, 0):  # written after the last progress note
                shard.unlink()
                continue
            for record in pq.read_table(shard).drop(["id"]).to_pylist():
                _count(c, "\x00".join(record.values()).encode("utf-8"))
            c["shards"] += 1
    if state["documents"]:
        print(f"{domain}: continuing after {state['documents']:,} documents already written", flush=True)
    buffers = {"train": ([], []), "val": ([], [])}  # ids, records
    pending = 0
    bar = _progress(progress, f"{domain}", total=max_bytes, initial=sum(c["bytes"] for c in counts.values()))

    def flush() -> None:
        for split, (ids, records) in buffers.items():
            if not ids:
                continue
            c = counts[split]
            table = pa.table({"id": ids, **{k: [r[k] for r in records] for k in records[0]}})
            pq.write_table(table, tmp / f"{split}-{c['shards']:05d}.parquet.tmp")
            (tmp / f"{split}-{c['shards']:05d}.parquet.tmp").rename(tmp / f"{split}-{c['shards']:05d}.parquet")
            c["shards"] += 1
            ids.clear()
            records.clear()
        state.update(documents=consumed, shards={split: c["shards"] for split, c in counts.items()})
        _atomic_write(state_file, json.dumps(state) + "\n")  # after the shards: a kill in between re-reads them

    consumed = state["documents"]
    try:
        for doc_id, doc in itertools.islice(documents, consumed, None):
            if max_bytes is not None and sum(c["bytes"] for c in counts.values()) >= max_bytes:
                break
            record = doc if isinstance(doc, dict) else {"text": doc}
            split = split_of(split_key(doc_id) if split_key else doc_id)
            data = "\x00".join(record.values()).encode("utf-8")
            _count(counts[split], data)
            buffers[split][0].append(doc_id)
            buffers[split][1].append(record)
            consumed += 1
            pending += len(data)
            bar.update(len(data))
            if pending >= SHARD_BYTES:
                flush()
                pending = 0
        flush()
    finally:
        bar.close()  # ends its line, so an error after it starts a line of its own
    manifest = {"domain": domain, "splits": {}}
    for split, c in counts.items():
        if c["documents"] == 0:
            raise PrepareError(f"domain {domain!r} got no {split} documents: give it more text")
        manifest["splits"][split] = {**c, "sha256": c["sha256"].hexdigest()}
    state_file.unlink()
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if final.exists():
        _rmtree(final)
    tmp.rename(final)
    return manifest


def _count(c: dict, data: bytes) -> None:
    c["documents"] += 1
    c["bytes"] += len(data)
    c["sha256"].update(hashlib.sha256(data).digest())


def _progress(enabled: bool, desc: str, total: int | None = None, initial: int = 0, unit: str = "B"):
    """A tqdm bar on stderr (bytes or tokens), or a stand-in that does nothing."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, disable=not enabled,
                mininterval=1.0)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def iter_documents(domain: str, split: str, batch_rows: int = 1024) -> Iterator[str]:
    """The documents of one split, in their pinned order, streamed shard by shard (bounded memory).
    Clear errors for missing, corrupt or empty shards."""
    import pyarrow.parquet as pq

    folder = data_dir(domain)
    shards = sorted(folder.glob(f"{split}-*.parquet"))
    if not shards:
        raise PrepareError(
            f"no prepared {split} data for domain {domain!r} in {folder}: run `{_command(domain)}`"
        )
    for shard in shards:
        rows = 0
        try:
            batches = pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=["text"])
            for batch in batches:
                rows += batch.num_rows
                yield from batch.column(0).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise PrepareError(
                f"shard {shard} is corrupt ({type(e).__name__}): delete it and run `{_command(domain)}`"
            ) from None
        if not rows:
            raise PrepareError(f"shard {shard} is empty: delete it and run `{_command(domain)}`")


def load_documents(domain: str, split: str) -> list[str]:
    """All documents of one split, in their pinned order (in memory: for small domains)."""
    return list(iter_documents(domain, split))


def val_documents(domain: str, max_bytes: int = EVAL_BYTES) -> list[str]:
    """The fixed evaluation text: whole validation documents in pinned order, up to max_bytes."""
    docs, total = [], 0
    for text in iter_documents(domain, "val"):
        if docs and total + len(text.encode("utf-8")) > max_bytes:
            break
        docs.append(text)
        total += len(text.encode("utf-8"))
    return docs


# ---------------------------------------------------------------------------------------------
# Tokenizer: BPE trained by rustbpe, used through tiktoken, stored as text (never a pickle).


class Tokenizer:
    """A tiktoken Encoding with our special tokens; documents start with `<|bos|>`."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str, special: dict[str, int]):
        import tiktoken

        self.pattern = pattern
        self.special = dict(special)
        self.enc = tiktoken.Encoding(
            name="autolab", pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=special
        )
        self.bos_id = special[SPECIAL_TOKENS[0]]

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        """Text to ids; text that looks like a special token is encoded as ordinary text."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self) -> list[bytes]:
        """The bytes of every id; special tokens have none (they are not text)."""
        special_ids = set(self.special.values())
        return [
            b"" if i in special_ids else self.enc.decode_single_token_bytes(i)
            for i in range(self.vocab_size)
        ]

    def files(self) -> dict[str, str]:
        """The tokenizer as text: tiktoken's ranks format (base64(token bytes) rank) and its rules."""
        ranks = sorted(self.enc._mergeable_ranks.items(), key=lambda kv: kv[1])
        meta = {"pattern": self.pattern, "special_tokens": self.special}
        return {
            "tiktoken.bpe": "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in ranks),
            "tiktoken.json": json.dumps(meta, indent=2) + "\n",
        }

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.files().items():
            _atomic_write(folder / name, text)

    @classmethod
    def load(cls, folder: Path | str | None = None) -> "Tokenizer":
        folder = Path(folder) if folder is not None else tokenizer_dir()
        bpe, meta = folder / "tiktoken.bpe", folder / "tiktoken.json"
        if not bpe.exists() or not meta.exists():
            raise PrepareError(f"no tokenizer in {folder}: run `python prepare.py`")
        info = json.loads(meta.read_text())
        return cls(cls.read_ranks(bpe), info["pattern"], info["special_tokens"])

    @staticmethod
    def read_ranks(path: Path | str) -> dict[bytes, int]:
        """The ranks file as it is on disk now: one `base64(token bytes) rank` line per token.
        Not tiktoken.load.load_tiktoken_bpe: it keeps a copy of every file it reads in a temp
        folder keyed by the file's path, and a new tokenizer saved at the same path later (a
        `--new-tokenizer`, a checkpoint rewritten in place) would never be read."""
        ranks = {}
        for number, line in enumerate(Path(path).read_text(encoding="ascii").splitlines(), 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise PrepareError(f"{path}, line {number}: not `base64 rank`; the tokenizer file is damaged: "
                                   "run `python prepare.py --new-tokenizer`") from None
        return ranks


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def train_tokenizer(domains: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train byte-level BPE with rustbpe on the train splits (pattern: rustbpe's GPT-4 default)."""
    import rustbpe

    def texts() -> Iterator[str]:
        for domain in domains:
            used = 0
            for text in iter_documents(domain, "train"):
                if used >= TOKENIZER_TRAIN_BYTES:
                    break
                used += len(text)
                yield text

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), vocab_size - len(SPECIAL_TOKENS))
    ranks = {bytes(tok): rank for tok, rank in bpe.get_mergeable_ranks()}
    special = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return Tokenizer(ranks, bpe.get_pattern(), special)


def tokenizer_hash(tokenizer) -> str:
    """12 hex digits that identify a tokenizer: ours by its text files, a Hugging Face one by its
    serialised form (vocabulary, merges, rules, special tokens). Results, token shards, checkpoints
    and resumes carry it, so nothing made with one tokenizer is read with another."""
    if isinstance(tokenizer, Tokenizer):
        text = "".join(tokenizer.files().values())
    elif hasattr(tokenizer, "backend_tokenizer"):  # a fast (Rust) tokenizer
        text = tokenizer.backend_tokenizer.to_str() + json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items())) + json.dumps(tokenizer.special_tokens_map, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def vocab_size(tokenizer) -> int:
    return tokenizer.vocab_size if isinstance(tokenizer, Tokenizer) else len(tokenizer)


# ---------------------------------------------------------------------------------------------
# Token shards: each domain tokenized once per tokenizer, read by training as memory maps.
#   data/<domain>/tokens/<tokenizer hash>/{train,val}-NNNNN.npy   [bos] doc [bos] doc ..., uint16
#   data/<domain>/tokens/<tokenizer hash>/tokens.json             counts, dtype, source text hashes

TOKEN_SHARD_TOKENS = 2**26  # tokens per .npy shard (128 MB as uint16): what a writer holds in memory


def tokens_dir(domain: str, tokenizer) -> Path:
    return data_dir(domain) / "tokens" / tokenizer_hash(tokenizer)


def write_tokens(domain: str, tokenizer, progress: bool = False) -> dict:
    """Tokenize a domain's documents with `tokenizer` into token shards, in bounded memory and
    atomically; nothing is done when shards of the same text and tokenizer exist. Returns the manifest."""
    import numpy as np

    source = manifest(domain)
    final = tokens_dir(domain, tokenizer)
    sources = {split: m["sha256"] for split, m in source["splits"].items()}
    done = final / "tokens.json"
    if done.exists() and json.loads(done.read_text()).get("source") == sources:
        return json.loads(done.read_text())
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    tmp.mkdir(parents=True)
    encode_batch, bos = _encoder(tokenizer)
    dtype = np.uint16 if vocab_size(tokenizer) <= 2**16 else np.uint32
    out = {"domain": domain, "tokenizer": tokenizer_hash(tokenizer), "dtype": np.dtype(dtype).name,
                "source": sources, "splits": {}}
    total = sum(m["bytes"] for m in source["splits"].values())
    bar = _progress(progress, f"{domain}: tokens", total=total)
    for split in ("train", "val"):
        shards, parts, held, tokens, docs = [], [], 0, 0, 0

        def flush() -> None:
            if parts:
                name = f"{split}-{len(shards):05d}.npy"
                np.save(tmp / name, np.concatenate(parts))
                shards.append(name)
                parts.clear()

        batch: list[str] = []
        for text in itertools.chain(iter_documents(domain, split), [None]):
            if text is not None:
                batch.append(text)
                if len(batch) < 256:
                    continue
            for ids in encode_batch(batch):
                parts.append(np.asarray([bos, *ids], dtype=dtype))
                held += len(ids) + 1
            docs += len(batch)
            bar.update(sum(len(t.encode("utf-8")) for t in batch))
            batch = []
            if held >= TOKEN_SHARD_TOKENS:
                tokens += held
                held = 0
                flush()
        tokens += held
        flush()
        out["splits"][split] = {"documents": docs, "tokens": tokens, "shards": shards}
    bar.close()
    (tmp / "tokens.json").write_text(json.dumps(out, indent=2) + "\n")
    if final.exists():
        _rmtree(final)
    tmp.rename(final)
    return out


def load_tokens(domain: str, split: str, tokenizer) -> list:
    """A split's token shards as read-only memory maps (numpy): nothing is read until it is used.
    Refuses shards made from other text or with another tokenizer."""
    import numpy as np

    folder = tokens_dir(domain, tokenizer)
    try:
        made = json.loads((folder / "tokens.json").read_text())
    except (OSError, ValueError):
        raise PrepareError(
            f"domain {domain!r} has no token shards for tokenizer {tokenizer_hash(tokenizer)}: run `{_command(domain)}`"
        ) from None
    if made.get("tokenizer") != tokenizer_hash(tokenizer):
        raise PrepareError(f"{folder} holds tokens of tokenizer {made.get('tokenizer')}, not "
                           f"{tokenizer_hash(tokenizer)}: delete it and run `{_command(domain)}`")
    current = {s: m["sha256"] for s, m in manifest(domain)["splits"].items()}
    if made["source"] != current:
        raise PrepareError(f"the token shards in {folder} were made from other text than data/{domain} now "
                           f"holds: run `{_command(domain)}` to tokenize it again")
    shards = []
    for name in made["splits"][split]["shards"]:
        try:
            shards.append(np.load(folder / name, mmap_mode="r"))
        except (OSError, ValueError) as e:
            raise PrepareError(f"token shard {folder / name} is damaged ({type(e).__name__}): delete "
                               f"{folder} and run `{_command(domain)}`") from None
    return shards


def _command(domain: str) -> str:
    """The command that prepares a domain."""
    if domain == SOURCES:
        return "python prepare.py --sources"
    if domain in (*DOMAINS, CHAT, PREFERENCES, TASKS):
        return "python prepare.py"
    return f"python prepare.py --dataset <your dataset> --name {domain}"


def manifest(domain: str) -> dict:
    """What prepare.py wrote for a domain: documents, bytes and content hash of each split."""
    path = data_dir(domain) / "manifest.json"
    if not path.exists():
        raise PrepareError(f"no prepared data for domain {domain!r} in {data_dir(domain)}: run `{_command(domain)}`")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Evaluation: bits per byte, comparable across tokenizers and models.


def _encoder(tokenizer) -> tuple:
    """(encode_batch, bos_id) for our Tokenizer or any Hugging Face tokenizer."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode_batch, tokenizer.bos_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise PrepareError("the tokenizer has neither a BOS nor an EOS token to start documents with")
    return (lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]), bos


def document_stream(tokenizer, texts: list[str]) -> list[int]:
    """Documents as one token stream: [bos] + tokens of each document, in order."""
    encode_batch, bos = _encoder(tokenizer)
    stream: list[int] = []
    for ids in encode_batch(texts):
        stream.append(bos)
        stream.extend(ids)
    return stream


def evaluate_bpb(
    model,
    tokenizer,
    texts: list[str] | str = "prose",
    *,
    seq_len: int = MAX_SEQ_LEN,
    batch_size: int = 8,
    device=None,
) -> float:
    """Bits per byte of `model` on `texts` (or on a domain's fixed validation text, by name).

    bpb = sum of next-token NLL in nats / (ln 2 * UTF-8 bytes of the texts). The stream is cut into
    rows of seq_len + 1 tokens that overlap by one, so every token but the first is predicted once;
    predictions of `<|bos|>` are not scored (they are not text), so the tokens scored are exactly the
    texts' tokens and the byte count is exactly their bytes, whatever the tokenizer.
    The model is anything that maps ids [B, T] to an object with `.logits` [B, T, V].
    """
    import torch
    import torch.nn.functional as F

    if isinstance(texts, str):
        texts = val_documents(texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0:
        raise PrepareError("nothing to evaluate: the texts are empty")
    _, bos = _encoder(tokenizer)
    stream = torch.tensor(document_stream(tokenizer, texts), dtype=torch.long)
    n_rows = math.ceil((len(stream) - 1) / seq_len)
    rows = torch.full((n_rows, seq_len + 1), -1, dtype=torch.long)
    for r in range(n_rows):
        chunk = stream[r * seq_len : r * seq_len + seq_len + 1]
        rows[r, : len(chunk)] = chunk
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, n_rows, batch_size):
            batch = rows[start : start + batch_size].to(device)
            x, y = batch[:, :-1].clamp(min=0), batch[:, 1:]
            y = y.masked_fill(y == bos, -1)
            logits = model(input_ids=x).logits.float()
            nll += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum"
            ).double()
    model.train(was_training)
    return nll.item() / (math.log(2) * n_bytes)


def unigram_bpb(tokenizer: Tokenizer, domain: str) -> float:
    """A reference point: bpb of a unigram model (add-one smoothed) fit on the domain's train split
    (counted from its token shards, a chunk at a time; the `<|bos|>` separators are not text)."""
    import numpy as np

    counts = np.ones(tokenizer.vocab_size, dtype=np.int64)
    for shard in load_tokens(domain, "train", tokenizer):
        with open(shard.filename, "rb") as f:  # read, not mapped: mapped pages would count as this process's memory
            f.seek(shard.offset)
            while len(chunk := np.fromfile(f, dtype=shard.dtype, count=TOKEN_SHARD_TOKENS // 4)):
                counts += np.bincount(chunk, minlength=len(counts))
    counts[tokenizer.bos_id] = 1
    logp = np.log(counts / counts.sum())
    texts = val_documents(domain)
    nll = -sum(float(logp[ids].sum()) for ids in tokenizer.encode_batch(texts))
    return nll / (math.log(2) * sum(len(t.encode("utf-8")) for t in texts))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", action="store_true",
                   help=f"add the `{SOURCES}` domain: the Python and C/C++ sources of the installed packages (the GPU default)")
    p.add_argument("--dataset", help="a Hugging Face dataset id, or local .jsonl/.parquet file(s)")
    p.add_argument("--name", help="domain name for --dataset (default: derived from it)")
    p.add_argument("--split", default="train", help="dataset split to stream (default: train)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")
    p.add_argument("--max-bytes", type=float, default=None, help="stop after this much text, e.g. 2e9")
    p.add_argument("--new-tokenizer", action="store_true",
                   help="train a new tokenizer version (on the embedded domains and --dataset) instead of keeping the one in use")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        domains = list(DOMAINS)
        adding = bool(args.dataset or args.sources)  # the embedded corpora, already made, are kept as they are
        if adding and all((data_dir(d) / "manifest.json").exists() for d in (*DOMAINS, CHAT, PREFERENCES, TASKS)):
            print(f"{', '.join((*DOMAINS, CHAT, PREFERENCES, TASKS))}: kept (a plain `python prepare.py` makes them again)")
        else:
            for domain in DOMAINS:
                _report(domain, write_domain(domain, embedded_documents(domain)))
            for name, m in write_preferences().items():
                _report(name, m)
            _report(TASKS, write_tasks())
        if args.sources:
            _report(SOURCES, write_sources(int(args.max_bytes) if args.max_bytes else None))
            domains.append(SOURCES)
        if args.dataset:
            name = args.name or re.sub(r"[^a-z0-9]+", "_", Path(args.dataset).stem.lower()).strip("_")
            docs = hub_documents(
                args.dataset, split=args.split, text_column=args.text_column, max_docs=args.max_docs
            )
            source = json.dumps([args.dataset, args.split, args.text_column, args.max_docs, args.max_bytes])
            max_bytes = int(args.max_bytes) if args.max_bytes else None
            _report(name, write_domain(name, docs, max_bytes=max_bytes, resume=source, progress=True))
            domains.append(name)
        tok = _tokenizer(domains if args.new_tokenizer else list(DOMAINS), new=args.new_tokenizer)
        for domain in [*domains, CHAT]:
            m = write_tokens(domain, tok, progress=domain not in (*DOMAINS, CHAT))
            print(f"{domain}: {m['splits']['train']['tokens']:,} train / {m['splits']['val']['tokens']:,} val "
                  f"tokens ({m['dtype']}) -> {tokens_dir(domain, tok)}")
        for domain in domains:
            print(f"unigram_bpb[{domain}]: {unigram_bpb(tok, domain):.4f}")
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"prepared in {time.time() - t0:.1f}s -> {cache_dir()}")
    return 0


def _tokenizer(domains: list[str], new: bool) -> Tokenizer:
    """The tokenizer in use, trained once and kept: a later dataset is tokenized with it, so earlier
    results stay comparable. `new` trains another version; the previous one moves to tokenizer-<hash>/."""
    folder = tokenizer_dir()
    if (folder / "tiktoken.bpe").exists() and not new:
        tok = Tokenizer.load(folder)
        print(f"tokenizer: kept {tokenizer_hash(tok)} ({tok.vocab_size} tokens; --new-tokenizer trains another)")
        return tok
    tok = train_tokenizer(domains)
    if (folder / "tiktoken.bpe").exists():
        kept = folder.with_name(f"tokenizer-{tokenizer_hash(Tokenizer.load(folder))}")
        if kept.exists():
            _rmtree(kept)
        folder.rename(kept)
        print(f"tokenizer: the previous version moved to {kept}")
    tok.save(folder)
    print(f"tokenizer: trained {tokenizer_hash(tok)} on {', '.join(domains)} ({tok.vocab_size} tokens) -> {folder}")
    return tok


def _report(domain: str, manifest: dict) -> None:
    for split, m in manifest["splits"].items():
        print(
            f"{domain}/{split}: {m['documents']} documents, {m['bytes'] / 1e6:.2f} MB, "
            f"sha256 {m['sha256'][:16]}"
        )


if __name__ == "__main__":
    sys.exit(main())
