"""Hydra's usage errors (flags it refuses before composing anything) end as one `error:` line and
exit code 2, like its composition errors: no traceback, no argparse usage wall.

    pytest tests/test_usage_errors.py -q
"""

import pytest

from conftest import ROOT, run_train


@pytest.mark.parametrize("args, says", [
    (["-m", "+experiment=quickstart", "--cfg", "job"], "Only one of --run, --multirun, --cfg"),  # Hydra raises ValueError
    (["--cfg", "bogus"], "argument --cfg/-c: invalid choice: 'bogus'"),  # argparse exits 2 after its usage lines
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_usage_error_is_one_error_line_and_exit_2(args, says, tmp_path):
    r = run_train(args, tmp_path, tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr[-2000:]
    assert "train.py --help" in lines[0]  # what to do
    assert r.stdout == ""  # nothing was composed or run


def test_help_still_prints_and_exits_0(tmp_path):
    r = run_train(["--help"], tmp_path, tmp_path, timeout=120)
    assert r.returncode == 0 and "Powered by Hydra" in r.stdout and r.stderr == "", r.stderr[-2000:]
