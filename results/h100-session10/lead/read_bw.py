"""Session 10: achieved HBM read bandwidth of one launch reading 88 MB (one batch-1 MoE layer's expert
bytes, gate/up + down) with the decode GEMVs' register loads vs TMA bulk copies into shared memory.
Each launch reads another 88 MB window of a 2 GB buffer (no L2 reuse); 40 launches in a CUDA graph,
back to back, timed by CUDA events (best of 5)."""
from pathlib import Path
import numpy as np
import torch
from harness.gpu import get_context, load_module, launch
from optimized.kernels import ptr

gpu = get_context(0)
m = load_module(Path(__file__).with_name("read_bw.cu"))
buf = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
buf.random_(0, 255)
out = torch.zeros(1 << 16, device="cuda")
WIN = 88 * 2 ** 20
stream = gpu.cuda.Stream()
ts = torch.cuda.ExternalStream(stream.handle)
variants = {"ldg16 (8 KB/warp, 2 blocks/SM)": ("ldg16", 64 * 1024, 0), "ldg8 (4 KB/warp)": ("ldg8", 32 * 1024, 0),
            "ldg4 (2 KB/warp)": ("ldg4", 16 * 1024, 0), "bulk32 (32 KB/block)": ("bulk32", 32 * 1024, 32 * 1024),
            "bulk64 (64 KB/block)": ("bulk64", 64 * 1024, 64 * 1024)}
for name, (k, per_block, smem) in variants.items():
    kern = m.kernel(k)
    if smem > 48 * 1024:
        kern.function.set_attribute(gpu.cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
    blocks = WIN // per_block

    def body():
        for i in range(40):
            off = (i * WIN) % (buf.numel() - WIN)
            launch(kern, (blocks,), (256,), (ptr(buf[off:]), ptr(out)), shared=smem, stream=stream)
    with torch.cuda.stream(ts):
        body()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=ts):
            body()
        best = 1e9
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(ts); g.replay(); b.record(ts); b.synchronize()
            best = min(best, a.elapsed_time(b) / 40)
    print(f"{name:34s} {best * 1e3:8.1f} us per 88 MB launch  {WIN / best / 1e9:6.2f} TB/s", flush=True)
