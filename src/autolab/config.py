"""The config's schema and its checks: one place that says what a value may be.

- `register()`: the `${const:NAME}` resolver (a constant of prepare.py: one place per fact) and the
  schema, `TrainConf`, in Hydra's ConfigStore as `train_schema`; conf/train.yaml lists it first in its
  defaults, so every group file, experiment and command-line override merges into typed nodes and
  OmegaConf refuses a wrong type at composition, naming the key. The schema holds types only (a
  MISSING or None default): the values, and their comments, live in the YAML files users read.
- `check(cfg)`: ranges, divisibility, relations between keys and stage-specific keys, before any data
  or model is loaded; the first problem is one UserError line that names the key and the fix.
- `concise_errors(app)`: runs train.py's Hydra app with Hydra's own errors before a run starts cut to
  at most three lines that start with `error:`, exit code 2: composition errors (a wrong type, an
  unknown key or option) and usage errors of the command line (an unknown flag, a bad `--cfg` value,
  `-m` with `--cfg`) (HYDRA_FULL_ERROR=1 shows Hydra's whole message).
"""

from __future__ import annotations

import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf

import prepare
from autolab.errors import UserError, first_line
from autolab.schedules import DECAYS


@dataclass
class ModelConf:
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    max_seq_len: int = MISSING
    rope_theta: float = MISSING
    value_embeddings: bool = False
    logit_softcap: float = 0.0
    x0_skip: bool = False
    head_init_std: float = 0.02


@dataclass
class DataConf:
    domain: str = MISSING
    seq_len: int = MISSING
    batch_size: int = MISSING


@dataclass
class OptimConf:
    name: str = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    embedding_lr_scale: float = MISSING
    head_lr_scale: float = MISSING
    scalar_lr_scale: float = 1.0
    muon_lr_scale: Optional[float] = None  # muon only
    muon_momentum: Optional[float] = None
    muon_beta2: float = 0.0  # NorMuon's; 0: plain Muon
    muon_coefficients: str = "jordan"  # the orthogonalising polynomials: jordan | polar_express
    muon_momentum_start: Optional[float] = None  # momentum warmed up from this over muon_momentum_warmup steps
    muon_momentum_warmup: int = 0
    muon_cautious_wd: bool = False  # weight decay only where the update also shrinks the weight


@dataclass
class ScheduleConf:
    peak_lr: float = MISSING
    initial_lr: float = MISSING
    warmup: float = MISSING
    min_lr_ratio: float = MISSING
    decay: str = "cosine"
    warmdown: float = 1.0


@dataclass
class TrainerConf:
    accelerator: str = MISSING
    devices: int = MISSING
    num_nodes: int = MISSING
    strategy: str = MISSING
    overlap_grad_sync: bool = MISSING
    require_gpu: bool = MISSING
    compile: Any = MISSING  # auto | true | false
    attention: str = MISSING
    time_budget: float = MISSING
    max_steps: Optional[int] = None
    untimed_steps: int = MISSING
    activation_checkpointing: bool = MISSING
    grad_clip: float = MISSING
    log_every: int = MISSING
    max_loss_ratio: float = MISSING
    snapshot_every_steps: int = MISSING
    snapshot_every_minutes: float = MISSING
    profile_steps: int = MISSING


@dataclass
class EvalConf:
    batch_size: int = MISSING
    curve_every: int = MISSING
    curve_bytes: int = MISSING


@dataclass
class StageConf:
    name: str = MISSING
    recipe: str = MISSING
    measure_forgetting: bool = MISSING


@dataclass
class ReplayConf:
    domain: str = MISSING
    ratio: float = MISSING


@dataclass
class LoraConf:
    r: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    target_modules: Any = MISSING  # "all-linear" or a list of module names


@dataclass
class DatasetConf:
    """Where a stage's rows come from (autolab.data.preference.load_rows): the pair stages' and GRPO's."""

    dataset: str = MISSING
    train_split: str = MISSING
    eval_split: Optional[str] = None
    columns: Dict[str, str] = MISSING


@dataclass
class PairsConf(DatasetConf):
    """The preference-pair keys every pair stage has (autolab.data.preference)."""

    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    max_length: int = MISSING
    max_prompt_length: Optional[int] = None
    min_response_tokens: int = MISSING
    max_train_pairs: Optional[int] = None
    max_eval_pairs: Optional[int] = None


@dataclass
class DPOConf(PairsConf):
    loss_type: str = MISSING
    beta: float = MISSING
    label_smoothing: float = MISSING
    reference: str = MISSING
    lora: LoraConf = MISSING
    behaviour_prompts: int = MISSING
    behaviour_tokens: int = MISSING


@dataclass
class RewardConf(PairsConf):
    center_rewards_coefficient: Optional[float] = None


@dataclass
class GRPOConf(DatasetConf):
    chat: str = MISSING
    reward_funcs: List[str] = MISSING
    reward_weights: Optional[List[float]] = None
    batch_size: int = MISSING
    num_generations: int = MISSING
    max_completion_length: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING
    beta: float = MISSING
    epsilon: float = MISSING
    epsilon_high: Optional[float] = None
    loss_type: str = MISSING
    scale_rewards: str = MISSING
    num_iterations: int = MISSING
    use_bias_correction_kl: bool = MISSING
    entropy_floor: float = MISSING
    eval_prompts: int = MISSING
    eval_batch_size: int = MISSING


@dataclass
class TrainConf:
    model: ModelConf = MISSING
    data: DataConf = MISSING
    optim: OptimConf = MISSING
    schedule: ScheduleConf = MISSING
    trainer: TrainerConf = MISSING
    logger: Any = None  # a WandbLogger's arguments, or null
    eval: EvalConf = MISSING
    stage: StageConf = MISSING
    replay: ReplayConf = MISSING
    dpo: Optional[DPOConf] = None  # the DPO stage's keys
    reward: Optional[RewardConf] = None  # the reward-model stage's keys
    grpo: Optional[GRPOConf] = None  # the GRPO stage's keys
    seed: int = MISSING
    init_from: Optional[str] = None
    base_overrides: List[str] = field(default_factory=list)
    resume: Optional[str] = None
    description: str = MISSING
    ledger: str = MISSING
    output_dir: str = MISSING


def register() -> None:
    """The `const` resolver and the schema; call before Hydra composes (train.py does)."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("const"):
        OmegaConf.register_new_resolver("const", lambda name: getattr(prepare, name))
    ConfigStore.instance().store(name="train_schema", node=TrainConf)


OPTIMIZERS = ("adamw", "muon")
MUON_COEFFICIENTS = ("jordan", "polar_express")  # autolab.optim.COEFFICIENTS' keys (that module loads torch)
ATTENTION = ("auto", "flash", "cudnn", "efficient")
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
REFERENCES = ("frozen", "precomputed", "none")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")  # autolab.objectives.grpo's (that module loads torch)
SCALE_REWARDS = ("group", "batch", "none")
CHAT = ("off", "auto", "required")


def check(cfg: DictConfig) -> None:
    """Every value check, in one place, before anything is loaded. Raises the first problem found."""
    for key, ok, fix in _rules(cfg):
        if not ok:
            raise UserError(f"{key}={_show(OmegaConf.select(cfg, key))}: {fix}")
    _check_ledger(Path(cfg.ledger))


def _rules(c: DictConfig):
    """(key, holds, what to do) for every rule; a rule that needs another key to hold comes after it."""
    t, m, d, s, o, e = c.trainer, c.model, c.data, c.schedule, c.optim, c.eval
    yield "stage.recipe", _is_recipe(c.stage.recipe), "name a stage recipe as module.RECIPE, e.g. autolab.stages.lm.RECIPE"
    yield "model.n_layer", m.n_layer >= 1, "use 1 or more layers"
    yield "model.n_head", m.n_head >= 1, "use 1 or more heads"
    yield "model.n_embd", m.n_embd >= 1 and m.n_embd % m.n_head == 0 and (m.n_embd // m.n_head) % 2 == 0, \
        f"must split into model.n_head={m.n_head} heads of an even size (e.g. {m.n_head * 64})"
    yield "model.max_seq_len", m.max_seq_len >= 1, "use 1 or more positions"
    yield "model.rope_theta", m.rope_theta > 0, "use a positive base (10000 is usual)"
    yield "model.logit_softcap", m.logit_softcap >= 0, "use 0 (off) or a positive cap (15 is usual)"
    yield "model.head_init_std", m.head_init_std >= 0, "use 0 (zeros) or a positive std (0.02 is usual)"
    yield "data.batch_size", d.batch_size >= 1, "use 1 or more rows a step"
    yield "data.seq_len", d.seq_len >= 1, "use 1 or more tokens a row"
    yield "data.seq_len", c.init_from or d.seq_len <= m.max_seq_len, \
        f"is longer than the model's model.max_seq_len={m.max_seq_len} positions: lower it"
    yield "optim.name", o.name in OPTIMIZERS, f"use one of {', '.join(OPTIMIZERS)}"
    yield "optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "use two numbers in [0, 1), e.g. [0.9, 0.95]"
    yield "optim.eps", o.eps > 0, "use a small positive number, e.g. 1e-8"
    yield "optim.weight_decay", o.weight_decay >= 0, "use 0 or more"
    yield "optim.embedding_lr_scale", o.embedding_lr_scale > 0, "use a positive scale (1 keeps the schedule's rate)"
    yield "optim.head_lr_scale", o.head_lr_scale > 0, "use a positive scale (1 keeps the schedule's rate)"
    yield "optim.scalar_lr_scale", o.scalar_lr_scale > 0, "use a positive scale (1 keeps the schedule's rate)"
    if o.name == "muon":
        yield "optim.muon_lr_scale", (o.muon_lr_scale or 0) > 0, "use a positive scale (20 is usual)"
        yield "optim.muon_momentum", o.muon_momentum is not None and 0 <= o.muon_momentum < 1, "use a number in [0, 1), e.g. 0.95"
        yield "optim.muon_beta2", 0 <= o.muon_beta2 < 1, "use 0 (plain Muon) or a number below 1 for NorMuon, e.g. 0.95"
        yield "optim.muon_coefficients", o.muon_coefficients in MUON_COEFFICIENTS, f"use one of {', '.join(MUON_COEFFICIENTS)}"
        yield "optim.muon_momentum_warmup", o.muon_momentum_warmup >= 0, "use 0 (off) or a number of steps, e.g. 300"
        yield "optim.muon_momentum_start", o.muon_momentum_start is None or 0 <= o.muon_momentum_start < 1, \
            "use null (no warmup) or a number in [0, 1), e.g. 0.85"
    yield "schedule.peak_lr", s.peak_lr > 0, "use a positive learning rate"
    yield "schedule.initial_lr", s.initial_lr >= 0, "use 0 or more"
    yield "schedule.warmup", 0 <= s.warmup <= 1, "is a fraction of the run: use a number in [0, 1]"
    yield "schedule.min_lr_ratio", 0 <= s.min_lr_ratio <= 1, "is a fraction of peak_lr: use a number in [0, 1]"
    yield "schedule.decay", s.decay in DECAYS, f"use one of {', '.join(DECAYS)}"
    yield "schedule.warmdown", 0 <= s.warmdown <= 1, "is a fraction of the run: use a number in [0, 1] (1: decay after warmup)"
    yield "trainer.accelerator", t.accelerator in ("auto", "gpu", "cuda", "cpu"), "use auto, gpu or cpu"
    yield "trainer.devices", t.devices >= 1, "use 1 or more devices (processes) per node"
    yield "trainer.num_nodes", t.num_nodes >= 1, "use 1 or more nodes"
    yield "trainer.strategy", t.strategy in ("ddp", "fsdp"), \
        "use ddp (a whole copy of the model on every device) or fsdp (the model sharded over them)"
    if t.strategy == "fsdp":
        yield "optim.name", o.name == "adamw", "Muon orthogonalises whole matrices, which FSDP shards: use optim=adamw"
    yield "trainer.compile", t.compile in ("auto", True, False), "use auto, true or false"
    yield "trainer.attention", t.attention in ATTENTION, f"use one of {', '.join(ATTENTION)}"
    yield "trainer.max_steps", t.max_steps is None or t.max_steps >= 1, "use 1 or more steps, or null for the time budget"
    yield "trainer.time_budget", t.max_steps is not None or t.time_budget > 0, "use a positive number of seconds"
    yield "trainer.untimed_steps", t.untimed_steps >= 0, "use 0 or more"
    yield "trainer.grad_clip", t.grad_clip >= 0, "use 0 (off) or a positive norm"
    yield "trainer.log_every", t.log_every >= 1, "use 1 or more steps"
    yield "trainer.max_loss_ratio", t.max_loss_ratio > 1, "use a ratio above 1, e.g. 2"
    yield "trainer.snapshot_every_steps", t.snapshot_every_steps >= 0, "use 0 (off) or more"
    yield "trainer.snapshot_every_minutes", t.snapshot_every_minutes >= 0, "use 0 (off) or more"
    yield "eval.batch_size", e.batch_size >= 1, "use 1 or more rows"
    yield "eval.curve_every", e.curve_every >= 0, "use 0 (off) or more steps"
    yield "eval.curve_bytes", e.curve_bytes >= 1, "use a positive number of bytes"
    yield "replay.ratio", 0 <= c.replay.ratio < 1, "is outside [0, 1): 0 turns replay off, 0.05 is typical"
    yield "init_from", c.stage.name == "pretrain" or c.init_from, \
        "is missing: this stage continues from a model (a checkpoint folder, an HF model folder or hub id, or experiment:NAME)"
    yield "dpo", c.stage.name != "dpo" or c.dpo is not None, "is missing: the dpo stage needs its keys (stage=dpo)"
    if c.stage.name == "dpo":
        p = c.dpo
        yield "dpo.loss_type", p.loss_type in LOSS_TYPES, f"use one of {', '.join(LOSS_TYPES)}"
        yield "dpo.beta", p.beta > 0, "use a positive number (0.1 is usual)"
        yield "dpo.label_smoothing", 0 <= p.label_smoothing < 0.5, "use a number in [0, 0.5)"
        yield "dpo.reference", p.reference in REFERENCES, f"use one of {', '.join(REFERENCES)}"
        yield from _pair_rules(p, "dpo")
        yield "dpo.lora.r", p.lora.r >= 0, "use 0 (off) or a rank, e.g. 8"
        yield "dpo.behaviour_prompts", p.behaviour_prompts >= 0, "use 0 or more"
        yield "dpo.behaviour_tokens", p.behaviour_tokens >= 1, "use 1 or more"
        yield "dpo.reference", not (p.lora.r > 0 and p.reference == "precomputed"), \
            "precomputed references are not kept for LoRA runs: use frozen (the adapter switched off) or none"
        yield "dpo.reference", t.strategy != "fsdp" or (p.reference != "frozen" and p.lora.r <= 0), \
            "with trainer.strategy=fsdp the reference is not sharded: use precomputed (or none), without LoRA"
    yield "reward", c.stage.name != "reward" or c.reward is not None, "is missing: the reward stage needs its keys (stage=reward)"
    if c.stage.name == "reward":
        p = c.reward
        yield from _pair_rules(p, "reward")
        yield "reward.center_rewards_coefficient", p.center_rewards_coefficient is None or p.center_rewards_coefficient >= 0, \
            "use null (off) or a small positive number (0.01 is usual)"
        yield "trainer.strategy", t.strategy != "fsdp", "the reward stage does not shard its model: use ddp"
    yield "grpo", c.stage.name != "grpo" or c.grpo is not None, "is missing: the grpo stage needs its keys (stage=grpo)"
    if c.stage.name == "grpo":
        yield from _grpo_rules(c.grpo, t)


def _grpo_rules(g: DictConfig, t: DictConfig):
    yield "grpo.reward_funcs", len(g.reward_funcs) >= 1, \
        "name one reward at least: module.function (e.g. autolab.rewards.copy_match) or a reward model's folder"
    from autolab import rewards

    for name in g.reward_funcs:
        yield "grpo.reward_funcs", rewards.is_reward(str(name)), f"{name} {rewards.NOT_A_REWARD}"
    yield "grpo.reward_weights", g.reward_weights is None or len(g.reward_weights) == len(g.reward_funcs), \
        f"give one weight for each of the {len(g.reward_funcs)} grpo.reward_funcs, or null (1 each)"
    yield "grpo.chat", g.chat in CHAT, f"use one of {', '.join(CHAT)}"
    yield "grpo.batch_size", g.batch_size >= 1, "use 1 or more prompts a step"
    yield "grpo.num_generations", g.num_generations >= 2, "use 2 or more completions a prompt (the group's mean is the baseline)"
    yield "grpo.max_completion_length", g.max_completion_length >= 1, "use 1 or more tokens"
    yield "grpo.temperature", g.temperature > 0, "use a positive temperature (1.0 samples the policy as it is)"
    yield "grpo.top_k", g.top_k >= 0, "use 0 (the whole vocabulary) or more"
    yield "grpo.beta", g.beta >= 0, "use 0 (no reference, no KL term) or a positive number (0.04 is usual)"
    yield "grpo.epsilon", 0 < g.epsilon < 1, "use a number in (0, 1) (0.2 is usual)"
    yield "grpo.epsilon_high", g.epsilon_high is None or g.epsilon_high > 0, "use null (= grpo.epsilon) or a positive number"
    yield "grpo.loss_type", g.loss_type in GRPO_LOSS_TYPES, f"use one of {', '.join(GRPO_LOSS_TYPES)}"
    yield "grpo.scale_rewards", g.scale_rewards in SCALE_REWARDS, f"use one of {', '.join(SCALE_REWARDS)}"
    yield "grpo.num_iterations", g.num_iterations >= 1, "use 1 or more updates a batch of completions"
    yield "grpo.num_iterations", g.num_iterations == 1 or t.devices * t.num_nodes == 1, \
        "use 1 with several processes (DDP takes one backward a step)"
    yield "grpo.entropy_floor", g.entropy_floor >= 0, "use 0 (no warning) or a positive number of nats"
    yield "grpo.eval_prompts", g.eval_prompts >= 1, "use 1 or more held-out prompts"
    yield "grpo.eval_batch_size", g.eval_batch_size >= 1, "use 1 or more prompts a generate call"
    yield "trainer.strategy", t.strategy != "fsdp", "the grpo stage samples from a whole model: use ddp"


def _pair_rules(p: DictConfig, group: str):
    """The preference-pair keys' rules, for a stage's group of them (dpo, reward)."""
    yield f"{group}.batch_size", p.batch_size >= 1, "use 1 or more pairs"
    yield f"{group}.eval_batch_size", p.eval_batch_size >= 1, "use 1 or more pairs"
    yield f"{group}.max_length", p.max_length >= 2, "use room for a prompt and a response"
    yield f"{group}.max_prompt_length", p.max_prompt_length is None or 1 <= p.max_prompt_length < p.max_length, \
        f"use null or fewer tokens than {group}.max_length={p.max_length}"
    yield f"{group}.min_response_tokens", 1 <= p.min_response_tokens < p.max_length, \
        f"use 1 or more, fewer than {group}.max_length={p.max_length}"
    for key in ("max_train_pairs", "max_eval_pairs"):
        yield f"{group}.{key}", p.get(key) is None or p[key] >= 1, "use null (all) or 1 or more"


def _is_recipe(name: str) -> bool:
    from autolab.stages.recipe import recipe_of

    try:
        recipe_of(name)
        return True
    except UserError:
        return False


def _check_ledger(path: Path) -> None:
    """The ledger can take a row (opened for appending, as a row is written): checked first, so a run
    never trains and then has nowhere to report."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("a"):
                pass
        elif not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise UserError(f"ledger={path}: cannot write a row there ({e.strerror}); point ledger= at a writable file") from None


def _show(value) -> str:
    return "null" if value is None else str(value)


_held: dict = {}  # while Hydra composes: {"buffer": what it wrote to stderr, "stderr": the real stream}


def concise_errors(app) -> None:
    """Run a @hydra.main app holding back what Hydra writes to stderr until a run starts (ReleaseStderr,
    a Hydra callback in conf/train.yaml, lets it through then); if Hydra stops before that with an
    error, print its gist in at most three lines instead of its full message."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return app()
    _held.update(buffer=io.StringIO(), stderr=sys.stderr)
    sys.stderr = _held["buffer"]
    try:
        app()
    except SystemExit as e:
        if _held and e.code:  # Hydra refused the config or argparse the flags: invalid input, exit code 2
            text = _held["buffer"].getvalue()
            _release(write=False)
            print(_gist(text), file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except Exception as e:
        if _held:  # Hydra raised before any run began: a usage error (`-m` with `--cfg job`), not a crash
            _release(write=False)
            print(f"error: {first_line(e)} ({_HELP})", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except KeyboardInterrupt:  # a second Ctrl-C (preemption.py) outside Lightning's fit, which does the same
        raise SystemExit(1) from None  # the run's row and summary are written: no traceback after them
    finally:
        _release()


class ReleaseStderr(Callback):
    """Composition is over and a run or sweep begins: stderr is the terminal again."""

    def on_run_start(self, config, **kwargs) -> None:
        _release()

    def on_multirun_start(self, config, **kwargs) -> None:
        _release()


def _release(write: bool = True) -> None:
    if _held:
        sys.stderr = _held["stderr"]
        if write:
            sys.stderr.write(_held["buffer"].getvalue())
        _held.clear()


_HELP = "`python train.py --help` lists the flags"


def _gist(text: str) -> str:
    """Hydra's error in at most three lines: its own sentences, without the bookkeeping lines."""
    skip = ("full_key:", "reference_type=", "object_type=", "Set the environment variable HYDRA_FULL_ERROR",
            "Config search path:", "provider=", "To append to your config use")
    usage = re.search(r"^\S+: error: (.+)$", text, re.MULTILINE)  # argparse's own sentence, after its usage lines
    if usage:
        return f"error: {usage.group(1)} ({_HELP})"
    lines, options = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(skip):
            continue
        if line.startswith("\t"):  # an option of a group Hydra lists one per line
            options.append(stripped)
        else:
            lines.append(stripped)
    if options:
        lines.append("options: " + ", ".join(options))
    lines = [line for line in lines if not line.startswith("Available options")][:3] or ["Hydra stopped"]
    return "\n".join([f"error: {lines[0]}", *lines[1:]])
