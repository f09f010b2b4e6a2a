"""autolab: a Hydra + Lightning experiment framework for LLM training research.

`python train.py` composes `conf/` and calls `autolab.run.main`; see README.md and program.md.
"""

import os

# PyTorch's CPU allocator puts every tensor of 2 MB or more on transparent huge pages (madvise) when this is
# set before torch's first allocation; autolab is imported before torch wherever it starts (train.py, the
# worker, the tools). On a CPU each large tensor (a batch's logits) is otherwise a fresh mapping faulted in
# 4 KB at a time: half of evaluate_bpb's time on the developer machine (benchmarks/cpu_hugepages.py).
# THP_MEM_ALLOC_ENABLE=0 in the environment keeps the allocator as it was.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
