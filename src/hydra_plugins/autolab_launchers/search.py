"""Adaptive waves: hydra-optuna-sweeper's sweeper, ending in one line when no trial succeeded.

    python train.py -m +experiment=quickstart +sweeps=search_lr

sweeps/search_lr.yaml selects `hydra/sweeper=optuna` (the plugin's own config: sampler, direction,
n_trials, n_jobs a wave, params) and points its `_target_` here. `Search` runs the plugin's study
unchanged, through whichever launcher is chosen (Hydra's basic one, local, slurm): each wave is one
`launch()`, each trial a train.py job whose return value is its val_bpb (None when it failed: a failed
trial, the study goes on). Only when every trial failed does it differ: instead of Optuna's "No trials
are completed yet" traceback, the sweep report is written (summary.md says why each failed) and the
sweep ends with one `error:` line and exit code 1. Needs the `search` extra (hydra-optuna-sweeper).
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class Search(Sweeper):
    def __init__(self, **params: Any) -> None:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper  # the `search` extra

        self.optuna = OptunaSweeper(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.optuna.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self.optuna.sweep(arguments)
        except ValueError as e:  # optuna's study.best_trial with no completed trial
            if "No trials are completed yet" not in str(e):
                raise
        self.hydra_context.callbacks.on_multirun_end(config=self.config)
        print(f"error: every trial of the search failed: see {self.config.hydra.sweep.dir}/summary.md "
              "and the ledger's rows for why", file=sys.stderr)
        sys.exit(1)
