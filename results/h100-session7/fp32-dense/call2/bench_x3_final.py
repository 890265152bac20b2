"""Call 2: the production 3xTF32 GEMM (SplitTF32.mm: split kernel [ah|al|ah] + one K-concatenated
TF32 GEMM) vs plain fp32 cuBLAS, per op from CUDA-graph replays; accuracy vs float64 at M=1024."""
import json, statistics, sys
import torch
from harness.gpu import get_context
from optimized.engine import capturing
from optimized.split_tf32 import SplitTF32, split_weight

gpu = get_context(0)
dev = gpu.torch_device
stream = gpu.cuda.Stream()
ts = torch.cuda.ExternalStream(stream.handle, device=dev)
X = SplitTF32(gpu, stream)
torch.backends.cuda.matmul.allow_tf32 = False
SHAPES = {"conv_in": (6144, 2048), "out_proj": (2048, 2048), "attn_qkv": (3072, 2048),
          "ffn_w13": (14336, 2048), "ffn_w2": (2048, 7168)}
MS = [64, 96, 128, 1024, 4096]
REPS = 20


def timed(fn):
    with torch.cuda.stream(ts):
        fn()
        ts.synchronize()
        g = torch.cuda.CUDAGraph()
        with capturing(g, ts):
            for _ in range(REPS):
                fn()
        g.replay()
        ts.synchronize()
        ms = []
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(ts); g.replay(); e.record(ts); e.synchronize()
            ms.append(s.elapsed_time(e) * 1e3 / REPS)
    return statistics.median(ms)


rows = []
g = torch.Generator(device=dev).manual_seed(0)
for name, (N, K) in SHAPES.items():
    w = torch.randn(N, K, device=dev, generator=g) * 0.02
    wx = split_weight(w)
    for M in MS:
        a = torch.randn(M, K, device=dev, generator=g)
        out = torch.empty(M, N, device=dev)
        scratch = torch.empty(3 * M * K, device=dev)
        ax = scratch.view(M, 3 * K)
        t_fp32 = timed(lambda: torch.mm(a, w.t(), out=out))
        t_split = timed(lambda: X.split_rows(a, ax))
        t_x3 = timed(lambda: X.mm(a, wx, out, scratch))
        row = {"shape": name, "M": M, "N": N, "K": K, "us_fp32": t_fp32, "us_x3": t_x3, "us_split": t_split}
        if M == 1024:
            want = a.double() @ w.double().T
            with torch.cuda.stream(ts):
                X.mm(a, wx, out, scratch)
            ts.synchronize()
            d = out.double() - want
            row["x3_max_rel"] = d.abs().max().item() / want.abs().max().item()
            row["x3_shrink"] = -(d * want.sign()).mean().item() / want.abs().mean().item()
        rows.append(row)
        print(f"{name:9s} M={M:5d} fp32 {t_fp32:8.1f} us  x3 {t_x3:8.1f} us (split {t_split:5.1f})  "
              f"speedup {t_fp32 / t_x3:5.2f}x" + (f"  max err/max|ref| {row['x3_max_rel']:.2e} shrink "
                                                  f"{row['x3_shrink']:+.1e}" if M == 1024 else ""), flush=True)
    del w, wx
    torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
