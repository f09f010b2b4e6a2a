"""`python -m autolab.results`: the ledger's compact table, filters, --best, --noise, --diff, --plot.

Ledgers are written with report.append_row (real rows); output dirs hold a real `.hydra/config.yaml`
(OmegaConf) and a code.patch, as a train.py run leaves them.
"""

import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from autolab import report, results
from autolab.errors import UserError

NEW_COLUMNS = ("patch", "overrides", "sweep", "job", "tokens_per_second")
TOK, TOK2 = "1a2b3c4d5e6f", "9f8e7d6c5b4a"


def every_column() -> list[str]:
    return [*report.LEDGER_COLUMNS, *(c for c in NEW_COLUMNS if c not in report.LEDGER_COLUMNS)]


def new_ledger(path, columns=None):
    """An empty ledger whose header has the issue-27 columns (append_row keeps an existing header)."""
    columns = columns or every_column()
    path.write_text("\t".join(columns) + "\n")
    return path


def run_dir(folder, lr=2e-3, patch=""):
    """A run's output dir as train.py leaves it: its composed config and its code.patch."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 1, "schedule": {"name": "wsd", "peak_lr": lr},
                                     "model": {"n_layer": 4}, "output_dir": str(folder)}),
                   folder / ".hydra" / "config.yaml")
    if patch:
        (folder / "code.patch").write_text(patch)
    return folder


def add(ledger, **row):
    defaults = {"commit": "abc1234", "dirty": "clean", "stage": "pretrain", "experiment": "quickstart",
                "tokenizer": TOK, "status": "ok", "num_steps": 600, "tokens_per_second": 1.25e6,
                "overrides": "+experiment=quickstart", "description": ""}
    report.append_row(ledger, {**defaults, **row})


def view(capsys, ledger, *args) -> list[str]:
    assert results.main(["--ledger", str(ledger), *args]) == 0
    return capsys.readouterr().out.splitlines()


def rows_shown(lines) -> list[int]:
    return [int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()]


def test_table_is_narrow_numbered_and_filtered(tmp_path, capsys):
    ledger = new_ledger(tmp_path / "results.tsv")
    for i in range(6):
        add(ledger, time=f"2026-12-0{i + 1}T10:00:00", val_bpb=1.0 - i / 100, stage="cpt" if i % 2 else "pretrain",
            status="crash" if i == 4 else "ok", description="a long line of what this run tried " * 8,
            overrides=f"+experiment=quickstart schedule.peak_lr={i}e-3 model.n_embd=512 optim.weight_decay=0.1")
    lines = view(capsys, ledger)
    assert max(map(len, lines)) <= results.WIDTH
    assert rows_shown(lines) == [1, 2, 3, 4, 5, 6]
    assert "schedule.peak_lr=0e-3" in lines[1] and lines[1].endswith("…")  # overrides first, cut to fit
    assert "+experiment" not in lines[1]  # the experiment has a column of its own
    assert "1.25M" in lines[1] and " 600 " in lines[1]
    assert rows_shown(view(capsys, ledger, "--stage", "cpt")) == [2, 4, 6]  # filters never renumber
    wave = view(capsys, ledger, "--since", "5")  # what differs between rows is shown, what they share said once
    assert "  schedule.peak_lr=4e-3 | a long line" in wave[1] and "model.n_embd" not in wave[1]
    assert "overrides every row shown has (left out above): model.n_embd=512 optim.weight_decay=0.1" in wave
    assert rows_shown(view(capsys, ledger, "--stage", "pretrain", "--status", "ok")) == [1, 3]
    assert rows_shown(view(capsys, ledger, "--since", "2026-12-04")) == [4, 5, 6]
    assert rows_shown(view(capsys, ledger, "--since", "2026-12-05T09:00+00:00")) == [5, 6]  # a zone: ignored
    assert rows_shown(view(capsys, ledger, "--since", "5")) == [5, 6]
    assert rows_shown(view(capsys, ledger, "--status", "ok,crash", "-n", "2")) == [5, 6]
    assert rows_shown(view(capsys, ledger, "--experiment", "quick*", "--tokenizer", TOK[:4], "--stage", "dpo")) == []
    assert view(capsys, ledger, "--stage", "dpo")[0].startswith("no row of ")
    assert results.main(["--ledger", str(ledger), "--since", "yesterday"]) == 2
    assert capsys.readouterr().err.startswith("error: --since yesterday: give a row number")


@pytest.mark.parametrize("value, shown", [("600", "600"), ("1480", "1.48k"), ("2410.5", "2.41k"), ("23456", "23.5k"),
                                          ("456000", "456k"), ("999999", "1M"), ("1250000", "1.25M"), ("n/a", "")])
def test_rates_keep_three_significant_digits(value, shown):
    """tok/s to three digits: a CPU wave at 1.4k and 2.4k tok/s no longer reads 1k and 2k."""
    assert results._rate(value) == shown


def test_vs_best_compares_the_same_stage_and_tokenizer(tmp_path, capsys):
    ledger = new_ledger(tmp_path / "results.tsv")
    add(ledger, val_bpb=1.00, commit="0000001")                   # 1 (each commit another idea)
    add(ledger, val_bpb=0.95, commit="0000002")                   # 2: the best of pretrain/TOK
    add(ledger, val_bpb=0.90, commit="0000003", tokenizer=TOK2)   # 3: lower, but another tokenizer
    add(ledger, val_bpb=None, commit="0000004", status="crash")   # 4: no val_bpb
    add(ledger, val_bpb=0.80, commit="0000005", status="diverged")  # 5: not ok: never the best
    add(ledger, val_bpb=0.97, commit="0000006")                   # 6
    lines = view(capsys, ledger)
    cells = {int(line.split()[0]): line for line in lines if line.split() and line.split()[0].isdigit()}
    assert "+0.0500" in cells[1] and "+0.0200" in cells[6]
    assert "-0.0200" in cells[2]  # the best: ahead of the runner-up (#6) by 0.02
    assert "0.9000" in cells[3] and "+0." not in cells[3] and "-0." not in cells[3]  # alone in its tokenizer
    assert "n/a" in cells[4] and "crash" in cells[4]
    assert any(line.startswith("pretrain/1a2b3c4d: best #2 0.9500; noise not measured") for line in lines)
    unwrapped = " ".join(" ".join(lines).split())
    assert "at its commit 0000002, `python train.py +experiment=quickstart seed=1,2,3 -m`" in unwrapped

    best = view(capsys, ledger, "--best")
    assert best[0] == f"best of stage pretrain, tokenizer {TOK} (3 ok runs of 5):"
    assert best[1:3] == ["  row: 2", f"  time: {results.read(ledger).rows[1]['time']}"]
    assert "  val_bpb: 0.950000" in best and "  ahead_of_next: #6 by 0.0200 val_bpb" in best
    assert f"best of stage pretrain, tokenizer {TOK2} (1 ok runs of 1):" in best
    assert view(capsys, ledger, "--best", "--stage", "pretrain", "--since", "6")[1] == "  row: 6"


def test_a_rerun_of_the_best_is_not_its_runner_up(tmp_path, capsys):
    """A bit-for-bit rerun of the best row (python -m autolab.rerun on the CPU) is the same run again: the
    best still leads the runner-up, not `+0.0000` against its own rerun."""
    ledger = new_ledger(tmp_path / "results.tsv")
    best = {"commit": "0000002", "overrides": "+experiment=quickstart seed=1"}
    add(ledger, val_bpb=0.95, **best)                                    # 1: the best
    add(ledger, val_bpb=0.97, commit="0000006")                          # 2: the runner-up
    add(ledger, val_bpb=0.95, **best, description="rerun of row 1")      # 3: row 1 again, bit for bit
    cells = {int(line.split()[0]): line for line in view(capsys, ledger) if line.split() and line.split()[0].isdigit()}
    assert "-0.0200" in cells[1] and "+0.0200" in cells[2]


def test_noise_groups_repeats_and_marks_gaps_within_it(tmp_path, capsys):
    ledger = new_ledger(tmp_path / "results.tsv")
    base = "+experiment=quickstart schedule.peak_lr=4e-3"
    for seed, v in ((1, 1.00), (2, 1.02), (3, 1.04)):   # 1-3: mean 1.02, std 0.02, range 0.04
        add(ledger, val_bpb=v, overrides=f"{base} seed={seed}")
    add(ledger, val_bpb=0.90, commit="def5678")          # 4 \ the other group: std 0.04 / sqrt(2)
    add(ledger, val_bpb=0.94, commit="def5678")          # 5 /
    add(ledger, val_bpb=0.99, overrides=f"{base} seed=4", patch="0a1b2c3d")   # 6: other code: no group
    add(ledger, val_bpb=0.98, overrides=f"{base} model.n_embd=384 seed=1")     # 7: other config
    add(ledger, val_bpb=0.91, commit="def5678", status="crash")                # 8: not ok
    add(ledger, val_bpb=0.88, commit="def5678", tokenizer=TOK2)                # 9: another tokenizer
    add(ledger, val_bpb=1.02, overrides=f"{base} seed=2", description="rerun of row 2")  # 10: bit-identical: not noise

    found = results.groups(results.read(ledger).rows)
    assert [[r["row"] for r in g.rows] for g in found] == [[1, 2, 3], [4, 5]]
    assert found[0].mean == pytest.approx(1.02) and found[0].std == pytest.approx(0.02)
    assert found[0].range == pytest.approx(0.04) and found[1].std == pytest.approx(0.04 / math.sqrt(2))
    pooled = results.noise(found)[("pretrain", TOK)]
    assert pooled.std == pytest.approx(math.sqrt((2 * 0.02 ** 2 + 1 * 0.0008) / 3))  # 0.023094
    assert pooled.threshold == pytest.approx(2 * pooled.std)

    lines = view(capsys, ledger, "--noise")
    assert lines[1].split()[:6] == ["pretrain", TOK[:9], "3", "1.0200", "0.0200", "0.0400"]
    assert lines[2].split()[2:6] == ["2", "0.9200", "0.0283", "0.0400"]
    assert lines[-1].startswith("pooled pretrain/1a2b3c4d: std 0.0231 from 2 groups, 5 runs; gaps under 0.0462")

    table = view(capsys, ledger)
    cells = {int(line.split()[0]): line for line in table if line.split() and line.split()[0].isdigit()}
    assert "+0.0400~" in cells[5]   # 0.94 - 0.90 < 0.0462: within noise
    assert "-0.0400~" in cells[4]   # the best leads by 0.04: within noise too
    assert "+0.1000 " in cells[1] + " "   # 1.00 - 0.90: beyond noise, no mark
    assert "pretrain/1a2b3c4d: best #4 0.9000; run-to-run std 0.0231 (5 runs in 2 groups: --noise); " \
           "~ if |vs best| < 0.0462" in table
    assert any("its lead is within noise" in line for line in view(capsys, ledger, "--best"))


def test_rows_from_before_the_new_columns_still_read(tmp_path, capsys):
    old = [c for c in report.LEDGER_COLUMNS if c not in NEW_COLUMNS]
    base = {"commit": "abc1234", "dirty": "clean", "stage": "pretrain", "experiment": "quickstart",
            "val_bpb": "1.000000", "tokenizer": TOK, "status": "ok", "num_steps": "600", "description": "baseline"}
    a = run_dir(tmp_path / "a")
    (a / ".hydra" / "overrides.yaml").write_text("- +experiment=quickstart\n- seed=3\n- description=baseline\n")
    rows = [base, base, {**base, "dirty": "dirty", "output_dir": str(a), "val_bpb": "0.900000"}]
    text = "\n".join("\t".join(r.get(c, "") for c in old) for r in [dict(zip(old, old)), *rows]) + "\n"
    ledger = tmp_path / "results.tsv"
    ledger.write_text(text)  # an old ledger: no overrides, patch, tokens_per_second columns
    lines = view(capsys, ledger)
    assert rows_shown(lines) == [1, 2, 3] and lines[1].rstrip().endswith("baseline")
    assert "pretrain/1a2b3c4d: best #3 0.9000; noise not measured: this ledger predates the overrides column " \
           "(--noise)" in lines
    assert view(capsys, ledger, "--noise")[0].endswith("runs cannot be grouped by config, so noise is not measured; "
                                                      "start a new ledger (ledger=...) to measure it")
    diff = view(capsys, ledger, "--diff", "1", "3")
    assert "  #1: (not recorded)" in diff  # no output dir
    assert "  #3: +experiment=quickstart seed=3  (from .hydra/overrides.yaml)" in diff
    assert "#3: its tree was dirty and the row predates code.patch: code not compared" in diff
    assert view(capsys, ledger, "--diff", "1", "2")[-1] == "code: same code"  # clean, same commit

    # the same rows once a newer run has appended to the ledger: the new columns added, their cells empty
    new = [c for c in every_column() if c not in old]
    lines = text.splitlines()
    padded = [lines[0] + "\t" + "\t".join(new), *(line + "\t" * len(new) for line in lines[1:])]
    ledger.write_text("\n".join(padded) + "\n")
    add(ledger, val_bpb=0.95)
    assert results.groups(results.read(ledger).rows) == []  # 1 and 2 stay unknown
    padded = view(capsys, ledger)
    assert rows_shown(padded) == [1, 2, 3, 4] and "noise not measured (no config run twice)" in " ".join(padded)
    assert "  #3: +experiment=quickstart seed=3  (from .hydra/overrides.yaml)" in \
        view(capsys, ledger, "--diff", "1", "3")


def test_diff_shows_changed_keys_and_code(tmp_path, capsys):
    ledger = new_ledger(tmp_path / "results.tsv")
    patch_a = "--- a/src/x.py\n+++ b/src/x.py\n@@ -1 +1 @@\n-lr = 1\n+lr = 2\n"
    patch_b = "--- a/src/x.py\n+++ b/src/x.py\n@@ -1 +1 @@\n-lr = 1\n+lr = 3\n"
    a = run_dir(tmp_path / "a", lr=2e-3, patch=patch_a)
    b = run_dir(tmp_path / "b", lr=4e-3, patch=patch_b)
    c = run_dir(tmp_path / "c", lr=4e-3)
    add(ledger, val_bpb=1.0, output_dir=str(a), patch="aaaa1111", dirty="dirty",
        overrides="+experiment=quickstart schedule.peak_lr=2e-3")
    add(ledger, val_bpb=0.9, output_dir=str(b), patch="bbbb2222", dirty="dirty",
        overrides="+experiment=quickstart schedule.peak_lr=4e-3")
    add(ledger, val_bpb=0.9, output_dir=str(c), commit="fed9876")
    add(ledger, val_bpb=0.9, output_dir=str(tmp_path / "gone"), commit="fed9876")

    lines = view(capsys, ledger, "--diff", "1", str(b))  # a row number and an output dir
    assert lines[0] == "#1 -> #2"
    assert "  #2: +experiment=quickstart schedule.peak_lr=4e-3" in lines
    assert "config: 2 keys differ" in lines
    assert "  schedule.peak_lr: 0.002 -> 0.004" in lines
    assert "code: same commit abc1234; the diff of their code.patch files:" in lines
    assert "-+lr = 2" in lines and "++lr = 3" in lines

    same = view(capsys, ledger, "--diff", "3", "-2")
    assert "config: 0 keys differ" in same and "code: same code" in same
    other = view(capsys, ledger, "--diff", "2", "3")
    assert any(line.startswith("code: commit abc1234 -> fed9876 (`git diff abc1234 fed9876`") for line in other)
    assert other[-1].startswith("-+lr = 3")  # #2's patch against #3's clean tree
    add(ledger, val_bpb=0.9, output_dir=str(c), commit="0123abc")  # 5
    assert view(capsys, ledger, "--diff", "3", "5")[-1] == "  none (both trees were clean)"
    missing = view(capsys, ledger, "--diff", "3", "4")  # its dir is gone: one line, no traceback
    assert f"#4: no config at {tmp_path / 'gone' / '.hydra' / 'config.yaml'}: config not compared" in missing

    (b / "code.patch").unlink()
    assert any(line.startswith("#2: its code.patch (patch bbbb2222) is missing") for line in
               view(capsys, ledger, "--diff", "1", "2"))


def test_row_ref_resolves_numbers_and_dirs_or_says_why(tmp_path):
    ledger = new_ledger(tmp_path / "results.tsv")
    out = run_dir(tmp_path / "run")
    add(ledger, val_bpb=1.0, output_dir=str(out), status="requeued")
    add(ledger, val_bpb=0.9)
    add(ledger, val_bpb=0.8, output_dir=str(out))  # the same dir again: its last row wins
    with ledger.open("a") as f:
        f.write("not a row\n")
    rows = results.read(ledger).rows
    assert results.row_ref(rows, "2")["val_bpb"] == "0.900000"
    assert results.row_ref(rows, "#2") is results.row_ref(rows, 2)
    assert results.row_ref(rows, "-1")["row"] == 3 and results.row_ref(rows, "#-3")["row"] == 1
    assert results.row_ref(rows, str(out) + "/")["row"] == 3
    assert results.row_ref(report.read_ledger(ledger)[:3], "1")["status"] == "requeued"  # report's rows too
    with pytest.raises(UserError, match=r"no row 9 in the ledger \(it has rows 1-3\)"):
        results.row_ref(rows, "9")
    with pytest.raises(UserError, match=r"row 4 is malformed"):
        results.row_ref([*rows, {"row": 5}], "4")
    for bad in (str(tmp_path / "elsewhere"), "--3", "12b"):
        with pytest.raises(UserError, match="neither a row number nor the output_dir of a row"):
            results.row_ref(rows, bad)
    with pytest.raises(UserError, match=r"row -4: the ledger has only 3 rows"):
        results.row_ref(rows, "-4")


def test_plot_writes_a_png(tmp_path, capsys):
    ledger = new_ledger(tmp_path / "results.tsv")
    for i, v in enumerate([1.00, 0.98, 0.99, None, 0.97, 0.975, 0.96, 1.5]):
        add(ledger, val_bpb=v, status="crash" if v is None else "ok", overrides=f"schedule.peak_lr={i}e-3",
            tokenizer=TOK2 if i == 6 else TOK)
    add(ledger, val_bpb=0.99, overrides="schedule.peak_lr=0e-3")  # a repeat: a noise band
    png = tmp_path / "progress.png"
    lines = view(capsys, ledger, "--plot", str(png))
    assert lines == [f"plot: {png} (9 runs, 4 kept, 1 not ok)"]  # kept: 1.00, 0.98, 0.97; TOK2 its own 0.96
    assert results.main(["--ledger", str(ledger), "--plot", str(tmp_path / "no" / "such" / "dir.png")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --plot {tmp_path / 'no' / 'such' / 'dir.png'}: cannot write it")
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 400 and image.shape[1] >= 800


def test_malformed_rows_are_skipped_and_counted(tmp_path, capsys):
    ledger = new_ledger(tmp_path / "results.tsv")
    add(ledger, val_bpb=1.0)
    columns = ledger.read_text().splitlines()[0].split("\t")
    bad_bpb = ["x"] * len(columns)
    bad_bpb[columns.index("val_bpb")] = "fast"
    with ledger.open("a") as f:
        f.write("2026-12-06 INFO some other tool's log line\n")  # wrong column count
        f.write("\t".join(bad_bpb) + "\n")                        # non-numeric val_bpb
        f.write(ledger.read_text().splitlines()[0] + "\n")          # a second header (two ledgers catted)
        f.write("\n")                                               # a blank line: nothing to count
    add(ledger, val_bpb=0.9)
    lines = view(capsys, ledger)
    assert rows_shown(lines) == [1, 6]
    assert lines[-1].startswith("skipped 3 malformed rows (#2, #3, #4)")
    assert view(capsys, ledger, "--best")[-1].startswith("skipped 3 malformed rows")


def test_the_command_runs_and_a_missing_ledger_is_one_error_line(tmp_path):
    ledger = new_ledger(tmp_path / "results.tsv")
    add(ledger, val_bpb=1.0, description="baseline")
    ok = subprocess.run([sys.executable, "-m", "autolab.results", "-n", "5"], cwd=tmp_path,
                        capture_output=True, text=True)  # results.tsv in the cwd: the default
    assert ok.returncode == 0 and ok.stdout.splitlines()[1].split()[0] == "1" and "baseline" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "autolab.results", "--ledger", "nope.tsv"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("error: no ledger at nope.tsv") and len(missing.stderr.splitlines()) == 1
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    assert results.main(["--ledger", str(tmp_path / "other.tsv")]) == 2
    (tmp_path / "empty.tsv").write_text("")
    assert results.main(["--ledger", str(tmp_path / "empty.tsv")]) == 0
