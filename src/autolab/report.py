"""The end-of-run summary block and the results ledger (results.tsv).

The summary is what agents grep: a line `---`, then one `key: value` line per metric.
The ledger gets one tab-separated row per run, crashed runs included. Rows are appended under a
file lock in a single write of one line, so concurrent runs (a sweep, sixteen agents) lose nothing.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from filelock import FileLock

STATUSES = {  # how a run ended: the summary's and the ledger's `status`, W&B's, and the exit code
    "ok": (0, "trained and measured; the checkpoint is written"),
    "crash": (1, "an unexpected error; the traceback above it says where"),
    "invalid": (2, "bad input or setup, one `error:` line says what to do; nothing was trained"),
    "interrupted": (3, "stopped by a signal after writing its snapshot; `resume=<output_dir>` continues it"),
    "diverged": (4, "the training loss became NaN or exploded; lower the learning rate"),
    "requeued": (None, "an attempt of a cluster job stopped by preemption or its time limit; the job continues"),
    "lost": (None, "a cluster job killed without a word (SIGKILL, out of memory); the launcher wrote its row"),
}


def exit_code(status: str) -> int:
    return STATUSES[status][0]


def status_of(code: int) -> str:
    """The status a run's exit code stands for."""
    return next((status for status, (c, _) in STATUSES.items() if c == code), "crash")


SUMMARY_KEYS = (  # printed in this order; more keys may follow
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "tokens_per_second",  # over the timed steps: what the time budget buys
    "num_steps",
    "num_params_M",
)
LEDGER_COLUMNS = (
    "time",
    "commit",
    "dirty",  # the tree differed from the commit: its difference is code.patch in the output dir
    "patch",  # code.patch's hash (autolab.provenance): rows with the same commit and patch ran the same code
    "stage",
    "experiment",
    "overrides",  # the run's command-line overrides (description and ledger have their own columns)
    "sweep",  # a multirun's sweep dir and this job's number in it
    "job",
    *SUMMARY_KEYS,
    "tokenizer",  # the tokenizer's hash (prepare.tokenizer_hash): rows compare only under the same one
    "val_bpb_start",  # continued pretraining: before and after, on both domains
    "val_bpb_delta",
    "replay_val_bpb",
    "replay_val_bpb_start",
    "replay_val_bpb_delta",
    "replay_share",
    "reward_accuracy",  # DPO: on the held-out pairs
    "reward_margin",
    "win_rate",  # DPO against its start on held-out prompts (the preamble rule judges; autolab.judge)
    "win_low",
    "win_high",
    "tie_rate",
    "loss_rate",
    "preamble_share_start",
    "preamble_share",
    "preamble_share_delta",
    "preamble_prob_start",  # its exact expectation: mean P(a preamble | prompt)
    "preamble_prob",
    "preamble_prob_delta",
    "reward_start",  # GRPO: the mean reward of a sampled completion of each held-out prompt, before and after
    "reward",
    "reward_delta",
    "entropy",  # GRPO: the policy's mean entropy (nats a token) at the last step
    "prompts",
    "dropped_prompts",
    "pairs",
    "held_out_pairs",  # what reward_accuracy and reward_margin were measured on
    "dropped_pairs",
    "status",
    "description",
    "output_dir",
    "job_id",  # the scheduler's job id (SLURM: 1234_5 for task 5 of array 1234), where there is one
    "stdout",  # the job's log files, where a launcher wrote them
    "stderr",
)


def format_value(value, key: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        precise = ("bpb", "share", "reward", "accuracy", "prob")  # metrics people compare in the 3rd decimal
        return f"{value:.6f}" if any(p in key for p in precise) else f"{value:.2f}"
    return str(value)


def format_summary(metrics: dict) -> str:
    order = {k: i for i, k in enumerate((*SUMMARY_KEYS, *LEDGER_COLUMNS))}
    keys = sorted(metrics, key=lambda k: order.get(k, len(order)))  # unknown keys last, as given
    return "\n".join(["---", *(f"{k}: {format_value(metrics[k], k)}" for k in keys)])


def parse_summary(text: str) -> dict[str, str]:
    """The key: value lines after the last `---` line of a log (what an agent's grep sees); values
    padded into a column (`val_bpb:     0.54`, autoresearch's block) read without the padding."""
    block = text.rsplit("\n---\n", 1)[-1] if "\n---\n" in text else text.split("---\n", 1)[-1]
    return dict(map(str.strip, line.split(": ", 1)) for line in block.splitlines() if ": " in line)


def job_identity() -> dict[str, str]:
    """This job's id in its scheduler and where its stdout/stderr go: a submitit job (SLURM or local)
    knows both; a plain sbatch script, its SLURM id; a run from a shell, nothing."""
    if os.environ.get("SUBMITIT_FOLDER"):
        import submitit

        env = submitit.JobEnvironment()
        return {"job_id": env.job_id, "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr)}
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return {"job_id": f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"}
    return {"job_id": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}


def _cell(value, key: str) -> str:
    return " ".join(format_value(value, key).split())  # no tab or newline can break a row


def append_row(path: Path | str, row: dict) -> None:
    """Append one row under an exclusive lock; write the header if the file is new or empty.

    The columns are LEDGER_COLUMNS; an older ledger keeps its layout, and a column it lacks is added at
    its end (the file rewritten once, under the lock, its rows padded with empty cells).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": dt.datetime.now().isoformat(timespec="seconds"), **row}
    with FileLock(str(path) + ".lock"):
        columns = list(LEDGER_COLUMNS)
        header = ""
        if path.exists() and path.stat().st_size > 0:
            with path.open(encoding="utf-8") as f:
                columns = f.readline().rstrip("\n").split("\t")
            missing = [c for c in LEDGER_COLUMNS if c not in columns]
            if missing:
                _add_columns(path, columns, missing)
                columns += missing
        else:
            header = "\t".join(columns) + "\n"
        line = header + "\t".join(_cell(row.get(c, ""), c) for c in columns) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


def _add_columns(path: Path, columns: list[str], missing: list[str]) -> None:
    """Rewrite a ledger with `missing` columns at its end (written aside, then renamed into place); its
    rows read `n/a` there: not recorded, which is not the same as empty (no overrides, a clean tree)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    pad = "\tn/a" * len(missing)
    text = "\n".join(["\t".join(columns + missing), *(line + pad for line in lines[1:])]) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_ledger(path: Path | str) -> list[dict[str, str]]:
    """Every row as {column: cell}; a ledger that is empty (or not there yet) has none."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if not lines:
        return []
    columns = lines[0].split("\t")
    return [dict(zip(columns, line.split("\t"))) for line in lines[1:]]
