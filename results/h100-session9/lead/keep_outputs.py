"""Does keeping every batch's logits (as the harness's timed loop does) cost page faults? 64x16 bf16 forwards:
outputs dropped, kept in a list, or copied into an array touched before the clock."""
import time
import numpy as np
import torch
from harness.config import PRESETS
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

t = time.perf_counter(); a = np.empty(256 << 20, np.uint8); a[::4096] = 1; dt = time.perf_counter() - t
print(f"first touch of 256 MB: {dt * 1e3:.1f} ms = {dt / 256 * 1e3:.2f} ms per MB", flush=True)
t = time.perf_counter(); a[::4096] = 2; dt = time.perf_counter() - t
print(f"second touch of the same 256 MB: {dt * 1e3:.2f} ms", flush=True)
cfg = PRESETS["lfm2-8b-a1b"]
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
tok = np.random.default_rng(0).integers(0, cfg.vocab_size, (64, 16)).astype(np.int64)
eng.forward(tok)
for mode in ("drop", "keep", "copy", "drop", "keep"):
    kept, lat = [], []
    res = np.empty((16 * 64, cfg.vocab_size), np.float32); res[:] = 0
    for i in range(16):
        t = time.perf_counter(); out = eng.forward(tok); eng.synchronize(); lat.append((time.perf_counter() - t) * 1e3)
        if mode == "keep":
            kept.append(np.asarray(out, dtype=np.float32))
        elif mode == "copy":
            res[i * 64:(i + 1) * 64] = out
    print(f"{mode:5s} p50 {np.median(lat):7.2f} ms  min {min(lat):7.2f}  max {max(lat):7.2f}", flush=True)
