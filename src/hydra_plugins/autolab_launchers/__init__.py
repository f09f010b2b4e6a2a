"""Sweeps on a SLURM cluster or on one many-GPU machine, through hydra-submitit-launcher.

    python train.py -m hydra/launcher=slurm +experiment=quickstart optim.weight_decay=0,0.1
    python train.py -m hydra/launcher=local +experiment=quickstart optim.weight_decay=0,0.1,0.2,0.3

The presets (conf/hydra/launcher/slurm.yaml, local.yaml) extend the plugin's own `submitit_slurm`
and `submitit_local` configs and select the two launchers below (Hydra takes launchers only from
the `hydra_plugins` package, and imports it at start-up: that registers the `local` preset's
schema), which keep the plugin's job
function (each job re-composes its config and runs train.py's task, so a requeued job continues in
the same output dir) and change what happens around it:

- `SlurmLauncher` checks the cluster (sbatch on PATH, the partition, GPUs on it, accounting:
  submitit sees job states only through `sacct`) and answers a mistake in one line; it submits one
  job array (`array_parallelism` at a time).
- `LocalLauncher` runs `slots` jobs at once, each pinned to its own GPUs through
  CUDA_VISIBLE_DEVICES: one GPU a job by default, or one CPU job at a time on a machine without
  GPUs. submitit's local executor alone starts every job at once, all on GPU 0.
- Both check when Hydra sets them up, before the sweeper makes the sweep dir: a refused launch
  leaves no `multirun/<date>/<time>/` behind.
- Both wait for every job and never let one lost job (killed by SLURM, out of memory) abort the
  sweep: it gets a `lost` row in the ledger pointing at its log, and the sweep report still runs.
- Both take one `launch()` per batch from a sweeper that adapts (hydra/sweeper=optuna,
  sweeps/search_lr.yaml): job numbers go on across batches, which share the sweep dir.
"""


import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from autolab import report
from autolab.errors import first_line

log = logging.getLogger(__name__)


@dataclass
class LocalSlotsConf(LocalQueueConf):
    """The plugin's local queue, plus how many jobs share the machine at once."""

    _target_: str = "hydra_plugins.autolab_launchers.LocalLauncher"
    slots: Optional[int] = None  # jobs at once; None: the GPUs / gpus_per_node (1 on a machine without GPUs)


ConfigStore.instance().store(group="hydra/launcher", name="autolab_local", node=LocalSlotsConf, provider="autolab")


class _Launcher(BaseSubmititLauncher):
    """Submit every job, wait for all of them, and turn a job that left no result into a ledger row."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.check()  # here, before the sweeper makes the sweep dir: a refused launch leaves no folder behind

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # once per batch under a sweeper that adapts: job numbers go on from initial_job_idx
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        calls = [
            (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            for idx, overrides in enumerate(job_overrides, initial_job_idx)
        ]
        for call in calls:
            log.info(f"\t#{call[2]} : {' '.join(call[0])}")
        jobs = self.submit(calls)
        return [self._result(job, call) for job, call in zip(jobs, calls)]

    def check(self) -> None:
        """Refuse, in one line, what would fail after submission."""

    def submit(self, calls: list[tuple]) -> list:
        raise NotImplementedError

    def _queue_parameters(self, drop: Sequence[str] = ()) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in ("submitit_folder", *drop)}

    def _result(self, job, call: tuple) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as e:  # the job died without writing its result: SIGKILL, OOM, node failure, cancel
            overrides, _, idx = call[:3]
            why = first_line(e)
            log.error(f"job #{idx} ({job.job_id}) ended without a result: {why}; its log: {job.paths.stdout}")
            self._lost_row(overrides, idx, job, why)
            ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
            ret.return_value = None  # a failed job's return (run.main): the sweep goes on, a search counts a failed trial
            return ret

    def _lost_row(self, overrides: list[str], idx: int, job, why: str) -> None:
        """A ledger row for a job that could not write its own, unless it wrote a final one before dying."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.num = idx
        out = str((Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)).resolve())
        ledger = Path(str(cfg.ledger)).resolve()  # as the job resolves it: jobs start where the sweep was launched
        rows = [r for r in report.read_ledger(ledger) if r.get("output_dir") == out] if ledger.exists() else []
        if rows and rows[-1].get("status") != "requeued":
            return
        report.append_row(ledger, {
            "status": "lost", "output_dir": out, "stage": OmegaConf.select(cfg, "stage.name"),
            "experiment": cfg.hydra.runtime.choices.get("experiment") or "default",
            "description": f"{cfg.get('description') or ''} [no result: {why}]".strip(),
            "job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
        })


class SlurmLauncher(_Launcher):
    _EXECUTOR = "slurm"

    def check(self) -> None:
        p = self.params
        if shutil.which("sbatch") is None:
            _refuse("sbatch is not on PATH: run the sweep from a SLURM login node, or use hydra/launcher=local")
        partitions = _run(["sinfo", "-h", "-o", "%R"]).split()
        if p.get("partition") and p["partition"] not in partitions:
            _refuse(f"hydra.launcher.partition={p['partition']}: this cluster has no such partition "
                    f"(sinfo lists: {', '.join(partitions) or 'none'}); set it in conf/hydra/launcher/slurm.yaml")
        if p.get("gpus_per_node") or p.get("gpus_per_task"):
            gres = _run(["sinfo", "-h", "-o", "%G"] + (["-p", p["partition"]] if p.get("partition") else []))
            if "gpu" not in gres:
                _refuse(f"hydra.launcher.gpus_per_node={p.get('gpus_per_node')}: partition "
                        f"{p.get('partition') or '(default)'} has no GPUs (sinfo gres: {gres.strip() or 'none'}); "
                        "pick a GPU partition or set hydra.launcher.gpus_per_node=0 for CPU jobs")
        acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now"], capture_output=True, text=True, timeout=60)
        if acct.returncode != 0:
            why = (acct.stderr or acct.stdout).strip().splitlines()[-1:] or ["sacct failed"]
            _refuse(f"SLURM accounting is off ({why[0]}): submitit follows jobs through sacct, so a killed "
                    "job would hang the sweep; ask for slurmdbd, or use hydra/launcher=local")

    def submit(self, calls: list[tuple]) -> list:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = self._queue_parameters(drop=("max_num_timeout",))
        executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="slurm",
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
        jobs = executor.map_array(self, *zip(*calls))
        print(f"submitted {len(jobs)} jobs to SLURM: array {jobs[0].job_id.split('_')[0]} "
              f"(squeue -j {jobs[0].job_id.split('_')[0]}); logs in {Path(str(jobs[0].paths.folder)).parent}", flush=True)
        return jobs


class LocalLauncher(_Launcher):
    _EXECUTOR = "local"

    def __init__(self, slots: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.slots = slots

    def check(self) -> None:
        gpus = visible_gpus()
        per_job = self.params.get("gpus_per_node")
        per_job = int(per_job) if per_job is not None else min(1, len(gpus))  # null: one GPU each, none without
        if per_job > len(gpus):
            _refuse(f"hydra.launcher.gpus_per_node={per_job} but this machine shows {len(gpus)} GPUs: "
                    "lower it (0 runs the jobs on the CPU)")
        slots = self.slots or (len(gpus) // per_job if per_job else 1)
        if slots * per_job > len(gpus):
            _refuse(f"hydra.launcher.slots={slots} x gpus_per_node={per_job} needs more than the {len(gpus)} GPUs here")
        self._per_job = per_job
        self._gpus = [tuple(gpus[i * per_job:(i + 1) * per_job]) for i in range(slots)]  # per slot

    def submit(self, calls: list[tuple]) -> list:
        import submitit

        slots, per_job = len(self._gpus), self._per_job
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        params = self._queue_parameters(drop=("gpus_per_node", "cpus_per_task"))
        threads = self.params.get("cpus_per_task")
        setup = list(params.pop("setup", None) or []) + ([f"export OMP_NUM_THREADS={threads}"] if threads else [])
        print(f"running {len(calls)} jobs, {slots} at a time"
              + (f", on GPUs {' | '.join(','.join(map(str, g)) for g in self._gpus)}" if per_job else ""), flush=True)
        jobs: list = [None] * len(calls)
        pending, running = deque(range(len(calls))), {}  # slot -> index of the job it runs
        while pending or running:
            for slot in [s for s in range(slots) if s not in running]:
                if not pending:
                    break
                i = pending.popleft()
                executor.update_parameters(**params, setup=setup, gpus_per_node=per_job, visible_gpus=self._gpus[slot])
                jobs[i], running[slot] = executor.submit(self, *calls[i]), i
            time.sleep(0.2)
            running = {s: i for s, i in running.items() if not jobs[i].done()}
        return jobs


def visible_gpus() -> list[int]:
    """GPU indices this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    return list(range(len([line for line in _run(["nvidia-smi", "-L"]).splitlines() if line.startswith("GPU ")])))


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
