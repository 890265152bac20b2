"""What every bench script shares: the command line, the GPU and its stream, timing, validation and
the one result line per version.

    name                                         |        ms |       GB/s |   TFLOP/s | max err
    v2 gemv moe_4_experts 1792x2048              |    0.0377 |     2336.4 |      2.34 | 5.1e-03 | 78% of HBM

ms: the median over --trials of one launch (or one call), after a warm-up. GB/s: the bytes the
version must move (its docstring says which) per second. TFLOP/s: useful FLOPs per second (no
padding). max err: max |out - ref| / max |ref| against the script's torch reference on random data
(exact comparisons print the fraction of elements that differ); a version over its tolerance
prints FAIL and the script exits 1. A '-' is a column that does not apply.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

COLUMNS = f"{'name':<44} | {'ms':>9} | {'GB/s':>10} | {'TFLOP/s':>9} | max err"


# ----- command line ------------------------------------------------------------------------------------
def parser(doc: str, prog: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help is the script's docstring, with the options every script has."""
    head, _, rest = doc.partition("\n\n")
    ap = argparse.ArgumentParser(prog=prog, description=head, epilog=rest,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", default="all", metavar="LIST",
                    help="comma-separated version numbers or names to run (default: all)")
    ap.add_argument("--trials", type=int, default=5, help="timed repeats; the line shows their median (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="the smallest configuration, a few seconds (what the GPU test of bench/ runs)")
    ap.add_argument("--device", type=int, default=0, help="GPU index (default 0)")
    return ap


def parse(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.trials < 1:
        ap.error("--trials must be >= 1")
    return args


def int_list(ap: argparse.ArgumentParser, text: str, option: str) -> list[int]:
    """'16,64,1024' -> [16, 64, 1024]; anything else fails the way argparse does (exit 2)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ap.error(f"{option} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        ap.error(f"{option} must list integers >= 1, got {text!r}")
    return values


def chosen(ap: argparse.ArgumentParser, versions: list[str], text: str) -> list[str]:
    """The versions --versions names ('all', numbers from 1 or names), in the script's order."""
    if text == "all":
        return list(versions)
    picked = set()
    for item in filter(None, (v.strip() for v in text.split(","))):
        if item.isdigit() and 1 <= int(item) <= len(versions):
            picked.add(versions[int(item) - 1])
        elif item in versions:
            picked.add(item)
        else:
            ap.error(f"--versions: no version {item!r}; choose from "
                     + ", ".join(f"{i} {v}" for i, v in enumerate(versions, 1)))
    return [v for v in versions if v in picked]


# ----- the GPU -----------------------------------------------------------------------------------------
class Device:
    """The GPU context (harness.gpu), a PyCUDA stream and the same stream for torch (`tstream`):
    optimized/'s launchers given `stream` and torch ops under `torch.cuda.stream(tstream)` are
    ordered together and captured into one CUDA graph, as in the engine."""

    def __init__(self, index: int = 0):
        import torch

        from harness.gpu import get_context
        self.gpu = get_context(index)
        self.torch_device = torch.device("cuda", self.gpu.index)
        torch.cuda.set_device(self.torch_device)
        self.stream = self.gpu.cuda.Stream()
        self.tstream = torch.cuda.ExternalStream(self.stream.handle, device=self.torch_device)

    def describe(self) -> str:
        return f"{self.gpu.name} ({self.gpu.arch}, {self.gpu.multiprocessors} SMs)"

    def capture(self, launch: Callable[[], object], reps: int = 20):
        """A CUDA graph of `reps` launch() calls back to back, after a warm-up call, replayed once."""
        import torch

        from optimized.plan import capturing
        torch.cuda.synchronize()  # inputs made on torch's default stream are ready
        with torch.cuda.stream(self.tstream):
            launch()
        self.tstream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with capturing(graph, self.tstream):
            for _ in range(reps):
                launch()
        with torch.cuda.stream(self.tstream):
            graph.replay()
        return graph

    def graph_ms(self, launch: Callable[[], object], reps: int = 20, trials: int = 5) -> float:
        """Median ms of one `launch()` over `trials` replays of a graph of `reps` launches (capture):
        the GPU's time, without the host's launch cost (a 5 us kernel launched one by one from
        Python is bound by the host)."""
        return events_ms(self.capture(launch, reps).replay, self.tstream, calls=1, trials=trials) / reps

    def run(self, launch: Callable[[], object]) -> None:
        """One `launch()` on the bench stream, waited for (validation runs)."""
        import torch
        torch.cuda.synchronize()
        with torch.cuda.stream(self.tstream):
            launch()
        self.tstream.synchronize()


def events_ms(fn: Callable[[], object], stream, calls: int, trials: int) -> float:
    """Median over `trials` of (GPU time of `calls` back-to-back fn() on torch stream `stream`,
    between CUDA events) / calls."""
    import torch
    times = []
    with torch.cuda.stream(stream):
        for _ in range(trials):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(calls):
                fn()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def open_device(index: int) -> Device:
    """The Device, or exit 2 with what is missing (these scripts need an NVIDIA GPU and PyCUDA)."""
    from harness.gpu import GPUUnavailable
    try:
        return Device(index)
    except (GPUUnavailable, ImportError) as e:
        print(f"error: no GPU: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def wall_ms(fns: dict[str, Callable[[], object]], sync: Callable[[], None], trials: int, warmup: int = 1,
            before: dict[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Median host ms of each fn() with `sync()` after it, the fns taking turns call by call (drift in
    clocks or copy speed hits all alike): for host-driven work that a CUDA graph cannot hold.
    before[name](), where given, runs ahead of each call of fns[name], off the clock."""
    before = before or {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for turn in range(warmup + trials):
        for name, fn in fns.items():
            if name in before:
                before[name]()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if turn >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


# ----- validation ------------------------------------------------------------------------------------
def poison(t):
    """Fill an output with what no correct kernel writes (NaN, or -1 for integers), so that a version
    that skips rows fails its check instead of passing on stale values; returns t."""
    return t.fill_(float("nan") if t.dtype.is_floating_point else -1)


def max_err(got, want) -> float:
    """max |got - want| / max |want| in float64 (inf where got has a non-finite value)."""
    import torch
    got, want = got.double(), want.double().to(got.device)
    if not bool(torch.isfinite(got).all()):
        return float("inf")
    scale = float(want.abs().max()) or 1.0
    return float((got - want).abs().max()) / scale


def mismatch(got, want) -> float:
    """Fraction of elements that differ (exact comparisons: copies, integer results)."""
    return float((got != want.to(got.device)).sum()) / max(1, want.numel())


def hbm_share(nbytes: float, ms: float) -> str:
    """'NN% of HBM': bytes per second against the H100's read ceiling (bench/hbm_read.py measures it)."""
    from harness.run.generation import HBM_BYTES_PER_S
    return f"{100 * nbytes / (ms * 1e-3) / HBM_BYTES_PER_S:.0f}% of HBM"


# ----- output -------------------------------------------------------------------------------------------
class Lines:
    """Prints the column header, then one line per version; counts the versions over tolerance."""

    def __init__(self, title: str):
        self.failed: list[str] = []
        print(title)
        print(COLUMNS, flush=True)

    def line(self, name: str, ms: float, nbytes: float | None = None, flops: float | None = None,
             err: float | None = None, tol: float | None = None, note: str = "") -> None:
        gbs = f"{nbytes / ms / 1e6:10.1f}" if nbytes else f"{'-':>10}"
        tflops = f"{flops / ms / 1e9:9.2f}" if flops else f"{'-':>9}"
        check = "-" if err is None else f"{err:.1e}"
        if err is not None and tol is not None and not err <= tol:  # `not <=`: NaN fails too
            check += f" FAIL (> {tol:g})"
            self.failed.append(name)
        print(f"{name:<44} | {ms:9.4f} | {gbs} | {tflops} | {check}" + (f" | {note}" if note else ""), flush=True)

    def skip(self, name: str, why: str) -> None:
        print(f"{name:<44} | skipped: {why}", flush=True)

    def exit_code(self) -> int:
        if self.failed:
            print(f"FAILED validation: {', '.join(self.failed)}", file=sys.stderr)
        return 1 if self.failed else 0
