"""Generation speed of our GPT with and without the KV cache, in one run.

    python benchmarks/generation.py                                   # CPU: the quickstart GPT (2.9M)
    python benchmarks/generation.py --model gpt_50m --batch 4 --new-tokens 64 --rounds 2   # CPU, the default GPT
    python benchmarks/generation.py --model gpt_50m --device cuda --batch 32 --prompt-len 256 --new-tokens 256 \
        --out generation_gpt50m_gpu.json                               # a GPU (bf16; --dtype float32 too)

A randomly initialised GPT of the `model` config (`conf/model/<name>.yaml`, vocabulary 8192) generates
greedily `--new-tokens` tokens after `--batch` random prompts of `--prompt-len` tokens, every token
(no early stop), through `generate` as the research tools call it, with `use_cache=True` and `False` in
turn for `--rounds` rounds after one untimed warm-up of each. New tokens per second = batch x new
tokens / the median time. In float32 both ways give the same tokens (`same_tokens`); in bfloat16 their
different kernels round differently, so a random model's near-flat logits tie-break apart at some step
(`same_tokens_share`, `rows_identical` say how far they agree). Prints one JSON object (and writes it
to `--out`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def build(name: str, device: str, dtype: torch.dtype):
    from autolab.models import GPT, GPTConfig

    path = ROOT / "conf" / "model" / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"error: no model config {path}: pick one of conf/model/*.yaml")
    cfg = yaml.safe_load(path.read_text())
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                          max_position_embeddings=2048, rope_theta=cfg["rope_theta"],
                          value_embeddings=cfg["value_embeddings"], logit_softcap=cfg["logit_softcap"],
                          x0_skip=cfg["x0_skip"]))
    return model.to(device=device, dtype=dtype).eval()


def timed(model, prompts, new_tokens: int, use_cache: bool, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
                             use_cache=use_cache)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt_tiny", help="conf/model/<name>.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's choice); 1 is steadier on a busy machine")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no GPU is visible: run on a GPU machine or use --device cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    model = build(a.model, a.device, dtype)
    prompts = torch.randint(1, 8192, (a.batch, a.prompt_len), generator=torch.Generator().manual_seed(0)).to(a.device)
    times = {True: [], False: []}
    outs = {}
    for use_cache in (True, False):  # warm-up, the whole length (the allocator's and kernels' first calls)
        timed(model, prompts, a.new_tokens, use_cache, a.device)
    for _ in range(a.rounds):
        for use_cache in (True, False):
            t, outs[use_cache] = timed(model, prompts, a.new_tokens, use_cache, a.device)
            times[use_cache].append(t)
    rate = {k: a.batch * a.new_tokens / statistics.median(v) for k, v in times.items()}
    result = {
        "model": a.model, "parameters": sum(p.numel() for p in model.parameters()), "device": a.device,
        "device_name": torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."), "batch": a.batch,
        "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "rounds": a.rounds,
        "seconds_cache": times[True], "seconds_no_cache": times[False],
        "tokens_per_s_cache": rate[True], "tokens_per_s_no_cache": rate[False],
        "speedup": rate[True] / rate[False],
        "same_tokens": bool(torch.equal(outs[True], outs[False])),
        # in bfloat16 the two ways round differently (other kernels, other shapes): a random model's
        # near-flat logits then tie-break apart at some step, after which a row's tokens differ
        "same_tokens_share": (outs[True] == outs[False])[:, a.prompt_len:].float().mean().item(),
        "rows_identical": int((outs[True] == outs[False]).all(dim=1).sum()),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
