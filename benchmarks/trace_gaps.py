"""Where the GPU waits, from a torch.profiler chrome trace (train.py's `trainer.profile_steps=N`, or
ddp_step.py's --profile): how long the GPU was busy, in communication (NCCL) and idle over the
traced span, the largest idle gaps with the work on either side, and every copy to the host with
the CPU operations that asked for it (each one makes the host wait for the GPU).

    python benchmarks/trace_gaps.py outputs/.../profile_rank0.json.gz [more traces]

This is how the per-step host sync in Lightning's DDP loop was found (preemption.py).
"""

from __future__ import annotations

import argparse
import gzip
import json

GPU = ("kernel", "gpu_memcpy", "gpu_memset")


def load(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def gaps(events: list[dict], at_least_us: float = 0.0) -> list[tuple[float, str, str]]:
    """(idle microseconds, the work before, the work after) for every gap of at least `at_least_us`
    between the events' intervals, overlapping intervals taken as one."""
    out, end, last = [], None, None
    for e in sorted(events, key=lambda e: e["ts"]):
        if end is not None and e["ts"] - end >= at_least_us:
            out.append((e["ts"] - end, last["name"], e["name"]))
        if end is None or e["ts"] + e["dur"] > end:
            end, last = e["ts"] + e["dur"], e
    return out


def span(events: list[dict]) -> float:
    return max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events) if events else 0.0


def busy(events: list[dict]) -> float:
    """Microseconds covered by the union of the events' intervals: their span less its gaps."""
    return span(events) - sum(g[0] for g in gaps(events))


def host_syncs(events: list[dict]) -> list[str]:
    """For each device-to-host copy: the CPU operations around the call that launched it."""
    launches = {e["args"].get("correlation"): e for e in events if e.get("cat") == "cuda_runtime"}
    cpu = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation")]
    out = []
    for copy in (e for e in events if e.get("cat") == "gpu_memcpy" and "DtoH" in e["name"]):
        call = launches.get(copy["args"].get("correlation"))
        if call is None:
            continue
        around = sorted((c for c in cpu if c["tid"] == call["tid"] and c["ts"] <= call["ts"]
                         and c["ts"] + c["dur"] >= call["ts"] + call["dur"]), key=lambda c: c["ts"])
        before = max((c for c in cpu if c["tid"] == call["tid"] and c["ts"] + c["dur"] <= call["ts"]
                      and c["name"].startswith("c10d::")), key=lambda c: c["ts"], default=None)
        out.append(" > ".join(c["name"][:60] for c in around)
                   + (f"   (after {before['name']}, {(call['ts'] - before['ts']) / 1e3:.2f} ms before)" if before else ""))
    return out


def report(path: str, top: int) -> None:
    events = load(path)
    gpu = [e for e in events if e.get("cat") in GPU]
    if not gpu:
        print(f"== {path}: no GPU activity in the trace (a CPU run?)")
        return
    nccl = [e for e in gpu if "nccl" in e["name"].lower()]
    steps = {e["name"] for e in events if e["name"].startswith("ProfilerStep#")}
    idle = gaps(gpu, 5.0)
    print(f"== {path}\n{len(steps)} steps traced, GPU span {span(gpu) / 1e3:.1f} ms: busy {busy(gpu) / 1e3:.1f} ms, "
          f"NCCL {busy(nccl) / 1e3:.1f} ms ({len(nccl)} kernels), idle {sum(g[0] for g in idle) / 1e3:.1f} ms "
          f"in {len(idle)} gaps of 5 us or more")
    print("largest idle gaps:")
    for us, before, after in sorted(idle, reverse=True)[:top]:
        print(f"  {us / 1e3:7.3f} ms   after {before[:55]}   before {after[:55]}")
    syncs = host_syncs(events)
    print(f"copies to the host (the host waits for the GPU): {len(syncs)}")
    for s in syncs[:top]:
        print(f"  {s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+")
    p.add_argument("--top", type=int, default=8, help="gaps and host copies listed")
    args = p.parse_args()
    for path in args.traces:
        report(path, args.top)


if __name__ == "__main__":
    main()
