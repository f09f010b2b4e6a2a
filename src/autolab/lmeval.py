"""Downstream evaluation through lm-evaluation-harness (lm-eval), of any checkpoint autolab wrote or any
Hugging Face causal LM.

    pip install -e ".[eval]"
    python -m autolab.lmeval init_from=<checkpoint | HF folder | hub id> [tasks=autolab_preferences,hellaswag] [limit=N]

The model goes through lm-eval's own `hf` model class, as any outside user would run it: our
checkpoints carry their code (models/gpt.py), so `trust_remote_code=true` loads them without autolab.
Tasks are lm-eval's by name (those fetch their data from the hub), folders of task YAML files
(`include=`), or the offline task autolab makes from its own files:
- `autolab_preferences`: the embedded preference set's held-out pairs as a two-way multiple choice, the
  prompt then the chosen or the rejected answer (`acc`: the chosen answer has the higher log-likelihood;
  `acc_norm`: per byte). Written as JSON lines with its YAML into the output dir, so the run is offline.
Output, in the run's output dir: `results.json` (lm-eval's results, configs and versions),
`samples_<task>.jsonl` (every request and its log-likelihoods) and a `---` summary block, one
`<task>/<metric>` line each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

import prepare
from autolab.cli import device, hydra_tool, output_dir
from autolab.errors import UserError, first_line

PREFERENCE_TASK = "autolab_preferences"


@dataclass
class LmEvalConf:
    init_from: str = MISSING
    tasks: str = MISSING
    include: str | None = None
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int = MISSING
    dtype: str = MISSING
    trust_remote_code: bool = MISSING
    device: str = MISSING
    seed: int = MISSING


def preference_task(folder: Path) -> Path:
    """The held-out preference pairs as a multiple-choice task: its data and YAML in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{PREFERENCE_TASK}.jsonl"
    with data.open("w") as f:
        for row in prepare.load_preferences("val"):
            f.write(json.dumps({k: row[k] for k in ("id", "prompt", "chosen", "rejected")}) + "\n")
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in ("acc", "acc_norm"))
    (folder / f"{PREFERENCE_TASK}.yaml").write_text(
        f"task: {PREFERENCE_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n  cache_dir: {json.dumps(str(folder / 'datasets'))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{prompt}}'\n"
        "target_delimiter: ''\n"  # the prompt ends with its newline
        "doc_to_choice: '{{[chosen, rejected]}}'\n"
        "doc_to_target: 0\n"
        f"metric_list:\n{metrics}"
        "metadata:\n  version: 1.0\n"
    )
    return folder


def evaluate(cfg, out: Path) -> dict:
    """lm-eval's `simple_evaluate` on cfg.tasks with its `hf` model class; writes results.json and the samples."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("lm-eval is not installed: pip install -e \".[eval]\" (or pip install lm_eval==0.4.13)") from None
    tasks = [t.strip() for t in str(cfg.tasks).split(",") if t.strip()]
    if not tasks:
        raise UserError("tasks= is empty: give lm-eval task names, e.g. tasks=autolab_preferences")
    include = [str(Path(p).expanduser()) for p in str(cfg.include).split(",")] if cfg.include else []
    if PREFERENCE_TASK in tasks:
        include.append(str(preference_task(out / "tasks")))
    for path in include:
        if not Path(path).exists():
            raise UserError(f"include={path}: no such folder of task YAML files")
    manager = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"tasks={','.join(unknown)}: not an lm-eval task here (see `lm-eval ls tasks`, or add include=<folder of YAMLs>)")
    dev = device(cfg.device)
    model_args = {"pretrained": str(cfg.init_from), "trust_remote_code": bool(cfg.trust_remote_code), "dtype": str(cfg.dtype)}
    try:
        res = simple_evaluate(
            model="hf", model_args=model_args, tasks=tasks, task_manager=manager, limit=cfg.limit,
            num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size, device=str(dev), log_samples=True,
            random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
        )
    except (OSError, ValueError) as e:  # no such folder or hub id, no config.json, remote code refused
        raise UserError(f"init_from={cfg.init_from} could not be evaluated ({type(e).__name__}: {first_line(e)})") from None
    samples = res.pop("samples", {}) or {}
    for task, rows in samples.items():
        with (out / f"samples_{task}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


def metrics(res: dict) -> dict[str, float]:
    """`<task>/<metric>` -> value from lm-eval's results (its `acc,none` keys: the filter name dropped
    where it is `none`), standard errors included."""
    flat = {}
    for task, values in res.get("results", {}).items():
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            flat[f"{task}/{metric}" + ("" if filt == "none" else f"/{filt}")] = float(value)
    return flat


def summary(res: dict, cfg, out: Path) -> str:
    lines = ["---", f"init_from: {cfg.init_from}", f"tasks: {cfg.tasks}"]
    lines += [f"{k}: {v:.6f}" for k, v in metrics(res).items()]
    lines += [f"limit: {cfg.limit if cfg.limit is not None else 'n/a'}", f"output_dir: {out}"]
    return "\n".join(lines)


def main(cfg) -> dict:
    out = output_dir()
    res = evaluate(cfg, out)
    print(summary(res, cfg, out))
    return res


if __name__ == "__main__":
    hydra_tool("lmeval", main, LmEvalConf)
