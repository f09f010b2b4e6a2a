"""Train one stage of autolab, configured by Hydra (conf/train.yaml). It wires; it holds no logic.

    python train.py +experiment=quickstart          # the CPU-sized demo
    python train.py                                 # the default: one GPU, the 5-minute budget
    python train.py -m optim.weight_decay=0,0.1     # a local multirun
"""

import hydra
from omegaconf import DictConfig

from autolab.config import concise_errors, register

register()  # the schema and the const resolver, before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train(cfg: DictConfig) -> int:
    from autolab.run import main  # torch and Lightning load once the config composed: a refused override answers at once

    return main(cfg)


if __name__ == "__main__":
    concise_errors(train)  # Hydra's own composition errors in at most three lines
