"""program.md as an agent lives it: its command blocks, run in order in a fresh git repository.

The blocks are read from program.md itself (each ```bash block opens with a `# name` line), so the
instructions and this test cannot drift apart. On a tiny config the test runs the setup, a baseline
of three seeds, a kept experiment that adds a conf/experiment/ file, a discarded one, a 2-job wave
on the CPU, and reads the ledger with `python -m autolab.results`, checking that the branch, the
ledger and the view end as program.md says.
"""

import re
import subprocess

from autolab import report
from conftest import SMALL_MODEL
from project import ROOT, copy_project, env_for, git

MODEL = "{" + ", ".join(o.removeprefix("model.").replace("=", ": ") for o in SMALL_MODEL) + "}"


def tiny(peak_lr: str) -> str:
    """An agent's conf/experiment file: quickstart on conftest.SMALL_MODEL (its evaluations, not its 6 steps, cost most)."""
    return f"""# @package _global_
defaults:
  - quickstart
  - override /logger: none
model: {MODEL}
trainer: {{max_steps: 6, log_every: 2}}
data: {{seq_len: 64, batch_size: 4}}
eval: {{batch_size: 64}}
schedule: {{peak_lr: {peak_lr}}}
"""


def program_blocks() -> dict[str, str]:
    """{name: commands} of every ```bash block of program.md that opens with `# name`."""
    text = (ROOT / "program.md").read_text()
    blocks = re.findall(r"^```bash\n# (\w+)\n(.*?)^```$", text, flags=re.M | re.S)
    return {name: body for name, body in blocks}


def run_block(repo, cache, body: str, **values) -> str:
    """The block's commands with `<key>` replaced, as one bash script (stopping at a failed line)."""
    for key, value in values.items():
        body = body.replace(f"<{key}>", value)
    assert "<" not in re.sub(r"<<|2>&1|> ?\S+", "", body), f"a placeholder is left in:\n{body}"
    r = subprocess.run(["bash", "-e", "-c", body], cwd=repo, env=env_for(repo, cache, repo.parent / "home"),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{body}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def results(repo, cache, *args: str) -> str:
    r = subprocess.run(["python", "-m", "autolab.results", *args], cwd=repo, env=env_for(repo, cache),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def val_bpb(repo, log: str) -> float:
    return float(report.parse_summary((repo / log).read_text())["val_bpb"])


def test_program_md_loop_runs_as_written(tmp_path, cache):
    blocks = program_blocks()
    assert {"setup", "baseline", "experiment", "keep", "discard", "wave"} <= blocks.keys()
    repo = copy_project(tmp_path / "repo")
    (repo / "conf/experiment/tiny.yaml").write_text(tiny("1.0e-4"))  # the agent's starting point
    git(repo, "add", "conf")
    git(repo, "commit", "-qm", "a tiny config to start from")
    git(repo, "config", "--unset", "user.name")  # a fresh machine: setup gives git an identity
    git(repo, "config", "--unset", "user.email")
    no_identity = env_for(repo, cache, repo.parent / "home")
    assert subprocess.run(["git", "config", "user.name"], cwd=repo, env=no_identity).returncode != 0

    run_block(repo, cache, blocks["setup"], tag="t")
    assert git(repo, "branch", "--show-current").strip() == "autolab/t"
    noise = run_block(repo, cache, blocks["baseline"], tag="t", experiment="tiny")
    assert re.search(r"^pretrain\s+\w+\s+3\s.*#1,2,3", noise, flags=re.M), noise  # the three seeds: one group
    base = git(repo, "rev-parse", "HEAD").strip()
    best = min(float(r["val_bpb"]) for r in report.read_ledger(repo / "results.tsv"))

    # experiment 1: a new conf/experiment file, a learning rate that learns in six steps: kept
    (repo / "conf/experiment/tiny_lr.yaml").write_text(tiny("1.0e-2"))
    out = run_block(repo, cache, blocks["experiment"], experiment="tiny_lr", **{"what and why": "a higher lr"})
    assert "committed " in out and "try: a higher lr" in out
    tried = git(repo, "rev-parse", "HEAD").strip()
    assert tried != base and "conf/experiment/tiny_lr.yaml" in git(repo, "show", "--name-only", "HEAD")
    assert val_bpb(repo, "run.log") < best  # program.md: lower than the best so far, by more than the noise
    best = val_bpb(repo, "run.log")
    run_block(repo, cache, blocks["keep"], tag="t")

    # experiment 2: a learning rate too small to move: discarded
    (repo / "conf/experiment/tiny_slow.yaml").write_text(tiny("1.0e-6"))
    out = run_block(repo, cache, blocks["experiment"], experiment="tiny_slow", **{"what and why": "a tiny lr"})
    slow = git(repo, "rev-parse", "HEAD").strip()
    assert val_bpb(repo, "run.log") > best
    out = run_block(repo, cache, blocks["discard"], tag="t")
    assert f"back at {tried[:7]}" in out
    assert git(repo, "rev-parse", "HEAD").strip() == tried and not (repo / "conf/experiment/tiny_slow.yaml").exists()
    assert git(repo, "cat-file", "-t", slow).strip() == "commit"  # its code stays rerunnable

    # a wave over command-line values: nothing to commit, two jobs on the CPU
    run_block(repo, cache, blocks["wave"], N="1", launcher="local", experiment="tiny_lr",
              **{"what it explores": "lr around the kept one", "a": "5.0e-3", "b": "2.0e-2"})
    assert git(repo, "rev-parse", "HEAD").strip() == tried  # no empty commit
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""

    rows = report.read_ledger(repo / "results.tsv")
    assert [r["status"] for r in rows] == ["ok"] * 7
    baseline, wave = rows[:3], rows[5:]
    assert {r["commit"] for r in baseline} == {base[:len(rows[0]["commit"])]} and len({r["sweep"] for r in baseline}) == 1
    assert [r["overrides"].split()[-1] for r in baseline] == ["seed=1", "seed=2", "seed=3"]
    assert rows[3]["description"] == "try: a higher lr" and rows[4]["description"] == "try: a tiny lr"
    assert sorted(r["job"] for r in wave) == ["0", "1"] and len({r["sweep"] for r in wave}) == 1
    assert {r["overrides"] for r in wave} == {f"+experiment=tiny_lr schedule.peak_lr={v}" for v in ("0.005", "0.02")}  # as Hydra writes them

    view = results(repo, cache)
    assert all(len(line) <= 120 for line in view.splitlines())
    assert sum(1 for line in view.splitlines() if re.match(r"\d+\s", line)) == 7
    best_at = min(range(7), key=lambda i: float(rows[i]["val_bpb"])) + 1
    assert best_at in (4, 6, 7) and f"best #{best_at} " in view and "run-to-run std" in view
    assert rows[best_at - 1]["overrides"] in results(repo, cache, "--best")
    assert "schedule.peak_lr: 0.01 -> 1e-06" in results(repo, cache, "--diff", "4", "5")
