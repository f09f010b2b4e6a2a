"""`python train.py ...` for the tests, as a fork of a warm process instead of a new interpreter.

A new interpreter spends 5-6 s of a 2-core machine importing torch, Lightning (which imports
torchmetrics, scipy and part of transformers) and Hydra before train.py reads its first override;
the suite starts train.py about a hundred times. Here multiprocessing's forkserver imports
`autolab.run` once, and every run is a fork of that server: its own process with its own argv, cwd,
environment, stdout, stderr and exit code, running train.py as `__main__`, as the command line does.
What a fork cannot give is a different import: a run whose PYTHONPATH names more folders gets them
on its path (a user's recipe module imports from there), but the modules already loaded stay those of
this checkout, so a test of another tree's code (tests/project.py) starts a real interpreter instead.

AUTOLAB_TEST_FORK=0 runs every train.py of the tests in a new interpreter, as before.
"""

import atexit
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ENABLED = os.environ.get("AUTOLAB_TEST_FORK", "1") != "0"
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload([
    "autolab.run", "autolab.config", "hydra.main", "omegaconf",
    # what a run imports on its way, once here instead of in every fork: W&B's own lazy imports (its launch and
    # artifact modules build pydantic models on import: a tiny W&B run took 8.3 s without these, 2.7 s with),
    # the data path's, the launchers' (a module not installed, the search extra's, is skipped by the server)
    "lightning.pytorch.loggers.wandb", "wandb", "wandb.sdk.launch._launch", "wandb.sdk.artifacts.artifact",
    "pyarrow.parquet", "tiktoken", "hydra_plugins.autolab_launchers.search",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher", "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper",
])


def run(argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`python *argv` (a script and its arguments, or `-m module ...`) in `cwd` with exactly `env`:
    (returncode, stdout, stderr) as subprocess.run with capture_output=True and text=True gives them."""
    argv = [str(a) for a in argv]
    cmd = [sys.executable, *argv]
    if not ENABLED:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="forked-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch()
        err.touch()
        proc = _context.Process(target=_main, args=(argv, str(cwd), env, str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:  # still running: kill it, as subprocess.run's timeout does
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(cmd, timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(cmd, proc.exitcode, out.read_text(), err.read_text())


class Started:
    """A run started with `start`: its pid (signal it with os.kill), its output so far (stdout and stderr in
    one file, as subprocess's stderr=STDOUT gives them), and its exit code once it ends (-N: killed by signal N)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict):
        self.argv = [str(a) for a in argv]
        self._tmp = tempfile.TemporaryDirectory(prefix="forked-")
        self.path = Path(self._tmp.name) / "output"
        self.path.touch()
        if ENABLED:
            self._proc = _context.Process(target=_main, args=(self.argv, str(cwd), env, str(self.path), str(self.path)))
            self._proc.start()
        else:
            with open(self.path, "w") as f:
                self._proc = subprocess.Popen([sys.executable, *self.argv], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.pid = self._proc.pid

    def output(self) -> str:
        return self.path.read_text(errors="replace")

    def poll(self) -> int | None:
        return self._proc.exitcode if ENABLED else self._proc.poll()

    def wait(self, timeout: float) -> int:
        if ENABLED:
            self._proc.join(timeout)
            code = self._proc.exitcode
        else:
            code = self._proc.wait(timeout)
        if code is None:
            self._proc.kill()
            raise subprocess.TimeoutExpired(self.argv, timeout, self.output())
        return code

    def finish(self, timeout: float) -> tuple[int, str]:
        """(exit code, whole output) once it ends, then `close`."""
        try:
            return self.wait(timeout), self.output()
        finally:
            self.close()

    def close(self) -> None:
        if self.poll() is None:
            self._proc.kill()
        self._tmp.cleanup()


def start(argv: list[str], cwd: Path, env: dict) -> Started:
    """`python *argv` started as `run` starts it, without waiting for it (PYTHONUNBUFFERED=1 in env: its output
    reaches the file line by line, as the interpreter's -u gives it)."""
    return Started(argv, cwd, env)


def _main(argv: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """In the fork: become `python *argv` and end with its exit code."""
    os.chdir(cwd)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter from a terminal has it
    added = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[1:1] = added  # after the script's folder, as the interpreter puts PYTHONPATH
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_APPEND)  # appending: stdout and stderr may share one file
        os.dup2(f, fd)
        os.close(f)
    line = 1 if env.get("PYTHONUNBUFFERED") else -1  # python -u: each line reaches the file as it is printed
    sys.stdout = open(1, "w", buffering=line, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=line, encoding="utf-8", closefd=False)
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = argv[1:] if module else argv  # as the interpreter sets them (runpy puts a module's file first)
    sys.path[0] = cwd if module else os.path.dirname(os.path.abspath(argv[0]))
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:  # sys.exit(n), sys.exit("message"), as the interpreter reads them
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: its traceback and exit code 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what the interpreter runs at exit (multiprocessing's children skip it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
