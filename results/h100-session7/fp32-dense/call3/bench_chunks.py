"""Call 3: the 3xTF32 GEMM with the big product in K chunks (SplitTF32.mm, chunks 1..16) vs plain
fp32 cuBLAS: us per op from CUDA-graph replays; accuracy vs float64 at M=1024."""
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
MS = [128, 256, 1024]
CHUNKS = [1, 2, 4, 8, 16]
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


def errs(out, want):
    d = out.double() - want
    return {"max_rel": d.abs().max().item() / want.abs().max().item(),
            "rms_rel": (d.pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item(),
            "shrink": -(d * want.sign()).mean().item() / want.abs().mean().item()}


rows = []
g = torch.Generator(device=dev).manual_seed(0)
for name, (N, K) in SHAPES.items():
    w = torch.randn(N, K, device=dev, generator=g) * 0.02
    wx = split_weight(w)
    for M in MS:
        a = torch.randn(M, K, device=dev, generator=g)
        out = torch.empty(M, N, device=dev)
        scratch = torch.empty(2 * M * K, device=dev)
        row = {"shape": name, "M": M, "N": N, "K": K, "us_fp32": timed(lambda: torch.mm(a, w.t(), out=out))}
        want = a.double() @ w.double().T if M == 1024 else None
        if want is not None:
            torch.mm(a, w.t(), out=out); torch.cuda.synchronize()
            row["err_fp32"] = errs(out, want)
        for c in CHUNKS:
            X.chunks = c
            row[f"us_c{c}"] = timed(lambda: X.mm(a, wx, out, scratch))
            if want is not None:
                with torch.cuda.stream(ts):
                    X.mm(a, wx, out, scratch)
                ts.synchronize()
                row[f"err_c{c}"] = errs(out, want)
        rows.append(row)
        line = f"{name:9s} M={M:5d} fp32 {row['us_fp32']:7.1f}us " + " ".join(
            f"c{c} {row[f'us_c{c}']:7.1f}" for c in CHUNKS)
        print(line, flush=True)
        if want is not None:
            print("    max err/max|ref| (shrink): " + "; ".join(
                f"{k[4:]} {v['max_rel']:.2e} ({v['shrink']:+.1e}) rms {v['rms_rel']:.1e}"
                for k, v in row.items() if k.startswith("err_")), flush=True)
        del a, out, scratch, want
    del w, wx
    torch.cuda.empty_cache()
json.dump(rows, open(sys.argv[1], "w"), indent=1)
