"""Time phase 3's conv block and embedding against the phase-2 path, one layer at a time.

    python -m phases.phase3 --preset small --seq-len 16 512 --repeat 30

On one Phase3Engine it times, with a device synchronize around each call (host wall clock), the\npaths taking turns so that the saving is a median of paired differences:
  conv, phase-2 path   BaselineEngine.conv_block: in_proj matmul, BCx down, numpy conv, y up, out_proj matmul
  conv, phase-3 path   conv_block: h up, in_proj GEMM, the fused kernel, out_proj GEMM, out down
  embedding            the CPU gather of phases 0-2 vs embed (ids up, table via device_weight, gather, rows down)
and, with CUDA events over back-to-back launches, the fused kernel and the two GEMMs alone, plus
the numpy conv core alone. Bytes come from the engine's counters of one call. The `small` preset
has the real hidden size (2048), so its conv layers are the full model's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def wall(engine, fns: dict, repeat: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each call of each fn, with a device synchronize around it. The fns take turns
    (A B A B ...), so drift in the copy speed hits every path alike and paired differences hold."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            engine.synchronize()
            t0 = time.perf_counter()
            fn()
            engine.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times


def counted(engine, fn) -> dict:
    engine.counters.reset()
    fn()
    c = engine.counters
    return {"h2d_weight_bytes": c.weight_h2d_bytes, "h2d_activation_bytes": c.h2d_bytes - c.weight_h2d_bytes,
            "d2h_bytes": c.d2h_bytes, "copies": c.h2d_copies + c.d2h_copies, "device_allocs": c.device_allocs,
            "h2d_s": c.h2d_seconds, "d2h_s": c.d2h_seconds}


def event_ms(engine, fn, repeat: int, tries: int = 3) -> float:
    """Device time per fn() (launches back to back, no synchronize between them) with CUDA events:
    the least of `tries` means over `repeat` calls. Where the kernel is shorter than the host's
    launch overhead this is the launch rate instead (compare with a 1-row launch)."""
    cuda = engine.transfers.cuda
    engine.sync_launches = False  # instance override: back-to-back launches
    try:
        fn()
        best = float("inf")
        for _ in range(tries):
            start, end = cuda.Event(), cuda.Event()
            start.record(engine.stream)
            for _ in range(repeat):
                fn()
            end.record(engine.stream)
            end.synchronize()
            best = min(best, start.time_till(end) / repeat)
        return best
    finally:
        del engine.sync_launches


def stats(times: list[float]) -> dict:
    q = np.percentile(times, [25, 50, 75])
    return {"median_ms": 1e3 * float(q[1]), "p25_ms": 1e3 * float(q[0]), "p75_ms": 1e3 * float(q[2]),
            "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times), "n": len(times)}


def measure(engine, layer: int, T: int, repeat: int, rng) -> dict:
    from baseline import host_ops
    from baseline.engine import BaselineEngine

    cfg = engine.config
    H, L, c = cfg.hidden_size, cfg.conv_L_cache, f"layers.{layer}.conv."
    h = rng.normal(size=(T, H)).astype(np.float32)
    ids = rng.integers(0, cfg.vocab_size, size=T, dtype=np.int32)
    out = {"seq_len": T, "layer": layer}
    paths = {"conv_phase2_path": lambda: BaselineEngine.conv_block(engine, layer, h),
             "conv_phase3_fused": lambda: engine.conv_block(layer, h),
             "embed_phase2_cpu": lambda: BaselineEngine.embed(engine, ids),
             "embed_phase3_gpu": lambda: engine.embed(ids)}
    times = wall(engine, paths, repeat)
    for name, fn in paths.items():
        out[name] = {**stats(times[name]), **counted(engine, fn)}
    # the conv saving as paired differences of neighbouring calls (robust to copy-speed drift)
    out["saved"] = stats([a - b for a, b in zip(times["conv_phase2_path"], times["conv_phase3_fused"])])

    # the pieces alone, on buffers that stay on the device
    t = engine.transfers
    bcx = engine.matmul(h, c + "in_proj.weight")
    d_h, d_bcx, d_y = t.to_device(h), t.to_device(bcx), t.alloc(T * H * 4)
    d_in, d_cw, d_out_w = (t.to_device(engine.weights[c + n]) for n in ("in_proj.weight", "conv.weight", "out_proj.weight"))
    d_o = t.alloc(T * H * 4)
    reps = 200 if T <= 64 else 20
    out["kernel_fused_ms"] = event_ms(engine, lambda: engine.shortconv_gate(d_bcx, d_cw, d_y, 1, T, H, L), reps)
    out["kernel_fused_1row_ms"] = event_ms(engine, lambda: engine.shortconv_gate(d_bcx, d_cw, d_y, 1, 1, H, L), reps)
    out["gemm_in_proj_ms"] = event_ms(engine, lambda: engine.gemm(d_h, d_in, d_bcx, T, 3 * H, H), reps)
    out["gemm_out_proj_ms"] = event_ms(engine, lambda: engine.gemm(d_y, d_out_w, d_o, T, H, H), reps)
    for d in (d_h, d_bcx, d_y, d_in, d_cw, d_out_w, d_o):
        t.free(d)
    w = engine.weights[c + "conv.weight"]
    out["numpy_conv_core"] = stats(wall(engine, {"core": lambda: host_ops.shortconv_core(bcx, w)}, repeat)["core"])
    fused_bytes = (3 * T * H + T * H + H * L) * 4
    out["kernel_fused_GBps"] = fused_bytes / (out["kernel_fused_ms"] * 1e-3) / 1e9
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phases.phase3", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="synthetic model preset (default small: H = 2048, the real width)")
    ap.add_argument("--seq-len", type=int, nargs="+", default=[16, 512], help="tokens per call (default 16 512)")
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per path, taking turns (default 30, after 2 warm-up calls each)")
    ap.add_argument("--layer", type=int, help="conv layer to time (default: the first conv layer)")
    ap.add_argument("--device", default="auto", help="GPU index, or 'auto' = MPI local rank")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.repeat < 1 or min(args.seq_len) < 1:
        ap.error("--repeat and every --seq-len must be >= 1")

    from harness.config import get_preset
    from harness.gpu import GPUUnavailable
    from harness.checkpoints.synthetic import synthetic_checkpoint

    from .engine import Phase3Engine
    cfg = get_preset(args.preset)
    layer = cfg.conv_layers[0] if args.layer is None else args.layer
    if not 0 <= layer < cfg.num_layers:
        ap.error(f"--layer {layer} does not exist: {cfg.name} has layers 0..{cfg.num_layers - 1}")
    if cfg.is_attention(layer):
        ap.error(f"layer {layer} of {cfg.name} is an attention layer; conv layers: {cfg.conv_layers}")
    try:
        engine = Phase3Engine(synthetic_checkpoint(cfg, seed=0), device=args.device)
    except GPUUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    results = {"engine": engine.name, "model": cfg.name, "device": engine.gpu.name,
               "runs": [measure(engine, layer, T, args.repeat, rng) for T in args.seq_len]}
    engine.close()
    for r in results["runs"]:
        p2, p3 = r["conv_phase2_path"], r["conv_phase3_fused"]
        print(f"{cfg.name} layer {r['layer']}, T={r['seq_len']} on {results['device']}:")
        for name in ("conv_phase2_path", "conv_phase3_fused", "embed_phase2_cpu", "embed_phase3_gpu"):
            x = r[name]
            print(f"  {name:18s} median {x['median_ms']:8.3f} ms (IQR {x['p25_ms']:.3f}-{x['p75_ms']:.3f}); "
                  f"h2d weights {x['h2d_weight_bytes']:,} B, h2d act {x['h2d_activation_bytes']:,} B, "
                  f"d2h {x['d2h_bytes']:,} B, {x['copies']} copies, {x['device_allocs']} allocs, "
                  f"copy time h2d {1e3 * x['h2d_s']:.3f} ms d2h {1e3 * x['d2h_s']:.3f} ms")
        sv = r["saved"]
        print(f"  saved per conv layer: {sv['median_ms']:.3f} ms (paired, IQR {sv['p25_ms']:.3f}-{sv['p75_ms']:.3f}) and "
              f"{p2['h2d_activation_bytes'] + p2['d2h_bytes'] - p3['h2d_activation_bytes'] - p3['d2h_bytes']:,} "
              "activation bytes")
        print(f"  alone: fused kernel {1e3 * r['kernel_fused_ms']:.1f} us ({r['kernel_fused_GBps']:.0f} GB/s; "
              f"a 1-row launch {1e3 * r['kernel_fused_1row_ms']:.1f} us), "
              f"in_proj GEMM {r['gemm_in_proj_ms']:.3f} ms, out_proj GEMM {r['gemm_out_proj_ms']:.3f} ms, "
              f"numpy conv core {r['numpy_conv_core']['median_ms']:.3f} ms")
    if args.json:  # under a temporary name first: never a half-written file
        partial = f"{args.json}.{os.getpid()}.tmp"
        with open(partial, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(partial, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
