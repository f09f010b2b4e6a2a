"""Every run keeps its code: code.patch, the overrides in the row, and `python -m autolab.rerun`."""

import json

from autolab import report
from conftest import TINY
from project import copy_project, git, run_in

MARK = "print('the patched tree runs')  # added by test_rerun\n"
ARGS = [*TINY[1:], "+experiment=mine", "logger=none"]


def test_a_discarded_dirty_run_reruns_to_the_same_config_and_val_bpb(tmp_path, cache):
    repo = copy_project(tmp_path / "repo")
    (repo / "conf/experiment/mine.yaml").write_text("# @package _global_\ndefaults:\n  - quickstart\n"
                                                    "schedule:\n  peak_lr: 2.0e-3\n")
    git(repo, "add", "conf")
    git(repo, "commit", "-qm", "try: mine")
    tried = git(repo, "rev-parse", "HEAD").strip()
    # and dirty on top of the commit: a changed tracked config, a change in src/
    train_yaml = repo / "conf/train.yaml"
    train_yaml.write_text(train_yaml.read_text().replace("seed: 42", "seed: 7"))
    run_py = repo / "src/autolab/run.py"
    run_py.write_text(run_py.read_text() + MARK)
    first = run_in(repo, cache, ["train.py", *ARGS, 'description="try: mine, at 2e-3"'])
    assert first.returncode == 0, first.stderr[-2000:]
    assert "the patched tree runs" in first.stdout
    row = report.read_ledger(repo / "results.tsv")[0]
    out = repo / row["output_dir"].split("/repo/", 1)[1]
    assert row["commit"] == tried[:len(row["commit"])] and row["dirty"] == "dirty" and row["patch"]
    assert row["description"] == "try: mine, at 2e-3" and row["overrides"] == " ".join(ARGS)  # description: its column
    assert float(row["tokens_per_second"]) > 0
    patch = (out / "code.patch").read_text()
    assert "+seed: 7" in patch and MARK.strip() in patch and "mine.yaml" not in patch  # that one is committed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overrides"] == ARGS and summary["patch"] == row["patch"]

    git(repo, "reset", "--hard", "HEAD~1")  # discarded: the branch drops the commit, the tree its changes
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "--prune=now", "--quiet")
    assert git(repo, "cat-file", "-t", tried).strip() == "commit"  # kept by refs/autolab/runs/
    status = git(repo, "status", "--porcelain")
    dry = run_in(repo, cache, ["-m", "autolab.rerun", "1", "--dry-run"])
    assert dry.returncode == 0 and tried[:7] in dry.stdout and "+experiment=mine" in dry.stdout
    assert "git worktree add --detach <worktree> " in dry.stdout and "git -C <worktree> apply --binary " in dry.stdout
    assert "PYTHONPATH=src:. python train.py " in dry.stdout  # the steps as a person would type them
    rerun = run_in(repo, cache, ["-m", "autolab.rerun", "1"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "the patched tree runs" in rerun.stdout  # the patch's src/ was imported, not the checkout's
    last = rerun.stdout.strip().splitlines()[-1]
    assert last.startswith("rerun: same config;") and last.endswith("(identical)"), last
    rows = report.read_ledger(repo / "results.tsv")
    assert len(rows) == 2 and rows[1]["val_bpb"] == row["val_bpb"] and rows[1]["overrides"] == row["overrides"]
    assert rows[1]["patch"] == row["patch"] and rows[1]["description"] == "rerun of row 1"
    # the user's checkout is as it was: same status, no worktree left behind, the discard still in place
    assert git(repo, "status", "--porcelain") == status
    assert len(git(repo, "worktree", "list").splitlines()) == 1
    assert not (repo / "conf/experiment/mine.yaml").exists()

    for ref, says in (("7", "has rows 1-2"), (str(tmp_path), "neither a row number")):
        bad = run_in(repo, cache, ["-m", "autolab.rerun", ref])
        assert bad.returncode == 2 and bad.stderr.startswith("error:") and says in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
