"""A rank > 0 that a run started itself (autolab/distributed.py): `python -m autolab.worker <payload.yaml>`.

The payload is the job's resolved config and the checkpoints its `experiment:NAME` bases resolved to,
so no Hydra app runs here, and no sweep either. The rank trains its slice of every batch and exits;
rank 0 writes everything the run leaves behind.
"""

from __future__ import annotations

import sys


def main(path: str) -> int:
    from omegaconf import OmegaConf

    from autolab import run

    payload = OmegaConf.load(path)
    run.resolved_checkpoints(OmegaConf.to_container(payload.checkpoints))
    return run.run(payload.cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
