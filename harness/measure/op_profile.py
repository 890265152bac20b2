"""Where a forward's time goes, per operation: one forward under torch.profiler.

On a GPU the table holds the kernels that ran (CUPTI sees PyCUDA's launches and cuBLAS's alike),
with their GPU time; on the CPU, torch's operators with their self time (so nested ops are not
counted twice). The harness's `--profile-ops` runs this once per variant after the timed region,
and report.html shows the top of each table; the timings themselves are never taken from it.
"""
from __future__ import annotations

from typing import Callable


def profile_ops(work: Callable[[], object], on_gpu: bool, synchronize: Callable[[], None] = lambda: None) -> list[dict]:
    """Run `work()` once under torch.profiler -> [{"name", "calls", "us"}], most time first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        work()
        synchronize()
    ops: dict[str, dict] = {}
    if on_gpu:
        for ev in prof.events():
            if getattr(ev, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            op = ops.setdefault(ev.name, {"name": ev.name, "calls": 0, "us": 0.0})
            op["calls"] += 1
            op["us"] += ev.time_range.elapsed_us()
    else:
        for avg in prof.key_averages():
            if avg.self_cpu_time_total > 0:
                ops[avg.key] = {"name": avg.key, "calls": int(avg.count), "us": float(avg.self_cpu_time_total)}
    return sorted(ops.values(), key=lambda op: -op["us"])


def format_table(ops: list[dict], title: str, top: int = 14) -> str:
    """The table as text: total, launches or calls, then the top rows with their share."""
    total = sum(op["us"] for op in ops) or 1.0
    lines = [f"{title}: {total / 1e3:.3f} ms in {sum(op['calls'] for op in ops)} calls"]
    for op in ops[:top]:
        lines.append(f"  {op['us'] / 1e3:8.3f} ms {100 * op['us'] / total:5.1f}%  x{op['calls']:<4} {op['name'][:90]}")
    return "\n".join(lines)
