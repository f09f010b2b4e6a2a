"""One run of one stage: build -> fit -> evaluate -> report. The one place that wires things.

`train.py` calls `main(cfg)`. Whatever happens, the run prints its summary block and appends its
row to the ledger; a failure the user can fix is one line on stderr, and the exit code is non-zero
(in a multirun the other jobs go on: the ledger and each summary say which failed).

Starting points, kept apart:
- `init_from=<folder | hub id | experiment:NAME>` starts a *new* run from weights (fresh optimiser,
  schedule from progress 0). `experiment:NAME` is the checkpoint `+experiment=NAME` produces,
  trained once and cached under $AUTOLAB_CACHE/experiments/ by a hash of its config.
- `resume=<run dir>` (or a run dir that already holds a snapshot) *continues* that run: same
  config, weights, optimiser, LR position, data position, RNG, budget spent and W&B run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import prepare
from autolab import compile_cache, distributed, profiling, provenance, report, resume, start_scores
from autolab.config import check
from autolab.errors import DivergenceError, UserError, first_line
from autolab.preemption import Interrupted, Preemption
from autolab.stages.recipe import Context, recipe_of


_CHAIN: list[tuple[str, Path]] = []  # (experiment, output dir) of each experiment:NAME base this process used
_RESOLVED: dict[str, str] = {}  # experiment:NAME -> its checkpoint, as rank 0 resolved it (for the other ranks)


def resolved_checkpoints(checkpoints: dict[str, str]) -> None:
    """A rank started by rank 0 takes the checkpoints rank 0's experiment:NAME bases resolved to."""
    _RESOLVED.update(checkpoints)


def main(cfg: DictConfig) -> int | float | None:
    """Run one job. Alone: the exit code (non-zero: sys.exit). In a multirun: the job's val_bpb, what a
    sweeper that adapts (hydra/sweeper=optuna) minimises, or None for a job that failed, which
    hydra-optuna-sweeper records as a failed trial while the study goes on (NaN would abort it)."""
    code = run(cfg, experiment=_experiment_name(), identity=_run_identity())
    out = Path(cfg.get("resume") or cfg.output_dir)
    if _CHAIN and distributed.env_rank() == 0:  # a pipeline: every stage it stands on, then this one
        _print_chain([*_CHAIN, (_experiment_name(), out)], last={"stage": cfg.stage.name, "status": report.status_of(code)})
    if code == report.exit_code("interrupted") or (code and not _in_multirun()):  # a signal ends the process, sweep or not
        sys.exit(code)
    if _in_multirun() and distributed.env_rank() == 0:
        summary = out.expanduser() / "summary.json"  # the run's own record of its metrics
        return json.loads(summary.read_text()).get("val_bpb") if code == 0 and summary.exists() else None
    return code


def _print_chain(chain: list[tuple[str, Path]], last: dict) -> None:
    """The pipeline's table; `last`: this run's stage and status, for a run that wrote no summary.json (invalid)."""
    keys = ("val_bpb", "replay_val_bpb", "reward_accuracy", "win_rate", "preamble_prob", "num_steps", "status")
    print("\npipeline:")
    print("| experiment | stage | " + " | ".join(keys) + " |")
    print("|" + " --- |" * (len(keys) + 2))
    summaries = [json.loads(p.read_text()) if (p := Path(folder) / "summary.json").exists() else {} for _, folder in chain]
    summaries[-1] = summaries[-1] or last
    for (name, _), m in zip(chain, summaries):
        print(f"| {name} | {m.get('stage', '?')} | " + " | ".join(report.format_value(m.get(k), k) for k in keys) + " |")


def run(cfg: DictConfig, experiment: str = "", identity: dict | None = None) -> int:
    """`identity`: what says which run this is in the ledger: its overrides (a list) and, in a
    multirun, its sweep dir and job number (`_run_identity`)."""
    if distributed.env_rank() > 0:
        return _other_rank(cfg)
    t0 = time.time()
    source = provenance.code_state()  # the code as this run starts: its commit and code.patch
    ledger = Path(cfg.ledger).resolve()
    out = Path(cfg.output_dir).resolve()
    metrics: dict = {key: None for key in report.SUMMARY_KEYS}
    status, requeued = "crash", None
    facts = {"stage": cfg.stage.name, "experiment": experiment, "overrides": [], **(identity or {}),  # summary.json and the row
             "commit": source.commit, "dirty": source.dirty, "patch": source.patch_hash, "started_at": t0}
    with Preemption() as preemption:  # USR2 / SIGTERM: snapshot, then requeue or stop (preemption.py)
        try:
            if cfg.get("resume"):
                cfg = _resumed_config(cfg)
                out = Path(cfg.output_dir)
                facts.update(_saved_identity(out))  # the run's own experiment and overrides, not `resume=`
            check(cfg)  # every value check, before anything is loaded or written
            world = distributed.world_of(cfg.trainer)
            out.mkdir(parents=True, exist_ok=True)
            if not cfg.get("resume"):  # a resumed run's, once its snapshot proved to fit (_fit_and_evaluate)
                provenance.write_patch(source, out)
            with ExitStack() as ranks:  # the other ranks, when this one starts them: stopped on the way out
                _fit_and_evaluate(cfg, out, metrics, preemption, facts, world, ranks, source)
            status = "ok"
        except (UserError, prepare.PrepareError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = "invalid"
        except Interrupted as e:  # W&B closed before the requeue: SLURM stops its service process with the job
            requeued = preemption.requeue(before=lambda: _finish_logger({**metrics, "status": "requeued"}))
            status = "requeued" if requeued else "interrupted"
            then = "requeued: the next attempt continues from the snapshot" if requeued else f"continue it with `python train.py resume={out}`"
            print(f"interrupted: {e}, snapshot written; {then}", file=sys.stderr)
        except DivergenceError as e:
            print(f"diverged: {e}", file=sys.stderr)
            status = "diverged"
        except Exception:
            traceback.print_exc()
        finally:
            distributed.finish()
            metrics["total_seconds"] = time.time() - t0
            metrics.update(status=status, output_dir=str(out))
            try:  # first: a requeued job has seconds before SLURM kills it
                report.append_row(ledger, {**metrics, **facts, **report.job_identity(), "description": cfg.description,
                                           "overrides": " ".join(facts["overrides"])})
            except OSError as e:
                print(f"error: the ledger {ledger} could not take this run's row ({e.strerror})", file=sys.stderr)
            if out.exists() and status != "invalid":  # an invalid run trained nothing: it leaves a dir as it was
                (out / "summary.json").write_text(json.dumps({**metrics, **facts}, indent=2) + "\n")
            _finish_logger(metrics)
            print(report.format_summary(metrics), flush=True)  # last, so `tail` shows it whole
    if requeued is not None:
        raise requeued  # submitit's exit: no result is written, the requeued attempt writes it
    return report.exit_code(status)


def _other_rank(cfg: DictConfig) -> int:
    """A rank > 0 of a run on several processes: it trains its slice of every batch and ends with
    training; rank 0 measures and writes everything, failures included (here: one line, its code)."""
    code = 0
    with Preemption() as preemption:  # a signal is noted; the stop comes from rank 0 (distributed.RankSync)
        try:
            if cfg.get("resume"):
                cfg = _resumed_config(cfg)
            check(cfg)
            world = distributed.world_of(cfg.trainer)
            _fit_and_evaluate(cfg, Path(cfg.output_dir).resolve(), {}, preemption, {}, world, ExitStack(), None)
            preemption.raise_if_stopped(0)
        except (UserError, prepare.PrepareError) as e:
            print(f"error: {e}", file=sys.stderr)
            code = report.exit_code("invalid")
        except Interrupted:
            code = report.exit_code("interrupted")
        except Exception:
            traceback.print_exc()
            code = report.exit_code("crash")
        finally:
            distributed.finish()
    return code


def _fit_and_evaluate(cfg: DictConfig, out: Path, metrics: dict, preemption: Preemption, facts: dict,
                      world: distributed.World, ranks: ExitStack, source: provenance.Code | None):
    import lightning as L

    from autolab.callbacks import Budget, Curves, Monitor, Snapshots, TimeBudget, peak_flops
    from autolab.checkpoint import save_checkpoint
    from autolab.models import use_attention

    _quiet_libraries()
    if os.environ.get("SLURM_CPUS_PER_TASK"):  # SLURM gives the job these cores; torch would take the node's
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    device = _device(cfg, world)
    if world.size > 1 and device.type == "cpu":  # the machine's cores, shared among the ranks
        torch.set_num_threads(max(1, torch.get_num_threads() // world.size))
    use_attention(cfg.trainer.get("attention", "auto"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # the starting checkpoint, resolved once (an experiment:NAME base is trained first when not cached)
    init_path = _experiment_checkpoint(str(cfg.init_from), cfg) if cfg.init_from else None
    model, tokenizer = _initial_model(cfg, init_path)
    if world.launcher == "spawn":  # this rank starts the others: they load while it does
        ranks.enter_context(distributed.processes(world, _rank_payload(cfg, init_path), out))
    if cfg.trainer.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    recipe = recipe_of(cfg.stage.recipe)
    model = recipe.wrap(cfg, model)
    metrics["tokenizer"] = prepare.tokenizer_hash(tokenizer)
    snapshot = resume.find(out)
    restore = resume.read_state(snapshot) if snapshot else None
    if restore and restore.get("tokenizer", metrics["tokenizer"]) != metrics["tokenizer"]:
        raise UserError(f"{out} was trained with tokenizer {restore['tokenizer']}, but this run's tokenizer is "
                        f"{metrics['tokenizer']} (a new version since?): it cannot continue; start a new run")
    if restore:
        try:
            resume.load_weights(snapshot, model)
        except Exception as e:  # a snapshot copied from another run, or damaged
            raise UserError(f"{snapshot}: the snapshot does not fit this run's model ({first_line(e)}): "
                            "resume the run that wrote it, or start a new one") from None
        if source is not None:  # rank 0's: the code that continues the run, as its row records it
            provenance.write_patch(source, out)
    max_len = getattr(model.config, "max_position_embeddings", None) or prepare.MAX_SEQ_LEN
    model.to(device)
    eval_len = min(prepare.MAX_SEQ_LEN, max_len)

    def bpb(texts: list[str]):
        return lambda m: prepare.evaluate_bpb(
            m, tokenizer, texts, seq_len=eval_len, batch_size=cfg.eval.batch_size, device=device
        )

    t = cfg.trainer
    budget = Budget(t.time_budget, t.max_steps, t.untimed_steps)
    compiled = device.type == "cuda" if t.compile == "auto" else bool(t.compile)
    if compiled or device.type == "cuda":  # torch.compile's graphs cached on disk under $AUTOLAB_CACHE
        compile_cache.use(prepare.cache_dir())
    common = dict(optim=cfg.optim, schedule=cfg.schedule, budget=budget, grad_clip=t.grad_clip, restore=restore)
    def fresh_model():  # the starting weights loaded again (or a new GPT): whole, on the CPU
        return _initial_model(cfg, init_path)[0]

    parts = recipe.build(Context(cfg, model, tokenizer, device, max_len, compiled, common, out, init_path,
                                 initial_model=fresh_model, world=world))
    domains = {"val_bpb": cfg.data.domain} if parts.lm_measures else {}
    if cfg.stage.measure_forgetting and parts.lm_measures:
        domains["replay_val_bpb"] = cfg.replay.domain
    val_texts = {name: prepare.val_documents(domain) for name, domain in domains.items()}  # read once
    measures = {**{name: bpb(texts) for name, texts in val_texts.items()}, **parts.measures}
    if restore:
        parts.data.load_state_dict(restore["data"])
        parts.module.load_snapshot_state(restore["stage"])
        start = restore["start"]
    elif cfg.init_from and world.main:  # where the starting checkpoint stands, before any training
        print("measuring the starting checkpoint ...", flush=True)
        start = {}
        for name, domain in domains.items():  # kept per checkpoint and text: a sweep over one base measures it once
            facts = {"domain": domain, "text": start_scores.text_hash(val_texts[name]),
                     "tokenizer": metrics["tokenizer"], "seq_len": eval_len, "batch_size": cfg.eval.batch_size,
                     "device": device.type, "attention": str(t.get("attention", "auto")), "torch": torch.__version__}
            start[f"{name}_start"] = start_scores.bpb(init_path, facts, lambda fn=measures[name]: fn(model),
                                                      prepare.cache_dir())
        start.update({f"{name}_start": fn(model) for name, fn in parts.measures.items()})
    else:
        start = {}

    n_params = sum(p.numel() for p in model.parameters())
    devices = f"{world.size} x {device.type}" if world.size > 1 else device.type
    if world.main:
        print(
            f"model: {n_params / 1e6:.1f}M parameters | {cfg.stage.name} on {parts.source} | replay: {cfg.replay.ratio:g} "
            f"of {cfg.replay.domain} | {devices} | output: {out}" + (f" | resuming at step {restore['step']}" if restore else ""),
            flush=True,
        )
    if restore:
        budget.load_state_dict(restore["budget"])
    timer = TimeBudget(budget)
    peak = peak_flops(device)
    peak = peak * world.size if peak else None  # all the run's devices
    monitor = Monitor(budget, t.log_every, parts.per_step, parts.flops_per_unit, peak,
                      t.max_loss_ratio if parts.loss_has_scale else None, unit=parts.unit)
    if restore:
        monitor.load_state_dict(restore["monitor"])
    logger = _build_logger(cfg, wandb_id=restore["wandb_id"] if restore else None) if world.main else None
    wandb_id = logger.experiment.id if logger is not None else None
    curves = {"val/" + name.replace("val_bpb", "bpb"): bpb(prepare.val_documents(domain, cfg.eval.curve_bytes))
              for name, domain in domains.items()}  # val/bpb, val/replay_bpb
    # FSDP: every rank takes part in gathering the weights that rank 0 alone snapshots and measures
    sharded = distributed.sharded(world, t)
    whole = distributed.Gathered(fresh_model, world.main)
    rank_sync = distributed.RankSync(budget, preemption) if world.size > 1 else None
    snapshots = Snapshots(
        out, timer, monitor, t.snapshot_every_steps, t.snapshot_every_minutes,
        extra=lambda: {"start": start, "wandb_id": wandb_id, "stage": parts.module.snapshot_state(),
                       "tokenizer": metrics["tokenizer"]},
        write=world.main, agree=rank_sync.agree if sharded else bool, whole=whole,
    )
    # rank 0 decides the stop (budget, signal) for all before anyone logs or snapshots; it alone writes
    callbacks = [preemption, timer, *([rank_sync] if rank_sync else []), monitor,
                 *([Curves(timer, cfg.eval.curve_every, curves, whole), snapshots] if world.main or sharded else []),
                 *([profiling.Profile(t.profile_steps, t.untimed_steps, out, world.rank)] if t.profile_steps else [])]
    environment = distributed.environment(world)
    trainer = L.Trainer(
        accelerator=device.type, devices=t.devices, num_nodes=t.num_nodes,
        strategy=distributed.strategy(world, t, environment),
        plugins=[environment] if environment and world.size == 1 else None,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_epochs=-1, max_steps=-1, logger=logger or False, use_distributed_sampler=False,
        callbacks=callbacks,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()  # from_pretrained and the measurements above leave it in eval mode
    if not budget.done():
        loader = torch.utils.data.DataLoader(parts.data, batch_size=None, pin_memory=device.type == "cuda")
        trainer.fit(parts.module, train_dataloaders=loader)
    gathered = whole(parts.module.model)  # sharded: every rank gathers into rank 0's whole copy
    if not world.main:
        return  # rank 0 measures, saves and reports
    if gathered is not model:  # the stage's finals measure parts.module.model too
        parts.module.model = model = gathered
    metrics.update(training_seconds=budget.training_seconds, num_steps=budget.steps)
    facts["first_step_at"] = timer.first_step_at  # wall clock (time.time()): what a launcher's start-up costs
    if not budget.done():
        preemption.raise_if_stopped(budget.steps)
    model.to(device)  # Lightning hands the module back on the CPU after fit

    after = {name: fn(model) for name, fn in measures.items()}
    metrics.update(
        peak_vram_mb=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0,
        mfu_percent=_mean_mfu(budget, parts, peak),
        total_tokens_M=budget.steps * parts.per_step / 1e6 if parts.unit == "tokens" else None,
        tokens_per_second=_tokens_per_second(budget, parts),
        num_params_M=n_params / 1e6,
    )
    for name, value in after.items():
        metrics[name] = value
        if f"{name}_start" in start:
            metrics[f"{name}_start"] = start[f"{name}_start"]
            metrics[f"{name}_delta"] = value - start[f"{name}_start"]
    metrics.update(parts.finals())
    save_checkpoint(_merged(model), tokenizer, out / "checkpoint")


def _merged(model):
    """A LoRA model merged into its base, so the checkpoint loads as a plain causal LM."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _device(cfg: DictConfig, world: distributed.World) -> torch.device:
    """This rank's device: GPU `local_rank` (set as the current one), or the CPU."""
    cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if not cuda and cfg.trainer.require_gpu:
        raise UserError(
            "no GPU: this experiment is sized for one (see conf/trainer); on a CPU run "
            "`python train.py +experiment=quickstart`, or force it with trainer.require_gpu=false"
        )
    if not cuda:
        return torch.device("cpu")
    if world.local_rank >= torch.cuda.device_count():
        raise UserError(f"trainer.devices={cfg.trainer.devices} but this machine shows {torch.cuda.device_count()} "
                        "GPUs: lower it (hydra.launcher.gpus_per_node gives a job its GPUs)")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def _rank_payload(cfg: DictConfig, init_path: str | None) -> dict:
    """What a rank rank 0 starts runs on: this job's config resolved (no Hydra there), and the
    checkpoint its init_from resolved to (so the ranks never train an experiment:NAME base themselves)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["resume"] = None  # the snapshot is found in output_dir
    return {"cfg": resolved, "checkpoints": {str(cfg.init_from): init_path} if cfg.init_from else {}}


def _initial_model(cfg: DictConfig, init_path: str | None):
    """(model, tokenizer): a fresh GPT for pretraining from scratch, else the weights at init_path
    (init_from resolved)."""
    from autolab.models import build_gpt, load_pretrained

    if not init_path:  # pretraining (config.check: every other stage has init_from)
        tokenizer = prepare.Tokenizer.load()
        return build_gpt(cfg.model, tokenizer.vocab_size), tokenizer
    return load_pretrained(init_path)


def _experiment_checkpoint(source: str, cfg: DictConfig) -> str:
    """`experiment:NAME` -> the checkpoint of `+experiment=NAME`, trained once and cached by a hash
    of its config (so every job of a sweep starts from the same base); other sources unchanged."""
    if not source.startswith("experiment:"):
        return source
    from filelock import FileLock
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if source in _RESOLVED:
        return _RESOLVED[source]
    name = source.split(":", 1)[1]
    if not GlobalHydra.instance().is_initialized():
        raise UserError(f"init_from={source} needs Hydra: run it through train.py")
    inherited = list(cfg.get("base_overrides", []))  # apply to every base down the chain
    base = compose("train", overrides=[f"+experiment={name}", *inherited, "output_dir=unset"])
    with open_dict(base):
        base.base_overrides = inherited
    keyed = OmegaConf.to_container(base, resolve=False)
    for key in ("output_dir", "ledger", "description", "logger"):
        keyed.pop(key, None)
    try:  # a new tokenizer version trains the chain again instead of reusing what the old one made
        keyed["tokenizer"] = tokenizer = prepare.tokenizer_hash(prepare.Tokenizer.load())
    except prepare.PrepareError as e:
        raise UserError(str(e)) from None
    key = hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(keyed)).encode()).hexdigest()[:10]
    folder = prepare.cache_dir() / "experiments" / f"{name}-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        made = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
        if (folder / "checkpoint").exists() and made.get("tokenizer") not in (None, tokenizer):
            raise UserError(f"the cached {folder} was made with tokenizer {made['tokenizer']}, not {tokenizer}: "
                            "delete it to train it again")
        if not (folder / "checkpoint").exists():
            print(f"init_from={source}: not cached yet, running `+experiment={name}` first -> {folder}", flush=True)
            with open_dict(base):
                base.output_dir, base.ledger = str(folder), cfg.ledger
            if run(base, experiment=name, identity={"overrides": [f"+experiment={name}", *inherited]}) != 0:
                raise UserError(f"the starting experiment {name} failed: see its summary above ({folder})")
    if (name, folder) not in _CHAIN:
        _CHAIN.append((name, folder))
    return str(folder / "checkpoint")


def _resumed_config(cfg: DictConfig) -> DictConfig:
    """The config the run dir was started with (what `resume` continues), pointed at that dir."""
    run_dir = Path(cfg.resume).expanduser().resolve()
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise UserError(f"resume={cfg.resume}: {saved} not found; give the output dir of a train.py run")
    if resume.find(run_dir) is None:
        raise UserError(f"resume={cfg.resume}: the run wrote no snapshot yet (trainer.snapshot_every_*)")
    changed = [o for o in _task_overrides() if o.split("=", 1)[0].lstrip("+~") not in ("resume", "ledger")]
    if changed:
        raise UserError(f"resume={cfg.resume} continues that run with the config it started with: drop "
                        f"{' '.join(changed)} (start a new run to change it)")
    old = OmegaConf.load(saved)
    with open_dict(old):
        old.output_dir, old.resume, old.ledger = str(run_dir), str(run_dir), cfg.ledger
    return old


def _units_per_second(budget, parts) -> float | None:
    """Training units (tokens, or whatever unit the stage counts) a second over the timed steps, what the budget buys."""
    timed = budget.steps - budget.untimed_steps
    if timed <= 0 or budget.training_seconds <= 0:
        return None
    return timed * parts.per_step / budget.training_seconds


def _tokens_per_second(budget, parts) -> float | None:
    return _units_per_second(budget, parts) if parts.unit == "tokens" else None


def _mean_mfu(budget, parts, peak: float | None) -> float | None:
    """Mean MFU over the timed steps; `peak` is the FLOP/s of all the run's devices."""
    rate = _units_per_second(budget, parts)
    if not peak or not parts.flops_per_unit or rate is None:
        return None
    return 100 * rate * parts.flops_per_unit / peak


def _build_logger(cfg: DictConfig, wandb_id: str | None = None):
    """W&B through Lightning's WandbLogger, one W&B run per job (the same one when resumed)."""
    if cfg.get("logger") is None:
        return None
    from hydra.utils import instantiate

    named = {}
    if _in_multirun():  # one W&B group per sweep, one run per job (its experiment and job number)
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        named = {"group": cfg.logger.get("group") or str(hc.sweep.dir),
                 "name": cfg.logger.get("name") or f"{_experiment_name()}/{hc.job.num}"}
    logger = instantiate(cfg.logger, save_dir=cfg.output_dir, id=wandb_id, **named)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    log_metrics = logger.log_metrics

    def log_while_wandb_runs(*args, **kwargs):  # a job SLURM stops (preemption, scancel) has W&B's service
        try:  # stopped with it, while its last step still logs: that step goes on to its snapshot
            log_metrics(*args, **kwargs)
        except ConnectionError as e:
            logger.log_metrics = lambda *args, **kwargs: None
            print(f"W&B: its service process was stopped with the job ({first_line(e)}): no more values go to "
                  "the W&B run; the summary and the ledger have this run's results", file=sys.stderr)

    logger.log_metrics = log_while_wandb_runs
    return logger


def _finish_logger(metrics: dict) -> None:
    """Write the summary values into this run's W&B run, if it has one (an interrupted or failed run
    too), close it and stop W&B's service process, so the next job starts its own and nothing of W&B
    is left to run at exit. SLURM signals every process of a job it preempts, cancels or requeues,
    W&B's service too: a requeued job closes W&B before it asks (Preemption.requeue); a service
    stopped before the run ends is one line, not W&B's traceback now and again at exit."""
    wandb = sys.modules.get("wandb")  # never imported: no W&B run (logger=none)
    if wandb is None or wandb.run is None:  # none, or closed already (before a requeue)
        return
    try:
        wandb.run.summary.update({k: v for k, v in metrics.items() if v is not None})
        wandb.run.summary["status"] = metrics["status"]
        wandb.finish(exit_code=0 if metrics["status"] in ("ok", "requeued") else report.exit_code(metrics["status"]))
    except ConnectionError as e:
        print(f"W&B: its service process was stopped with the job ({first_line(e)}): the W&B run lacks this "
              "run's last values and status; the summary below and the ledger have them", file=sys.stderr)
    try:
        wandb.teardown()  # waits for the service to write everything and end; drops W&B's exit hook
    except ConnectionError:
        pass


def _run_identity() -> dict:
    """This job's overrides as given (`description=` and `ledger=` have columns of their own) and, in a
    multirun, its sweep dir and job number: what tells a wave's rows apart."""
    from hydra.core.hydra_config import HydraConfig

    identity = {"overrides": provenance.recorded(_task_overrides())}
    if _in_multirun():
        hc = HydraConfig.get()
        identity.update(sweep=str(Path(hc.sweep.dir).resolve()), job=hc.job.num)
    return identity


def _saved_identity(run_dir: Path) -> dict:
    """The experiment and overrides a run dir was started with (Hydra's .hydra/ files there)."""
    overrides, hydra = run_dir / ".hydra" / "overrides.yaml", run_dir / ".hydra" / "hydra.yaml"
    identity = {"overrides": provenance.recorded(list(OmegaConf.load(overrides))) if overrides.exists() else []}
    if hydra.exists():
        identity["experiment"] = OmegaConf.load(hydra).hydra.runtime.choices.get("experiment") or "default"
    return identity


def _task_overrides() -> list[str]:
    """The overrides the user gave on the command line (none outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _experiment_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return HydraConfig.get().runtime.choices.get("experiment") or "default"


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _quiet_libraries() -> None:
    """Keep logs readable for people and agents: no per-run banners from Lightning or HF."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*`srun` command is available on your system but is not used.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
