"""A Hydra callback that ends a multirun with a table and a plot of its jobs.

Configured in a sweep file (see sweeps/replay.yaml) under `hydra.callbacks`. At the end of the
multirun it reads this sweep's rows from the ledger (the rows whose output dir lies in the sweep
dir), takes each job's swept values from its saved config, and writes `summary.md` (printed too),
`summary.tsv` and `summary.png` (y against x, one labelled point per job) into the sweep dir.
"""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from autolab import report


class SweepReport(Callback):
    def __init__(self, params: list[str], columns: list[str], x: str, y: str, xlabel: str = "", ylabel: str = ""):
        self.params, self.columns = list(params), list(columns)
        self.x, self.y, self.xlabel, self.ylabel = x, y, xlabel or x, ylabel or y

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        ledger = Path(config.ledger).resolve()
        if not ledger.exists():
            return
        rows = [r for r in report.read_ledger(ledger) if r.get("output_dir", "").startswith(str(sweep_dir) + "/")]
        table = []
        for r in rows:
            saved = Path(r["output_dir"]) / ".hydra" / "config.yaml"
            job = OmegaConf.load(saved) if saved.exists() else OmegaConf.create()
            table.append({**{p: OmegaConf.select(job, p) for p in self.params}, **{c: r.get(c, "") for c in self.columns}})
        if not table:
            return
        table.sort(key=lambda t: [str(t[p]) for p in self.params])
        header = [*self.params, *self.columns]
        md = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        md += ["| " + " | ".join(str(t[h]) for h in header) + " |" for t in table]
        (sweep_dir / "summary.md").write_text("\n".join(md) + "\n")
        (sweep_dir / "summary.tsv").write_text(
            "\n".join("\t".join(str(t[h]) for h in header) for t in [dict(zip(header, header)), *table]) + "\n"
        )
        self._plot(table, sweep_dir / "summary.png")
        print("\n".join(md))
        print(f"sweep summary: {sweep_dir / 'summary.md'}, {sweep_dir / 'summary.png'}")

    def _plot(self, table: list[dict], path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        points = [(float(t[self.x]), float(t[self.y]), t) for t in table if _number(t[self.x]) and _number(t[self.y])]
        fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue")
        for x, y, t in points:
            ax.annotate(", ".join(f"{p}={t[p]}" for p in self.params), (x, y), textcoords="offset points",
                        xytext=(6, 6), fontsize=9)
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
