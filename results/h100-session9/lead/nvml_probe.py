"""Does the harness's NVML sampler thread slow the forward? 64x16 bf16 forwards with no sampler, the sampler
as the harness runs it (every 0.1 s: utilization, memory, PCIe rx + tx), and the sampler without PCIe."""
import time
import numpy as np
from harness.config import PRESETS
from harness.nvml_sampler import NvmlSampler
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

cfg = PRESETS["lfm2-8b-a1b"]
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
tok = np.random.default_rng(0).integers(0, cfg.vocab_size, (64, 16)).astype(np.int64)
eng.forward(tok)
gpu = 0  # the NVML device index the worker passes


def timed(n=24):
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter(); eng.forward(tok); eng.synchronize(); lat.append((time.perf_counter() - t) * 1e3)
    return np.median(lat), max(lat), (time.perf_counter() - t0) / n * 1e3


for mode in ("none", "harness", "no-pcie", "none", "harness"):
    s = None
    if mode != "none":
        s = NvmlSampler(gpu, 0.1)
        orig = s._nv.nvmlDeviceGetPcieThroughput
        if mode == "no-pcie":
            def nope(*a):
                raise RuntimeError("off")
            s._nv.nvmlDeviceGetPcieThroughput = nope
        s.start()
    p50, mx, per = timed()
    if s:
        ser = s.stop()
        s._nv.nvmlDeviceGetPcieThroughput = orig
        note = f" samples {len(ser.t_s)}"
    else:
        note = ""
    print(f"{mode:8s} forward p50 {p50:6.2f} ms  max {mx:6.2f}  wall per forward {per:6.2f} ms{note}", flush=True)
t = time.perf_counter()
s = NvmlSampler(gpu, 0.1); s._sample_once() if s.series.available else None
print(f"one NVML sample: {(time.perf_counter() - t) * 1e3:.1f} ms", flush=True)
eng.close()
