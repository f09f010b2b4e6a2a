"""Run any ledger row again from its own code: its commit, its code.patch and its overrides.

    python -m autolab.rerun 12                      # row 12 of results.tsv (the numbers `python -m autolab.results` shows)
    python -m autolab.rerun outputs/2026-12-06/10-00-00
    python -m autolab.rerun 12 trainer.max_steps=50 # the same run with an override added
    python -m autolab.rerun 12 --dry-run            # say what it would do

The code is rebuilt in a separate git worktree (the row's commit, then `git apply` of its
code.patch, see autolab.provenance) and train.py runs there with that worktree's code on the path:
the checkout you work in, its branch, index and files, are never touched. The rerun appends its row
to the same ledger, writes its output dir under `outputs/rerun-<time>` (or `--out`), and ends with
one line comparing its config and val_bpb with the original's. The worktree is removed afterwards
(`--keep` keeps it). Exit code: train.py's (0 when the rerun finished `ok`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from autolab import provenance, report, results
from autolab.errors import UserError

IGNORED_KEYS = ("output_dir", "ledger", "description", "resume")  # differ between a run and its rerun by design


def source_of(ref: str, ledger: Path) -> tuple[Path, dict]:
    """(output dir, its summary.json) of a row of `ledger` (as `python -m autolab.results` numbers them)
    or of a run's output dir."""
    out = Path(ref).expanduser()
    if not (out / "summary.json").is_file():
        if not ledger.is_file():
            raise UserError(f"{ledger} not found: give --ledger, or a run's output dir")
        out = Path(results.row_ref(report.read_ledger(ledger), ref).get("output_dir", ""))
    summary = out / "summary.json"
    if not summary.exists():
        raise UserError(f"{out}: no summary.json there (a run that never started, or not a train.py output dir)")
    facts = json.loads(summary.read_text())
    if facts.get("commit") in (None, "none"):
        raise UserError(f"{out}: the run recorded no commit (it ran outside git, or before autolab kept "
                        "code.patch): it cannot be rebuilt")
    return out, facts


def _git(args: list[str], cwd: Path) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"git {args[0]} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return r.stdout


def build_worktree(repo: Path, commit: str, patch: Path, where: Path) -> Path:
    """A detached worktree of `repo` at `commit` with `patch` applied."""
    try:
        _git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], repo)
    except UserError:
        raise UserError(f"commit {commit} is not in the repository at {repo}: rerun from the checkout the run "
                        "was made in") from None
    _git(["worktree", "add", "--detach", "--quiet", str(where), commit], repo)
    if patch.exists() and patch.stat().st_size:
        _git(["apply", "--binary", "--whitespace=nowarn", str(patch.resolve())], where)
    elif not patch.exists():
        print(f"note: {patch} not found: rerunning the commit as it is", file=sys.stderr)
    return where


def compared(original: Path, rerun: Path) -> str:
    """One line: is the composed config the same, and val_bpb before -> after."""
    from omegaconf import OmegaConf

    def config(folder: Path) -> dict:
        path = folder / ".hydra" / "config.yaml"
        c = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}
        return {k: v for k, v in results.flat(c).items() if k not in IGNORED_KEYS}

    def val(folder: Path):
        path = folder / "summary.json"
        return json.loads(path.read_text()).get("val_bpb") if path.exists() else None

    a, b = config(original), config(rerun)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    same = "same config" if a and a == b else (f"config differs in {', '.join(changed)}" if a else "no saved config to compare")
    va, vb = val(original), val(rerun)
    return (f"rerun: {same}; val_bpb {report.format_value(va, 'val_bpb')} -> {report.format_value(vb, 'val_bpb')}"
            + (" (identical)" if va is not None and va == vb else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autolab.rerun", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", help="a row number of the ledger, or a run's output dir")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added after the run's own")
    parser.add_argument("--ledger", default="results.tsv", help="the ledger to read rows from and append to")
    parser.add_argument("--out", help="the rerun's output dir (default outputs/rerun-<time>)")
    parser.add_argument("--keep", action="store_true", help="keep the worktree afterwards")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = parser.parse_intermixed_args(argv)  # options before or after the overrides
    ledger = Path(args.ledger).resolve()
    try:
        repo = Path(_git(["rev-parse", "--show-toplevel"], Path.cwd()).strip())
        original, facts = source_of(args.ref, ledger)
        out = Path(args.out or f"outputs/rerun-{dt.datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
        overrides = [*facts.get("overrides", []), *args.overrides]
        what = str(original) if Path(args.ref).is_dir() else f"row {args.ref}"
        cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={out}", f"ledger={ledger}",
               f'description="rerun of {what}"']  # Hydra's quotes: the value may hold colons and slashes
        print(f"rerun: commit {facts['commit']}" + (f" + code.patch {facts['patch']}" if facts.get("patch") else "")
              + f" | {' '.join(overrides) or 'no overrides'} | -> {out}", flush=True)
        if args.dry_run:  # the steps, as a person would type them (the worktree is a new temp dir)
            saved = original / provenance.PATCH
            patch = f" && git -C <worktree> apply --binary {saved}" if saved.exists() and saved.stat().st_size else ""
            print(f"git worktree add --detach <worktree> {facts['commit']}{patch}\n"
                  f"cd <worktree> && PYTHONPATH=src:. {shlex.join(['python', *cmd[1:]])}")
            return 0
        where = Path(tempfile.mkdtemp(prefix="autolab-rerun-")) / "tree"
        build_worktree(repo, facts["commit"], original / provenance.PATCH, where)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where / "src"), str(where), os.environ.get("PYTHONPATH", "")])}
    try:
        code = subprocess.run(cmd, cwd=where, env=env).returncode  # its code first on the path, not the checkout's
    finally:
        if args.keep:
            print(f"rerun: worktree kept at {where} (`git worktree remove {where}` when done)")
        else:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=repo, capture_output=True)
            shutil.rmtree(where.parent, ignore_errors=True)
    print(compared(original, out))
    return code


if __name__ == "__main__":
    sys.exit(main())
