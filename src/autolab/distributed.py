"""Several processes, one run: `trainer.devices=N` (and `trainer.num_nodes`) under Lightning's DDP.

Lightning's own way to get N processes re-runs the script in N-1 children, which under Hydra re-runs
the whole app, a multirun's whole sweep included (hydra#2070). So the processes come from us:
- `python train.py trainer.devices=2` (one machine): the Hydra job is rank 0; it starts the other
  ranks itself (`python -m autolab.worker`) on the job's resolved config, with torchrun's variables
  (MASTER_ADDR/PORT, RANK, LOCAL_RANK, WORLD_SIZE). The children die with it (PDEATHSIG) and write
  their output to `<run dir>/rank<k>.log`.
- a SLURM job with N tasks (`hydra.launcher.tasks_per_node=N`): srun starts every rank; each is a
  Hydra job, and SLURM_PROCID says which one.
Either way Lightning sees processes created outside it and launches nothing.

One run, whatever N: every rank draws the same global batch order and reads only its own slice of
each batch (`rank_slice`), so the replay ratio holds over the global batch and one data position
resumes every rank; `data.batch_size` (`dpo.batch_size`) is the global batch. Rank 0 alone measures,
logs, writes snapshots, the checkpoint, the summary and the ledger row, and decides when to stop:
`RankSync` hands its training time and stop decision to every rank after each step, so all ranks
take the same learning rate and stop on the same step.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from autolab.errors import UserError
from autolab.report import exit_code

# Our own ranks carry this beside torchrun's variables: the payload (config) they were started on.
WORKER_ENV = "AUTOLAB_WORKER"


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0
    launcher: str = "none"  # none (one process) | spawn (this rank 0 starts the others) | worker | slurm

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_of(trainer_cfg) -> World:
    """This process's place among the run's processes, from the config and the environment."""
    size = int(trainer_cfg.devices) * int(trainer_cfg.num_nodes)
    if size == 1:
        return World()
    env = os.environ
    if WORKER_ENV in env:
        return World(size, int(env["RANK"]), int(env["LOCAL_RANK"]), "worker")
    if int(env.get("SLURM_NTASKS", "1")) == size and "SLURM_PROCID" in env:
        return World(size, int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
    if int(trainer_cfg.num_nodes) > 1:
        raise UserError(
            f"trainer.num_nodes={trainer_cfg.num_nodes} needs one process per device started by SLURM: run it with "
            f"hydra/launcher=slurm hydra.launcher.nodes={trainer_cfg.num_nodes} "
            f"hydra.launcher.tasks_per_node={trainer_cfg.devices} (or set trainer.num_nodes=1)"
        )
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        raise UserError(f"this SLURM job has {env['SLURM_NTASKS']} tasks but trainer.devices x trainer.num_nodes is "
                        f"{size}: make hydra.launcher.tasks_per_node x nodes match it")
    return World(size, 0, 0, "spawn")


def env_rank() -> int:
    """This process's rank as its launcher set it: ours (a worker), srun's (a task of several), else 0."""
    if WORKER_ENV in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", 0))
    return 0


def rank_slice(batch_size: int, world: World, key: str) -> slice:
    """The rows of a global batch this rank trains on."""
    if batch_size % world.size:
        raise UserError(f"{key}={batch_size} does not split over {world.size} processes: make it a multiple of {world.size} "
                        f"({key} is the global batch)")
    part = batch_size // world.size
    return slice(world.rank * part, (world.rank + 1) * part)


def environment(world: World):
    """Lightning's cluster environment for this world: SLURM's for srun's tasks (without Lightning's
    own requeue: preemption.py owns it), else the plain one reading our variables. None: Lightning's
    choice, for one process."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    if world.launcher == "slurm" or (world.size == 1 and SLURMEnvironment.detect()):
        return SLURMEnvironment(auto_requeue=False)
    return LightningEnvironment() if world.size > 1 else None


@contextmanager
def processes(world: World, payload: dict, out: Path):
    """Rank 0 of a `spawn` world: starts ranks 1..N-1 on `payload` (the resolved config) for the length
    of the block, with torchrun's variables set here too; stops any still running at the end."""
    from omegaconf import OmegaConf

    payload_path = out / ".autolab" / "worker.yaml"
    payload_path.parent.mkdir(parents=True, exist_ok=True)
    payload_path.write_text(OmegaConf.to_yaml(OmegaConf.create(payload)))
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world.size),
              "NODE_RANK": "0", "LOCAL_WORLD_SIZE": str(world.size)}
    saved = {k: os.environ.get(k) for k in [*shared, "RANK", "LOCAL_RANK"]}
    os.environ.update(shared, RANK="0", LOCAL_RANK="0")
    children = []
    try:
        for rank in range(1, world.size):
            log = open(out / f"rank{rank}.log", "ab")
            env = {**os.environ, **shared, "RANK": str(rank), "LOCAL_RANK": str(rank), WORKER_ENV: str(payload_path)}
            children.append(subprocess.Popen([sys.executable, "-m", "autolab.worker", str(payload_path)], env=env,
                                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent))
            log.close()
        yield children
    except BaseException as e:
        gone = failed_ranks(children, out)  # a rank that died takes the run down with it: say which
        if gone and not isinstance(e, UserError):  # (a bad input stops every rank alike: rank 0 says it)
            print(f"error: {gone}", file=sys.stderr)
        for child in children:
            child.kill()
        raise
    finally:
        for child in children:
            if child.poll() is None:
                try:
                    child.wait(timeout=30)  # after fit a rank has nothing left to do but exit
                except subprocess.TimeoutExpired:
                    child.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def failed_ranks(children: list, out: Path) -> str:
    """'' when every started rank ended well, else one line naming the first that did not."""
    for rank, child in enumerate(children, start=1):
        code = child.poll()
        if code not in (None, 0, exit_code("interrupted")):  # interrupted: stopped with rank 0
            return f"rank {rank} exited with code {code}: see {out / f'rank{rank}.log'}"
    return ""


class StreamDDP(DDPStrategy):
    """Lightning's DDP strategy with the model wrapped on the current CUDA stream. Lightning 2.6
    wraps it on a new side stream; every backward then meets DDP's AccumulateGrad nodes on another
    stream than its own, which torch (2.10+) warns costs a stream sync per step
    (Lightning-AI/pytorch-lightning#21567; fixed upstream by #21746, not released as of 2.6.6)."""

    def _setup_model(self, model: torch.nn.Module) -> DistributedDataParallel:
        return DistributedDataParallel(module=model, device_ids=self.determine_ddp_device_ids(), **self._ddp_kwargs)


# Without overlap, small buckets buy nothing: all gradients wait for the backward, then go in one
# all-reduce (on 2 H200s over NVLink: 230 GB/s of bus bandwidth for DDP's default 25 MB bucket, 292
# for all 200 MB of the GPT's gradients; benchmarks/ddp_step.py). More gradient than this: more buckets.
ONE_BUCKET_MB = 4096


def strategy(world: World, trainer_cfg, environment):
    """Lightning's strategy for this world: 'auto' for one process; else StreamDDP, or for
    `trainer.strategy=fsdp` Lightning's ModelParallelStrategy, whose device mesh the stage shards
    its model over (`shard`). With torch.compile, `trainer.overlap_grad_sync` lets the compiler
    split the graph at DDP's gradient buckets so each bucket's all-reduce overlaps the rest of the
    backward (torch._dynamo's DDPOptimizer), or keeps one graph and one bucket, all-reduced once
    after the backward."""
    if world.size == 1:
        return "auto"
    if sharded(world, trainer_cfg):
        from lightning.pytorch.strategies import ModelParallelStrategy

        fsdp = ModelParallelStrategy(data_parallel_size=world.size, tensor_parallel_size=1)
        fsdp.cluster_environment = environment
        return fsdp
    torch._dynamo.config.optimize_ddp = bool(trainer_cfg.overlap_grad_sync)
    buckets = {} if trainer_cfg.overlap_grad_sync else {"bucket_cap_mb": ONE_BUCKET_MB}
    return StreamDDP(cluster_environment=environment, **buckets)



def sharded(world: World, trainer_cfg) -> bool:
    """Whether this run shards its model (FSDP) rather than copying it to every process."""
    return world.size > 1 and trainer_cfg.strategy == "fsdp"


def shard(model: torch.nn.Module, mesh) -> None:
    """FSDP2 over `mesh`: each block of the model's layer list, then the rest (embeddings, head,
    final norm). Every rank keeps 1/N of each parameter, its gradient and its AdamW state, and
    gathers one block's whole weights only while that block runs."""
    from torch.distributed.fsdp import fully_shard

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    layers = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=[])
    for block in layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


_FULL = dict(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


def optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimiser's state to snapshot: its own for a whole model; for a sharded one the whole
    state gathered to rank 0 (every rank must call it), keyed by parameter names."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**_FULL))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """`optimizer_state`'s inverse: every rank reads the whole state and keeps its shard."""
    if not is_sharded(model):
        return optimizer.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


class Gathered:
    """Rank 0's whole copy of a sharded model, on its CPU, for what rank 0 alone does with weights
    (snapshots, curves, the final measurements and checkpoint). Calling it gathers the shards'
    current weights into the copy (every rank must call it; the others get None). A whole model
    passes through."""

    def __init__(self, fresh: Callable[[], torch.nn.Module], main: bool):
        self.fresh, self.main = fresh, main
        self.copy = None

    def __call__(self, model: torch.nn.Module) -> torch.nn.Module | None:
        if not is_sharded(model):
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(**_FULL))
        if not self.main:
            return None
        if self.copy is None:
            self.copy = self.fresh()
        self.copy.load_state_dict(state)
        return self.copy


def finish() -> None:
    """Leave no process group behind: the next job of a sweep in this process starts its own."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when its parent dies (a kill -9 of rank 0 ends the run)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class RankSync(L.Callback):
    """After every step, every rank takes rank 0's training time, stop decision and signal, over a
    small CPU (gloo) group beside the training one: the same learning rate, the same last step, the
    same snapshot step on every rank, without a GPU sync."""

    def __init__(self, budget, preemption):
        self.budget, self.preemption = budget, preemption
        self.group = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.group = torch.distributed.new_group(backend="gloo")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = self.preemption.received or 0
        state = torch.tensor([self.budget.training_seconds, float(trainer.should_stop), float(received)],
                             dtype=torch.float64)
        torch.distributed.broadcast(state, src=0, group=self.group)
        self.budget.training_seconds = float(state[0])
        trainer.should_stop = bool(state[1])
        if state[2] and self.preemption.received is None:
            self.preemption.received = int(state[2])

    def agree(self, flag: bool) -> bool:
        """Rank 0's answer to a yes/no question every rank asks at the same point."""
        answer = torch.tensor([float(flag)])
        torch.distributed.broadcast(answer, src=0, group=self.group)
        return bool(answer[0])

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.group is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group(self.group)
        self.group = None
