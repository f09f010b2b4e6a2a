"""Resumable training state, kept apart from `init_from` (which starts a new run from weights).

`<run dir>/resume/` holds `model.safetensors` (the weights) and `state.pt` (optimiser states,
budget spent, data position, RNG states, the monitor's reference loss, the W&B run id), read back
with `torch.load(weights_only=True)`: plain tensors and containers, nothing unpickled.
A new snapshot is written to `resume.tmp/` and swapped in by renames, so a kill at any moment
leaves either the previous snapshot or the new one (as `resume/` or, mid-swap, `resume.old/`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

FOLDER = "resume"


def save(out: Path, model: torch.nn.Module, state: dict) -> None:
    final, tmp, old = out / FOLDER, out / f"{FOLDER}.tmp", out / f"{FOLDER}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find(out: Path) -> Path | None:
    """The snapshot folder to resume from, if the run dir has one."""
    for name in (FOLDER, f"{FOLDER}.old"):
        if (out / name / "state.pt").exists() and (out / name / "model.safetensors").exists():
            return out / name
    return None


def read_state(folder: Path) -> dict:
    """Everything but the weights (see `load_weights`), for checks before anything is loaded."""
    return torch.load(folder / "state.pt", weights_only=True)


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    load_model(model, str(folder / "model.safetensors"))


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
