"""A copy of this project as a fresh git repository, for tests of what a user does with git around
autolab (the research loop of program.md, reruns): the project's files as they are now (tracked and
untracked, not ignored), one commit, and its own code first on the path of everything run in it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> Path:
    """`dest` holding the project's files, committed once as `main` (a git identity of its own)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    dest.mkdir(parents=True, exist_ok=True)
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    for cmd in (["init", "-q", "-b", "main"], ["config", "user.email", "test@autolab"], ["config", "user.name", "test"],
                ["add", "-A"], ["commit", "-qm", "the project"]):
        subprocess.run(["git", *cmd], cwd=dest, check=True, capture_output=True)
    return dest


def env_for(repo: Path, cache: Path, home: Path | None = None) -> dict:
    """The environment of a process run in `repo`: its own code imported, not the installed checkout's,
    and this interpreter as `python`; `home`: a HOME of its own (no global git identity there)."""
    env = {**os.environ, "AUTOLAB_CACHE": str(cache), "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", XDG_CONFIG_HOME=str(home / ".config"))
    env.pop("WANDB_MODE", None)
    return env


def run_in(repo: Path, cache: Path, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """`python <args>` in `repo`, as a user there would run it."""
    return subprocess.run([sys.executable, *args], cwd=repo, env=env_for(repo, cache), capture_output=True,
                          text=True, timeout=timeout)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
