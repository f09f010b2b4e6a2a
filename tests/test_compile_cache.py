"""compile_cache: torch.compile's graphs land in (and load from) $AUTOLAB_CACHE/compile."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys, torch
import lightning  # noqa: F401  (importing torch's compiler stack writes inductor's default folder into the variable)
from autolab import compile_cache
from torch._dynamo.utils import counters
folder = compile_cache.use(sys.argv[1])
f = torch.compile(lambda x: torch.sin(x) * 2 + 1)
assert torch.allclose(f(torch.ones(8)), torch.sin(torch.ones(8)) * 2 + 1)
print(folder, counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
"""


def _compile_in_new_process(cache):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    # inductor's own check of the CPU's vector instructions builds ten small C++ probes (10 of the first process's
    # 14 s on the developer machine); the CPU's flags say the same, and the graph cache is what is tested here
    env["TORCHINDUCTOR_VEC_ISA_OK"] = "1"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    folder, hits, misses = out.stdout.split()[-3:]
    return folder, int(hits), int(misses)


@pytest.mark.slow
def test_second_process_loads_the_graph_from_the_project_cache(tmp_path):
    folder, hits, misses = _compile_in_new_process(tmp_path)
    assert folder == str(tmp_path / "compile") and (hits, misses) == (0, 1)
    assert any((tmp_path / "compile").rglob("*")), "nothing written under $AUTOLAB_CACHE/compile"
    assert _compile_in_new_process(tmp_path)[1:] == (1, 0)  # the same graph, read back


def test_a_folder_of_the_users_own_wins(tmp_path):
    from autolab import compile_cache

    own = tmp_path / "mine"
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(own)
    try:
        assert compile_cache.use(tmp_path / "alc") == own
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
