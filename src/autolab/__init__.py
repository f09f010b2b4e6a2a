"""autolab: a Hydra + Lightning experiment framework for LLM training research.

`python train.py` composes `conf/` and calls `autolab.run.main`; see README.md and program.md.
"""

__version__ = "0.1.0"
