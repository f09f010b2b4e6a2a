"""The summary block and the ledger (with sixteen processes appending at once)."""

import multiprocessing as mp

from autolab import report


def test_summary_block_is_grepable():
    metrics = {"val_bpb": 1.234567891, "training_seconds": 300.04, "peak_vram_mb": None, "num_steps": 7,
               "status": "ok", "output_dir": "/tmp/run"}
    text = "some log line\n" + report.format_summary(metrics)
    lines = text.splitlines()
    assert lines[1] == "---"
    assert "val_bpb: 1.234568" in lines and "training_seconds: 300.04" in lines
    assert "peak_vram_mb: n/a" in lines and "num_steps: 7" in lines
    assert lines.index("val_bpb: 1.234568") < lines.index("training_seconds: 300.04")  # fixed order
    parsed = report.parse_summary(text)
    assert parsed["val_bpb"] == "1.234568" and parsed["output_dir"] == "/tmp/run"


def _append_many(args):
    path, worker = args
    for i in range(25):
        report.append_row(path, {"stage": "pretrain", "description": f"w{worker}-r{i}\twith\ttabs\nand newline",
                                 "val_bpb": 1.0 + worker})


def test_sixteen_processes_append_without_losing_or_breaking_rows(tmp_path):
    path = tmp_path / "results.tsv"
    report.append_row(path, {"stage": "first", "status": "ok"})
    with mp.get_context("spawn").Pool(16) as pool:
        pool.map(_append_many, [(str(path), w) for w in range(16)])
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 1 + 16 * 25
    assert all(line.count("\t") == len(report.LEDGER_COLUMNS) - 1 for line in lines)
    rows = report.read_ledger(path)
    assert rows[0]["stage"] == "first"
    seen = {r["description"].split(" ")[0] for r in rows[1:]}
    assert seen == {f"w{w}-r{i}" for w in range(16) for i in range(25)}


def test_an_older_ledger_keeps_its_layout_and_gains_the_new_columns(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text("time\tstage\tval_bpb\n2020\told\t1.0\n")
    report.append_row(path, {"stage": "pretrain", "val_bpb": 0.5, "status": "ok", "overrides": "seed=2"})
    header = path.read_text().splitlines()[0].split("\t")
    assert header[:3] == ["time", "stage", "val_bpb"] and set(header) == set(report.LEDGER_COLUMNS)
    rows = report.read_ledger(path)
    assert rows[0]["stage"] == "old" and rows[0]["val_bpb"] == "1.0" and rows[0]["overrides"] == "n/a"
    assert rows[1]["stage"] == "pretrain" and rows[1]["val_bpb"] == "0.500000" and rows[1]["overrides"] == "seed=2"
    report.append_row(path, {"stage": "again"})  # the header is extended once
    assert path.read_text().splitlines()[0].split("\t") == header and len(report.read_ledger(path)) == 3
