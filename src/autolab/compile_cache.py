"""torch.compile's on-disk caches kept under the project's cache, so a run whose graphs were compiled
before (same model shapes, same torch) loads them instead of compiling again.

    from autolab import compile_cache
    compile_cache.use(prepare.cache_dir())     # once, before the first compiled call (run.py does it)

Three caches, all PyTorch's own: inductor's FX-graph cache (the generated code of each graph),
the AOTAutograd cache (forward and backward graphs together, so a hit skips tracing the backward)
and the Triton kernels they build (inductor keeps them under its cache folder). PyTorch turns the
first two on by default, in /tmp/torchinductor_$USER: a folder that a reboot, a fresh cloud machine
or a cleaned /tmp loses. Here they live in $AUTOLAB_CACHE/compile/ (~/.cache/autolab/compile/ by
default), beside the prepared data. Delete that folder to compile from scratch.

Where you chose otherwise, you win: a TORCHINDUCTOR_CACHE_DIR of your own is kept, and
TORCHINDUCTOR_FX_GRAPH_CACHE=0 or TORCHINDUCTOR_AUTOGRAD_CACHE=0 still turn a cache off.
"""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = "compile"


def use(cache_root: Path) -> Path:
    """Point inductor's caches at `cache_root`/compile (unless TORCHINDUCTOR_CACHE_DIR names a folder of
    your own) and make sure both graph caches are on (unless their variables turn them off).
    Returns the folder in use."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # importing torch's compiler writes its default into the variable: only that one is replaced
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_root).expanduser().resolve() / FOLDER)

    if os.environ.get("TORCHINDUCTOR_FX_GRAPH_CACHE") != "0":
        inductor_config.fx_graph_cache = True
    if os.environ.get("TORCHINDUCTOR_AUTOGRAD_CACHE") != "0":
        functorch_config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
