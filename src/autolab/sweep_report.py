"""A Hydra callback that ends every multirun with a table and a plot of its jobs.

conf/train.yaml installs it as `hydra.callbacks.report`; a sweep file (see sweeps/replay.yaml) may
name the parameters, columns and axes, and a column that orders the table (sweeps/search_lr.yaml:
val_bpb, the best trial first). It runs once, in the process that launched the sweep, after every
job has finished (on SLURM too: the launcher waits for the whole array; under hydra/sweeper=optuna,
after the last wave). It reads this sweep's rows from the ledger (the rows whose output dir lies in
the sweep dir; a requeued job's last row), takes each job's swept values from its saved config,
lists a job that left no row at all, and writes `summary.md` (printed too), `summary.tsv` and, when
x and y are numbers, `summary.png` (y against x, one labelled point per job) into the sweep dir.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from autolab import report

DEFAULT_COLUMNS = ("val_bpb", "num_steps", "status", "job_id")


class SweepReport(Callback):
    def __init__(self, params: list[str] | None = None, columns: list[str] | None = None, x: str | None = None,
                 y: str = "val_bpb", xlabel: str = "", ylabel: str = "", sort: str | None = None):
        self.params, self.columns = list(params or []), list(columns or DEFAULT_COLUMNS)
        self.x, self.y, self.xlabel, self.ylabel, self.sort = x, y, xlabel, ylabel, sort

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        ledger = Path(config.ledger).resolve()
        last: dict[str, dict] = {}  # output dir -> its last row (a requeued job writes more than one)
        for r in report.read_ledger(ledger) if ledger.exists() else []:
            if r.get("output_dir", "").startswith(str(sweep_dir) + "/"):
                last[r["output_dir"]] = r
        for job in sorted(sweep_dir.glob("*/.hydra/config.yaml")):  # a job that never wrote a row
            last.setdefault(str(job.parent.parent), {"status": "no row (see its log in .submitit/)"})
        params = self.params or swept_keys(config)
        table = []
        for out, r in last.items():
            table.append({**{p: _job_value(Path(out), p) for p in params}, **{c: r.get(c, "") for c in self.columns},
                          **({self.sort: r.get(self.sort, "")} if self.sort else {})})
        if not table:
            return
        columns = [c for c in self.columns if any(t[c] for t in table)]  # e.g. no job_id outside a scheduler
        table.sort(key=lambda t: [str(t[p]) for p in params])  # the plot's line runs in this order
        rows = table if not self.sort else sorted(  # e.g. val_bpb: lowest first, jobs without a number last
            table, key=lambda t: float(t[self.sort]) if _number(t.get(self.sort)) else float("inf"))
        header = [*params, *columns]
        md = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        md += ["| " + " | ".join(str(t[h]) for h in header) + " |" for t in rows]
        (sweep_dir / "summary.md").write_text("\n".join(md) + "\n")
        (sweep_dir / "summary.tsv").write_text(
            "\n".join("\t".join(str(t[h]) for h in header) for t in [dict(zip(header, header)), *rows]) + "\n"
        )
        print("\n".join(md))
        x = self.x or next(iter(params), None)
        if x and _plot(table, params, x, self.y, sweep_dir / "summary.png", self.xlabel or x, self.ylabel or self.y):
            print(f"sweep summary: {sweep_dir / 'summary.md'}, {sweep_dir / 'summary.png'}")
        else:
            print(f"sweep summary: {sweep_dir / 'summary.md'}")


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a multirun sweeps: its sweep overrides (key=a,b) and a sweep file's hydra.sweeper.params."""
    keys = list(OmegaConf.select(config, "hydra.sweeper.params", default=None) or {})
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys += [o.key_or_group for o in overrides if o.is_sweep_override() and o.key_or_group not in keys]
    return [k.lstrip("+~") for k in keys]


def _job_value(out: Path, key: str):
    """A job's value of a swept key from its saved config, or its choice of a config group (experiment=...)."""
    config, hydra = (out / ".hydra" / "config.yaml"), (out / ".hydra" / "hydra.yaml")
    value = OmegaConf.select(OmegaConf.load(config), key) if config.exists() else None
    if value is None and hydra.exists():
        value = OmegaConf.select(OmegaConf.load(hydra), "hydra.runtime.choices").get(key)
    return value


def _plot(table: list[dict], params: list[str], x: str, y: str, path: Path, xlabel: str, ylabel: str) -> bool:
    """y against x, one labelled point per job; False (no plot) unless at least two points are numbers."""
    points = [(float(t[x]), float(t[y]), t) for t in table if _number(t.get(x)) and _number(t.get(y))]
    if len(points) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    style = "o-" if len(params) == 1 else "o"  # a line along one swept key; points for a search of several
    ax.plot([p[0] for p in points], [p[1] for p in points], style, color="tab:blue")
    xs = [p[0] for p in points]
    middle = (min(xs) + max(xs)) / 2
    if min(xs) > 0 and max(xs) >= 10 * min(xs):  # a rate searched on a log scale
        ax.set_xscale("log")
        middle = (min(xs) * max(xs)) ** 0.5
    for px, py, t in points:  # each point names its job's values; a label leans away from the edge it is near
        label = ax.annotate(", ".join(f"{p}={_short(t[p])}" for p in params), (px, py), textcoords="offset points",
                            xytext=(6, 6) if px <= middle else (-6, 6), ha="left" if px <= middle else "right",
                            fontsize=8)
        label.set_in_layout(False)  # long labels must not squeeze the axes
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _short(value) -> str:
    """A label's value: a sampled float to 3 significant digits (0.0016051911 -> 0.00161)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
