"""What ran: the commit, the code's difference from it, and the Hydra overrides.

Every run writes `code.patch` into its output dir (its tracked and untracked project files against
its commit, as `git diff --binary`; outputs, caches and whatever .gitignore names are not in it) and
records the commit, the patch's hash and the overrides in its ledger row and summary.json, so
`python -m autolab.rerun` can rebuild that code in a separate worktree and run it again.

The patch is made with a temporary copy of git's index: the user's index, branch and files are
never touched. The commit itself is kept under `refs/autolab/runs/` (`git for-each-ref refs/autolab`),
so a commit the branch later drops (`git reset --hard` of a discarded experiment) is never
garbage-collected: every row of the ledger stays rerunnable. An untracked file over `MAX_UNTRACKED_BYTES` (a dataset dropped into the tree) is left
out of the patch and named in a `#` line at its top, which `git apply` skips.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PATCH = "code.patch"  # in every run's output dir
MAX_UNTRACKED_BYTES = 1_000_000
NOT_RECORDED = ("description", "ledger")  # the ledger has its own columns for these


@dataclass(frozen=True)
class Code:
    commit: str = "none"  # short hash of HEAD, or "none" outside git
    patch: str = ""  # the working tree's difference from the commit ("" when they are the same)

    @property
    def dirty(self) -> str:
        if self.commit == "none":
            return ""
        return "dirty" if self.patch else "clean"

    @property
    def patch_hash(self) -> str:
        return hashlib.sha256(self.patch.encode()).hexdigest()[:10] if self.patch else ""


def _git(args: list[str], cwd: Path | None, env: dict | None = None, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          check=True).stdout


def code_state(cwd: Path | None = None) -> Code:
    """The commit of the git checkout at `cwd` (the process's cwd by default) and its code.patch."""
    try:
        commit = _git(["rev-parse", "--short", "HEAD"], cwd).strip()
        root = Path(_git(["rev-parse", "--show-toplevel"], cwd).strip())
        index = Path(_git(["rev-parse", "--git-path", "index"], root).strip())
        full = _git(["rev-parse", "HEAD"], root).strip()
        _git(["update-ref", f"refs/autolab/runs/{full}", full], root)  # kept from gc, whatever the branch does
    except (OSError, subprocess.CalledProcessError):
        return Code()
    index = index if index.is_absolute() else root / index
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if index.exists():  # a copy, its mtime kept: git re-reads a file changed within the index's second
            shutil.copy2(index, env["GIT_INDEX_FILE"])
        else:
            _git(["read-tree", "HEAD"], root, env)
        _git(["add", "--update"], root, env)  # tracked files: changed or deleted
        untracked = [p for p in _git(["ls-files", "--others", "--exclude-standard", "-z"], root).split("\0") if p]
        small = [p for p in untracked if (root / p).is_file() and (root / p).stat().st_size <= MAX_UNTRACKED_BYTES]
        if small:
            _git(["add", "--pathspec-from-file=-", "--pathspec-file-nul"], root, env, "\0".join(small))
        patch = _git(["diff", "--cached", "--binary", "HEAD"], root, env)
    skipped = sorted(set(untracked) - set(small))
    notes = "".join(f"# not in this patch (untracked, over {MAX_UNTRACKED_BYTES} bytes): {p}\n" for p in skipped)
    return Code(commit, notes + patch if patch or notes else "")


def write_patch(code: Code, out: Path) -> None:
    """The run's code.patch (empty when the tree matched its commit), written then renamed."""
    tmp = out / (PATCH + ".tmp")
    tmp.write_text(code.patch, encoding="utf-8")
    tmp.replace(out / PATCH)


def recorded(overrides: list[str]) -> list[str]:
    """The overrides a row keeps: all but the ones with columns of their own."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_RECORDED]
