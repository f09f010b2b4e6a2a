"""Every config file composes: each option of each group, each experiment, each sweep."""

import importlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from autolab.config import register

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _options():
    for group in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        name = str(group.relative_to(CONF))
        for option in sorted(group.glob("*.yaml")):
            prefix = "+" if name == "experiment" else ""
            yield f"{prefix}{name}={option.stem}"
    for sweep in sorted((ROOT / "sweeps").glob("*.yaml")):
        yield f"+sweeps={sweep.stem}"


@pytest.mark.parametrize("override", list(_options()))
def test_every_config_file_composes_and_resolves(override, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweeps folder is found relative to where train.py runs
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[override, "output_dir=/tmp/x"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # presets resolve, name a real class
    module, _, name = launcher["_target_"].rpartition(".")
    assert hasattr(importlib.import_module(module), name)
    with open_dict(cfg):
        hydra_cfg = cfg.pop("hydra")
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["stage"]["name"] and resolved["data"]["seq_len"] <= resolved["model"]["max_seq_len"]
    if override.startswith("+sweeps="):
        assert hydra_cfg.sweeper.params, f"{override} defines no grid"


def test_there_is_something_to_compose():
    options = list(_options())
    assert "+experiment=quickstart" in options and "logger=none" in options and len(options) > 10
