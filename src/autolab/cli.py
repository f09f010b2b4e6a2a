"""The research tools' entry points (`python -m autolab.lens|prefgen|judge`): each a Hydra app on its
own primary config in conf/ (lens.yaml, prefgen.yaml, judge.yaml), with train.py's error manners:
Hydra's composition errors cut to three lines, a UserError one line, both exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

import prepare
from autolab.errors import UserError

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def hydra_tool(config_name: str, fn: Callable, schema: type) -> None:
    """Run `fn(cfg)` as a Hydra app on conf/<config_name>.yaml, typed by `schema` (a dataclass stored
    as `<config_name>_schema`, first in that file's defaults list: a wrong type is refused by key)."""
    import hydra
    from hydra.core.config_store import ConfigStore

    from autolab.config import concise_errors

    ConfigStore.instance().store(name=f"{config_name}_schema", node=schema)

    @hydra.main(version_base="1.3", config_path=CONF, config_name=config_name)
    def app(cfg):
        try:
            fn(cfg)
        except (UserError, prepare.PrepareError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    concise_errors(app)


def device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(source: str, key: str, dev: torch.device):
    """(model in eval mode on `dev`, tokenizer) from a checkpoint folder or HF folder/hub id; its errors
    name the config key (`key=...`), not train.py's `init_from`."""
    from autolab.models import load_pretrained

    if not source:
        raise UserError(f"{key}= is required: give a checkpoint folder, a Hugging Face model folder or a hub id")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weights' loading bar: a line of noise per model
    try:
        model, tokenizer = load_pretrained(str(source))
    except UserError as e:
        raise UserError(str(e).replace("init_from=", f"{key}=", 1)) from None
    return model.to(dev).eval(), tokenizer


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out
