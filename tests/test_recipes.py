"""Stage recipes: a stage is its own module plus a config entry; run.py names none."""

import json
from pathlib import Path

from conftest import ROOT, TINY, run_train

from autolab import report

CUSTOM = '''
from autolab.stages import lm
from autolab.stages.recipe import Recipe


def build(ctx):
    parts = lm.build(ctx)
    parts.finals = lambda: {"custom_metric": 42.0, "rows_seen": parts.module.rows}
    return parts


RECIPE = Recipe(build)
'''


def test_a_stage_from_outside_the_package_runs_through_the_common_loop(tmp_path, cache):
    (tmp_path / "my_stages.py").write_text(CUSTOM)
    env = {"PYTHONPATH": str(tmp_path)}
    r = run_train([*TINY, "logger=none", "stage.recipe=my_stages.RECIPE"], tmp_path, cache, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    s = report.parse_summary(r.stdout)
    assert s["status"] == "ok" and float(s["custom_metric"]) == 42.0 and s["rows_seen"] == str(4 * 4)  # 4 steps x 4 rows
    assert "pretrain on prose, " in r.stdout
    summary = json.loads((Path(s["output_dir"]) / "summary.json").read_text())
    assert summary["custom_metric"] == 42.0 and report.read_ledger(tmp_path / "results.tsv")[-1]["status"] == "ok"


def test_a_recipe_that_is_not_one_is_refused_in_one_line(tmp_path, cache):
    for bad in ("no_such_module.RECIPE", "autolab.stages.lm.build"):
        r = run_train([*TINY, "logger=none", f"stage.recipe={bad}"], tmp_path, cache)
        assert r.returncode == 2 and r.stderr.strip() == (
            f"error: stage.recipe={bad}: name a stage recipe as module.RECIPE, e.g. autolab.stages.lm.RECIPE")


def test_run_py_names_no_stage():
    source = (ROOT / "src" / "autolab" / "run.py").read_text()
    assert "dpo" not in source.lower() and "LMStage" not in source
