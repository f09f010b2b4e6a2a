"""The results ledger as people and agents read it: `python -m autolab.results`.

results.tsv has one row per run and ~45 columns (report.LEDGER_COLUMNS); this prints what a reader
needs, at most 120 characters wide:

    python -m autolab.results                      # the last 20 runs: val_bpb, its gap to the best, noise
    python -m autolab.results --stage cpt --status ok --since 2026-12-06 --all
    python -m autolab.results --best               # the best run of each stage and tokenizer, every fact
    python -m autolab.results --noise              # run-to-run spread of repeated runs
    python -m autolab.results --diff 12 15         # config and code between two runs (numbers or dirs)
    python -m autolab.results --plot progress.png  # val_bpb over the runs, each new best, the running best

Terms, used by every view:
- `#` is a row's position in the ledger (1 = the first row under the header; the file's line minus 1).
  Filters never renumber; `--diff` and `row_ref` take these numbers (negative: from the end).
- Comparable rows: the same stage and tokenizer. The best: the lowest val_bpb among their `ok` rows.
  `vs best` is a row's val_bpb minus the best *other* comparable row's, over the whole ledger (filters
  choose the rows shown, not what they are compared with): positive, behind the best by that much;
  negative, the best, ahead of the runner-up by that much. A bit-for-bit rerun of a row (the same
  overrides, seed included, the same val_bpb) is that row again, never its runner-up.
- Noise: runs of the same code and config (same commit, code.patch, overrides except `seed=`, stage
  and tokenizer; status ok; never rows from before the overrides and patch columns) form a group.
  Groups of two or more give the run-to-run std of val_bpb (sample std), pooled over the groups of a
  stage and tokenizer. A `vs best` smaller in size than
  twice that std is marked `~` (within noise: the row and the best cannot be told apart).
- Malformed rows (a wrong number of cells, a val_bpb that is not a number, a line of another tool)
  are skipped and counted, never fatal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import fnmatch
import math
import os
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from autolab.errors import UserError

WIDTH = 120  # no line of the default view is wider
NOISE_SIGMAS = 2.0  # `~`: |vs best| < NOISE_SIGMAS x the pooled run-to-run std
MISSING = ("", "n/a", "None")  # cells that hold no value (report.format_value writes None as n/a)


@dataclass
class Ledger:
    path: Path
    columns: list[str]
    rows: list[dict]  # the well-formed rows: {column: cell}, plus "row" (its position) and "_bpb" (val_bpb parsed)
    skipped: list[int] = field(default_factory=list)  # positions of malformed rows


def number(text) -> float | None:
    """A cell as a finite float, or None (n/a, empty, nan: no measurement)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read(path: Path | str) -> Ledger:
    """The ledger's rows; a missing file or one that is not a ledger is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no ledger at {path}: run this where train.py ran (ledger=results.tsv there), "
                        "or give --ledger FILE")
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    columns = lines[0].split("\t") if lines else []
    if lines and "val_bpb" not in columns:
        raise UserError(f"{path} is not a results ledger (its first line has no val_bpb column)")
    ledger = Ledger(path, columns, [])
    at = columns.index("val_bpb") if columns else 0
    for i, line in enumerate(lines[1:], start=1):
        cells = line.split("\t")
        value = number(cells[at]) if len(cells) == len(columns) else None
        if len(cells) != len(columns) or (value is None and cells[at] not in MISSING and cells[at].lower() != "nan"):
            if line.strip():
                ledger.skipped.append(i)
            continue
        row = dict(zip(columns, cells))
        row["row"], row["_bpb"] = i, value
        ledger.rows.append(row)
    return ledger


def row_ref(rows: list[dict], ref: str | int) -> dict:
    """The row `ref` names: its number (`12`, `#12`; `-1` is the last row) or its output dir (the last
    row written there: a requeued or resumed run writes several). `rows` are `read(path).rows`, or
    `report.read_ledger(path)` (numbered by position). A bad reference is a UserError saying why."""
    numbered = [(r.get("row", i + 1), r) for i, r in enumerate(rows)]
    text = str(ref).strip()
    if re.fullmatch(r"#?-?\d+", text) and not Path(text).exists():
        n = int(text.lstrip("#"))
        if n < 0:
            if -n > len(numbered):
                raise UserError(f"row {n}: the ledger has only {len(numbered)} rows")
            return numbered[n][1]
        for k, r in numbered:
            if k == n:
                return r
        last = max((k for k, _ in numbered), default=0)
        why = f"it has rows 1-{last}" if n > last or n == 0 else f"row {n} is malformed (skipped)"
        raise UserError(f"no row {n} in the ledger ({why}): `python -m autolab.results` lists the rows")
    folder = Path(text).expanduser()
    matches = [r for _, r in numbered if r.get("output_dir") and _same_dir(r["output_dir"], folder)]
    if not matches:
        raise UserError(f"{ref} is neither a row number nor the output_dir of a row in the ledger: give a "
                        "row number (`python -m autolab.results` lists them) or a run's output dir")
    return matches[-1]


def _same_dir(recorded: str, folder: Path) -> bool:
    recorded_path = Path(recorded)
    if recorded_path == folder:
        return True
    try:
        return recorded_path.resolve() == folder.resolve()
    except OSError:
        return False


# ---- comparisons: the best, the groups of repeated runs, their noise ------------------------------

def bpb(r: dict) -> float | None:
    return r["_bpb"] if "_bpb" in r else number(r.get("val_bpb"))  # read() parsed it once


def comparable(r: dict) -> tuple[str, str]:
    return r.get("stage", ""), r.get("tokenizer", "")


def _measured(r: dict) -> bool:
    return r.get("status") == "ok" and bpb(r) is not None


def without_seed(overrides: str) -> str:
    return " ".join(o for o in overrides.split(" ") if o and not o.lstrip("+~").startswith("seed="))


def recorded(r: dict) -> bool:
    """Whether the row says which config ran: rows from before the `overrides` column do not, in a
    ledger that lacks it or one a newer run padded with empty cells (report.append_row adds missing
    columns; such a row's tokens_per_second is empty too, where a newer row has at least n/a)."""
    return r.get("overrides", "n/a") != "n/a" and r.get("tokens_per_second", "") != ""


def code_known(r: dict) -> bool:
    """Whether the row says which code ran: its commit, and a dirty tree's code.patch hash."""
    return r.get("commit", "none") not in ("", "none") and (r.get("dirty") != "dirty" or bool(r.get("patch")))


def group_key(r: dict) -> tuple | None:
    """What makes runs repeats of one another (None: this row cannot be grouped: not ok, or its config
    or code is not recorded)."""
    if not _measured(r) or not recorded(r) or not code_known(r):
        return None
    return (*comparable(r), r["commit"], r.get("patch", ""), without_seed(r["overrides"]))


@dataclass
class Group:
    key: tuple
    rows: list[dict]

    @property
    def values(self) -> list[float]:
        return [bpb(r) for r in self.rows]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        """Sample std (n - 1)."""
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    @property
    def range(self) -> float:
        return max(self.values) - min(self.values)


@dataclass
class Noise:
    std: float  # pooled over the groups: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))
    groups: list[Group]

    @property
    def runs(self) -> int:
        return sum(len(g.rows) for g in self.groups)

    @property
    def threshold(self) -> float:
        return NOISE_SIGMAS * self.std


def groups(rows: list[dict]) -> list[Group]:
    """Groups of two or more repeated runs, in the order of their first row. A run that reproduced an
    earlier one bit for bit (the same overrides, seed included, and the same val_bpb: a rerun on the
    CPU) is left out: it shows the run is deterministic, not how far val_bpb moves between runs."""
    by_key: dict[tuple, list[dict]] = {}
    seen: set[tuple] = set()
    for r in rows:
        key = group_key(r)
        if key is not None and _outcome(r) not in seen:
            seen.add(_outcome(r))
            by_key.setdefault(key, []).append(r)
    return [Group(k, rs) for k, rs in by_key.items() if len(rs) >= 2]


def _outcome(r: dict) -> tuple | None:
    """What a bit-for-bit rerun shares with its run: the group, the overrides (seed included), val_bpb."""
    key = group_key(r)
    return None if key is None else (key, r["overrides"], r["val_bpb"])


def noise(found: list[Group]) -> dict[tuple[str, str], Noise]:
    """The pooled run-to-run std for each stage and tokenizer that has repeated runs."""
    pooled: dict[tuple[str, str], list[Group]] = {}
    for g in found:
        pooled.setdefault(g.key[:2], []).append(g)
    out = {}
    for key, gs in pooled.items():
        dof = sum(len(g.rows) - 1 for g in gs)
        out[key] = Noise(math.sqrt(sum((len(g.rows) - 1) * g.std ** 2 for g in gs) / dof), gs)
    return out


def bests(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The two lowest-val_bpb ok rows of each stage and tokenizer (best first; earlier wins a tie). A rerun
    that reproduced a row of the pair bit for bit is that run again, not a runner-up."""
    top: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if _measured(r):
            pair = top.setdefault(comparable(r), [])
            if _outcome(r) is not None and any(_outcome(o) == _outcome(r) for o in pair):
                continue
            if len(pair) < 2 or bpb(r) < bpb(pair[1]):
                pair.append(r)
                pair.sort(key=bpb)  # stable: of equal values the earlier row stays first
                del pair[2:]
    return top


def vs_best(r: dict, top: dict) -> float | None:
    """val_bpb minus the best other comparable ok row's (None: not measured, or nothing to compare)."""
    pair = top.get(comparable(r), [])
    others = [o for o in pair if o is not r]
    if not _measured(r) or not others:
        return None
    return bpb(r) - bpb(others[0])


# ---- filters -------------------------------------------------------------------------------------

def _since(text: str):
    """--since: a row number (rows from it on) or an ISO date/time (rows written then or later)."""
    if text.lstrip("#").isdigit():
        n = int(text.lstrip("#"))
        return lambda r: r["row"] >= n
    try:
        start = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text}: give a row number (e.g. 120) or an ISO date/time "
                        "(2026-12-06 or 2026-12-06T14:30)") from None

    def keep(r):
        try:
            t = dt.datetime.fromisoformat(r.get("time", ""))
        except ValueError:
            return False
        if t.tzinfo is None or start.tzinfo is None:  # the ledger writes local time without a zone
            return t.replace(tzinfo=None) >= start.replace(tzinfo=None)
        return t >= start
    return keep


def select(rows: list[dict], args) -> list[dict]:
    """The rows every filter keeps; a filter's value may list several, comma-separated."""
    tests = []
    if args.stage:
        tests.append(lambda r, v=set(args.stage.split(",")): r.get("stage", "") in v)
    if args.status:
        tests.append(lambda r, v=set(args.status.split(",")): r.get("status", "") in v)
    if args.experiment:  # shell patterns: 'cpt*'
        pats = args.experiment.split(",")
        tests.append(lambda r: any(fnmatch.fnmatchcase(r.get("experiment", ""), p) for p in pats))
    if args.tokenizer:  # a prefix of the hash is enough
        prefixes = tuple(args.tokenizer.split(","))
        tests.append(lambda r: r.get("tokenizer", "").startswith(prefixes))
    if args.since:
        tests.append(_since(args.since))
    return [r for r in rows if all(t(r) for t in tests)]


# ---- views ---------------------------------------------------------------------------------------

def _short_time(t: str) -> str:
    return f"{t[5:10]} {t[11:16]}" if len(t) >= 16 and t[10] == "T" else t[:11]


def _rate(text) -> str:
    """A rate to three significant digits (1.48k, 23.4k, 456k, 1.23M): whole thousands hid 2x gaps on a CPU."""
    v = number(text)
    if v is None:
        return ""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if v >= 0.9995 * scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def _what(r: dict, common: frozenset = frozenset()) -> str:
    """What a run tried: its overrides (less the experiment, a column of its own, and those in `common`),
    then its description."""
    overrides = " ".join(_short_number(o) for o in r.get("overrides", "").split(" ")
                         if o and o not in common and not o.lstrip("+~").startswith("experiment="))
    description = r.get("description", "")
    return " | ".join(t for t in (overrides, description) if t)


_LONG_NUMBER = re.compile(r"(?<==)(-?\d*\.\d{5,}(?:e-?\d+)?)$")


def _short_number(override: str) -> str:
    """key=0.0012520653814999472 (a search's sample) -> key=0.001252: four significant digits to read by."""
    return _LONG_NUMBER.sub(lambda m: f"{float(m.group(1)):.4g}", override)


def _common(rows: list[dict]) -> frozenset:
    """The overrides every one of these rows has (two rows at least): the table names them once, below."""
    given = [set(r["overrides"].split(" ")) - {""} for r in rows if r.get("overrides")]
    return frozenset(set.intersection(*given)) if len(given) >= 2 and len(given) == len(rows) else frozenset()


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def table(ledger: Ledger, shown: list[dict], selected: int) -> list[str]:
    top = bests(ledger.rows)
    spread = noise(groups(ledger.rows))
    common = _common(shown)
    cells = []
    for r in shown:
        d = vs_best(r, top)
        n = spread.get(comparable(r))
        mark = "~" if d is not None and n is not None and abs(d) < n.threshold else " "
        v = bpb(r)
        cells.append([str(r["row"]), _short_time(r.get("time", "")), _clip(r.get("experiment", ""), 16),
                      "n/a" if v is None else f"{v:.4f}", "" if d is None else f"{d:+.4f}{mark}",
                      _rate(r.get("tokens_per_second")), r.get("num_steps", "").replace("n/a", ""),
                      r.get("status", ""), _what(r, common)])
    header = ["#", "time", "experiment", "val_bpb", "vs best", "tok/s", "steps", "status", "overrides | description"]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header) - 1)]
    right = {0, 3, 4, 5, 6}
    room = WIDTH - sum(widths) - 2 * (len(widths))

    def line(c):
        fixed = [c[i].rjust(w) if i in right else c[i].ljust(w) for i, w in enumerate(widths)]
        return "  ".join([*fixed, _clip(c[-1], room)]).rstrip()

    out = [line(header), *map(line, cells)]
    first, last = (shown[0]["row"], shown[-1]["row"]) if shown else (0, 0)
    more = "; -n N or --all for more" if len(shown) < selected else ""
    out.append(f"shown: {len(shown)} of {selected} rows (#{first}-#{last}){more}")
    shared = [o for o in shown[0].get("overrides", "").split(" ") if o in common
              and not o.lstrip("+~").startswith("experiment=")] if shown else []
    if shared:
        out += _wrap("overrides every row shown has (left out above): " + " ".join(shared))
    out += _footer(ledger, [r for r in shown if _measured(r)], top, spread)
    return out


def _footer(ledger: Ledger, shown: list[dict], top: dict, spread: dict) -> list[str]:
    out = []
    keys = list(dict.fromkeys(comparable(r) for r in shown))
    if keys:
        out.append("vs best: val_bpb minus the best other ok run of its stage and tokenizer (< 0: the best, "
                   "by that much); ~ within noise")
    for key in keys:
        best = top[key][0]
        name = f"{key[0]}/{key[1][:8] or '?'}: best #{best['row']} {bpb(best):.4f}"
        n = spread.get(key)
        if n is not None:
            out += _wrap(f"{name}; run-to-run std {n.std:.4f} ({n.runs} runs in {len(n.groups)} "
                         f"group{'s' * (len(n.groups) > 1)}: --noise); ~ if |vs best| < {n.threshold:.4f}")
        elif "overrides" not in ledger.columns:
            out.append(f"{name}; noise not measured: this ledger predates the overrides column (--noise)")
        else:
            out += _wrap(f"{name}; noise not measured (no config run twice): repeat the best at its commit "
                         f"{best.get('commit', '?')}, {_repeat_command(best, ledger.columns)}")
    if ledger.skipped:
        out += _wrap(_skipped(ledger))
    return out


def _skipped(ledger: Ledger) -> str:
    some = ", ".join(f"#{n}" for n in ledger.skipped[:3]) + (", …" if len(ledger.skipped) > 3 else "")
    return (f"skipped {len(ledger.skipped)} malformed row{'s' * (len(ledger.skipped) > 1)} ({some}): "
            f"not {len(ledger.columns)} tab-separated cells, or a val_bpb that is no number")


def _repeat_command(r: dict, columns: list[str]) -> str:
    if "overrides" not in columns:
        return "`python train.py <its overrides> seed=1,2,3 -m` (this ledger predates the overrides column)"
    args = [shlex.quote(o) for o in without_seed(r.get("overrides", "")).split(" ")  # a search's trial: its values,
            if o and not o.lstrip("+~").startswith(("sweeps=", "hydra/sweeper="))]  # not the search again
    return "`" + " ".join(["python train.py", *args, "seed=1,2,3", "-m"]) + "`"


def best_view(ledger: Ledger, selected: list[dict]) -> list[str]:
    top = bests(selected)
    spread = noise(groups(ledger.rows))
    if not top:
        return ["no ok run with a val_bpb among the selected rows"]
    out = []
    for key, pair in top.items():
        best = pair[0]
        runs = [r for r in selected if comparable(r) == key]
        ok = sum(_measured(r) for r in runs)
        out.append(f"best of stage {key[0] or '?'}, tokenizer {key[1] or '?'} ({ok} ok runs of {len(runs)}):")
        out.append(f"  row: {best['row']}")
        for c in ledger.columns:
            if best.get(c, "") not in MISSING:
                out.append(f"  {c}: {best[c]}")
        if len(pair) > 1:
            gap = bpb(pair[1]) - bpb(best)
            out.append(f"  ahead_of_next: #{pair[1]['row']} by {gap:.4f} val_bpb")
        n = spread.get(key)
        if n is not None:
            verdict = "" if len(pair) < 2 else f"; its lead is {'within' if gap < n.threshold else 'beyond'} noise"
            out.append(f"  noise: std {n.std:.4f} over {n.runs} repeated runs{verdict} "
                       f"(within noise: under {n.threshold:.4f})")
        else:
            out.append(f"  noise: not measured; repeat it: {_repeat_command(best, ledger.columns)}")
    return out


def noise_view(ledger: Ledger, selected: list[dict], last: int | None = None) -> list[str]:
    found = groups(selected)
    if "overrides" not in ledger.columns:
        return [f"{ledger.path} has no overrides column (it predates it): runs cannot be grouped by "
                "config, so noise is not measured; start a new ledger (ledger=...) to measure it"]
    if not found:
        return ["no repeated runs yet (the same commit, code.patch and overrides apart from seed=, status ok):",
                "  run one config several times, e.g. python train.py <overrides> seed=1,2,3 -m"]
    out = [f"{'stage':<9} {'tokenizer':<9} {'n':>3} {'mean':>7} {'std':>7} {'range':>7}  rows / overrides"]
    for g in found[-last:] if last else found:
        rows = ",".join(str(r["row"]) for r in g.rows)
        code = g.key[2] + (f"+{g.key[3][:8]}" if g.key[3] else "")  # commit + patch
        what = f"#{_clip(rows, 30)}  {g.key[4] or '(no overrides)'} @ {code}"
        out.append(_clip(f"{g.key[0]:<9} {g.key[1][:9]:<9} {len(g.rows):>3} {g.mean:>7.4f} {g.std:>7.4f} "
                         f"{g.range:>7.4f}  {what}", WIDTH))
    if last and len(found) > last:
        out.append(f"the last {last} of {len(found)} groups (by first row); -n N or --all for more")
    for key, n in noise(found).items():
        out.append(f"pooled {key[0]}/{key[1][:8]}: std {n.std:.4f} from {len(n.groups)} "
                   f"group{'s' * (len(n.groups) > 1)}, {n.runs} runs; "
                   f"gaps under {n.threshold:.4f} ({NOISE_SIGMAS:g} std) are within noise")
    return out


def flat(tree, prefix: str = "") -> dict:
    """A nested config as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _config(r: dict, tag: str, notes: list[str]) -> dict | None:
    path = Path(r.get("output_dir", "")) / ".hydra" / "config.yaml"
    if not r.get("output_dir") or not path.is_file():
        notes.append(f"{tag}: no config at {path}: config not compared")
        return None
    import yaml

    try:
        return flat(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as e:
        notes.append(f"{tag}: {path} is not YAML ({str(e).splitlines()[0]}): config not compared")
        return None


def _overrides(r: dict) -> str:
    """The row's overrides; a ledger older than that column: the run's .hydra/overrides.yaml (Hydra's own)."""
    if recorded(r):
        return r["overrides"] or "(none)"
    path = Path(r.get("output_dir", "")) / ".hydra" / "overrides.yaml"
    if not r.get("output_dir") or not path.is_file():
        return "(not recorded)"
    import yaml

    try:
        given = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError:
        return f"(not recorded; {path} is not YAML)"
    kept = [str(o) for o in given if not str(o).lstrip("+~").startswith(("description=", "ledger="))]
    return (" ".join(kept) or "(none)") + "  (from .hydra/overrides.yaml)"


def _patch(r: dict, tag: str, notes: list[str]) -> list[str] | None:
    """The lines of a row's code.patch ([] for a clean tree); None when it cannot be read."""
    if r.get("dirty") == "dirty" and not r.get("patch"):
        notes.append(f"{tag}: its tree was dirty and the row predates code.patch: code not compared")
        return None
    path = Path(r.get("output_dir", "")) / "code.patch"
    if not r.get("patch"):
        return []
    if not path.is_file():
        notes.append(f"{tag}: its code.patch (patch {r['patch']}) is missing from {path.parent}: code not compared")
        return None
    return path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)


def diff_view(ledger: Ledger, a_ref: str, b_ref: str, limit: int = 200) -> list[str]:
    a, b = row_ref(ledger.rows, a_ref), row_ref(ledger.rows, b_ref)
    ta, tb = f"#{a['row']}", f"#{b['row']}"
    out = [f"{ta} -> {tb}"]
    for t, r in ((ta, a), (tb, b)):
        out.append(f"  {t}: {r.get('time', '')}  commit {r.get('commit', '?')}  patch {r.get('patch') or '-'}  "
                   f"{r.get('status', '')}  val_bpb {r.get('val_bpb', '')}  {r.get('output_dir', '')}")
    if bpb(a) is not None and bpb(b) is not None:
        out.append(f"  val_bpb {bpb(a):.4f} -> {bpb(b):.4f} ({bpb(b) - bpb(a):+.4f})")
    out.append("overrides:")
    for t, r in ((ta, a), (tb, b)):
        out.append(f"  {t}: {_overrides(r)}")
    notes: list[str] = []
    ca, cb = _config(a, ta, notes), _config(b, tb, notes)
    if ca is not None and cb is not None:
        changed = [k for k in dict.fromkeys([*ca, *cb]) if ca.get(k, KeyError) != cb.get(k, KeyError)]
        out.append(f"config: {len(changed)} key{'s' * (len(changed) != 1)} differ{'s' * (len(changed) == 1)}")
        for k in changed:
            old, new = (repr(c[k]) if k in c else "(absent)" for c in (ca, cb))
            out.append(f"  {k}: {old} -> {new}")
    pa, pb = _patch(a, ta, notes), _patch(b, tb, notes)
    out += notes
    commits = (a.get("commit", "?"), b.get("commit", "?"))
    if commits[0] != commits[1]:
        out.append(f"code: commit {commits[0]} -> {commits[1]} (`git diff {commits[0]} {commits[1]}` shows "
                   "the committed change); their uncommitted patches:")
    if pa is not None and pb is not None:
        lines = list(difflib.unified_diff(pa, pb, f"{ta} code.patch", f"{tb} code.patch"))
        if not lines:
            same = "  none (both trees were clean)" if not pa else "  the same patch"
            out.append(same if commits[0] != commits[1] else "code: same code")
        else:
            if commits[0] == commits[1]:
                out.append(f"code: same commit {commits[0]}; the diff of their code.patch files:")
            out += [ln.rstrip("\n") for ln in lines[:limit]]
            if len(lines) > limit:
                out.append(f"... {len(lines) - limit} more lines: diff the two code.patch files")
    return out


def plot(ledger: Ledger, selected: list[dict], path: Path) -> str:
    """val_bpb of every run in ledger order, one colour per stage and tokenizer; a run that set a new
    best at its time is a new best (large, labelled), the running best a step line with the noise band
    above it; failed runs are crosses along the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    spread = noise(groups(ledger.rows))
    series: dict[tuple, list[dict]] = {}
    for r in selected:
        if _measured(r):
            series.setdefault(comparable(r), []).append(r)
    failed = [r for r in selected if not _measured(r)]
    common = _common(selected)
    fig, ax = plt.subplots(figsize=(12, 6), dpi=110)
    kept_total, tops, lows = 0, [], []
    for i, (key, rs) in enumerate(series.items()):
        colour = f"C{i % 10}"
        best, kept = math.inf, []
        for r in rs:
            if bpb(r) < best:
                best = bpb(r)
                kept.append(r)
        kept_total += len(kept)
        n = spread.get(key)
        band = f"; band: within noise, {NOISE_SIGMAS:g} std = {n.threshold:.4f}" if n is not None else ""
        ax.scatter([r["row"] for r in rs], [bpb(r) for r in rs], s=14, color=colour, alpha=0.3, zorder=2)
        ax.scatter([r["row"] for r in kept], [bpb(r) for r in kept], s=50, color=colour, edgecolors="black",
                   linewidths=0.6, zorder=4,
                   label=f"{key[0]} / tokenizer {key[1][:8]}: {len(rs)} runs, {len(kept)} new bests{band}")
        xs = [r["row"] for r in kept] + [rs[-1]["row"]]
        ys = [bpb(r) for r in kept] + [bpb(kept[-1])]
        ax.step(xs, ys, where="post", color=colour, linewidth=1.5, zorder=3)
        if n is not None:
            ax.fill_between(xs, ys, [y + n.threshold for y in ys], step="post", color=colour, alpha=0.12, zorder=1)
        for r in kept[-12:]:  # the latest improvements, labelled like autoresearch's progress plot
            ax.annotate(_clip(_what(r, common) or r.get("experiment", ""), 32), (r["row"], bpb(r)), fontsize=7,
                        rotation=25, xytext=(4, 4), textcoords="offset points", color="dimgray")
        tops.append(bpb(kept[0]))
        lows.append(best)
    if series:  # frame the progress: from the first run of a series to its best; worse runs are cut off
        low, high = min(lows), max(tops)
        pad = max(high - low, 1e-3) * 0.08
        above = sum(bpb(r) > high + pad for rs in series.values() for r in rs)
        ax.set_ylim(low - pad, high + pad * 3)
        if above:
            ax.text(0.99, 0.99, f"{above} run{'s' * (above != 1)} above the frame", transform=ax.transAxes,
                    ha="right", va="top", fontsize=8, color="dimgray")
    if failed:
        ax.scatter([r["row"] for r in failed], [0.015] * len(failed), marker="x", s=18, color="crimson",
                   transform=blended_transform_factory(ax.transData, ax.transAxes), zorder=5,
                   label=f"not ok or no val_bpb: {len(failed)} run{'s' * (len(failed) != 1)}")
    first, last = selected[0]["row"], selected[-1]["row"]
    ax.set_xlim(first - 0.5 - (last - first) * 0.02, last + 0.5 + (last - first) * 0.06)  # the crosses too
    ax.set_xlabel("run (row of the ledger)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(f"{ledger.path.name}: {len(selected)} runs, {kept_total} new bests")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper right" if not failed else "best")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as e:  # no such folder, no permission, an extension matplotlib cannot write
        raise UserError(f"--plot {path}: cannot write it ({str(e).splitlines()[0]}); give a .png path "
                        "in a folder you can write") from None
    finally:
        plt.close(fig)
    return f"plot: {path} ({len(selected)} runs, {kept_total} kept, {len(failed)} not ok)"


# ---- the command ---------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m autolab.results",
        description="Read the results ledger: the last runs, the best, the noise, two runs' difference, a plot.",
        epilog="Filters combine (and); each takes a comma-separated list. # is a row's position in the ledger.")
    p.add_argument("--ledger", default="results.tsv", help="the ledger (default: results.tsv here)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--best", action="store_true", help="the best ok run of each stage and tokenizer, every fact")
    view.add_argument("--noise", action="store_true", help="groups of repeated runs: n, mean, std, range of val_bpb")
    view.add_argument("--diff", nargs=2, metavar=("A", "B"),
                      help="config and code between two runs: row numbers (-1: the last) or output dirs")
    view.add_argument("--plot", metavar="FILE", help="write a progress plot (PNG) of val_bpb over the runs")
    p.add_argument("-n", "--last", type=int, default=20, metavar="N",
                   help="show the last N rows (--noise: groups) (default 20)")
    p.add_argument("--all", action="store_true", help="show every selected row (--noise: group)")
    p.add_argument("--stage", help="pretrain, cpt, dpo")
    p.add_argument("--experiment", help="experiment name or shell pattern ('cpt*')")
    p.add_argument("--tokenizer", help="tokenizer hash or a prefix of it")
    p.add_argument("--status", help="ok, crash, invalid, interrupted, diverged, requeued, lost")
    p.add_argument("--since", help="a row number (rows from it on) or an ISO date/time (2026-12-06T14:30)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        ledger = read(args.ledger)
        if args.diff:
            print("\n".join(diff_view(ledger, *args.diff)))
            return 0
        selected = select(ledger.rows, args)
        if not ledger.rows:
            print(f"{ledger.path} has no rows yet" + (f"; {_skipped(ledger)}" if ledger.skipped else ""))
            return 0
        if not selected:
            print(f"no row of {ledger.path} matches the filters ({len(ledger.rows)} rows in all)")
            return 0
        if args.best:
            lines = best_view(ledger, selected)
        elif args.noise:
            lines = noise_view(ledger, selected, None if args.all else max(args.last, 1))
        elif args.plot:
            lines = [plot(ledger, selected, Path(args.plot))]
        else:
            lines = table(ledger, selected if args.all else selected[-max(args.last, 1):], len(selected))
        if ledger.skipped and (args.best or args.noise or args.plot):  # the table's footer has it
            lines.append(_skipped(ledger))
        print("\n".join(lines))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head` stopped reading: no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
