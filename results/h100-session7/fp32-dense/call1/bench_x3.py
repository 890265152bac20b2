"""3xTF32 vs plain fp32 cuBLAS for the fp32 engine's dense projections (helper s7, fp32-dense).
Times per op from CUDA-graph replays of REPS back-to-back ops (CUDA events), accuracy vs float64."""
import json, statistics, sys
import torch
from harness.gpu import get_context
from optimized.engine import capturing
from optimized.split_tf32 import SplitTF32, split_weight, tf32_matmul, x3_gemms

gpu = get_context(0)
dev = gpu.torch_device
stream = gpu.cuda.Stream()
ts = torch.cuda.ExternalStream(stream.handle, device=dev)
X = SplitTF32(gpu, stream)
torch.backends.cuda.matmul.allow_tf32 = False
SHAPES = {"conv_in": (6144, 2048), "out_proj": (2048, 2048), "attn_qkv": (3072, 2048),
          "ffn_w13": (14336, 2048), "ffn_w2": (2048, 7168), "lm_head": (65536, 2048)}
MS = [16, 64, 128, 256, 1024, 4096]
REPS = 20


def timed(fn):
    with torch.cuda.stream(ts):
        fn()  # warm-up: handles, heuristics
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
    del g
    return statistics.median(ms)  # us per op


def errs(out, want):
    d = out.double() - want
    return {"max_rel": d.abs().max().item() / want.abs().max().item(),
            "rms_rel": (d.pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item(),
            "shrink": -(d * want.sign()).mean().item() / want.abs().mean().item()}  # + = biased toward 0


rows, acc = [], []
g = torch.Generator(device=dev).manual_seed(0)
for name, (N, K) in SHAPES.items():
    w = torch.randn(N, K, device=dev, generator=g) * 0.02
    wx = split_weight(w)
    w3 = torch.cat([wx, wx[:, K:]], 1).contiguous()  # [wl | wh | wh]
    w3b = torch.cat([wx[:, K:], wx], 1).contiguous()  # [wh | wl | wh]
    for M in MS:
        if name == "lm_head" and M > 1024:
            continue
        a = torch.randn(M, K, device=dev, generator=g)
        out = torch.empty(M, N, device=dev)
        scratch = torch.empty(2 * M * K, device=dev)
        ax = scratch.view(M, 2 * K)
        X.split_rows(a, ax); torch.cuda.synchronize()
        ax3 = torch.cat([ax, ax[:, :K]], 1).contiguous()  # [ah | al | ah]
        ax3b = torch.cat([ax[:, :K], ax], 1).contiguous()  # [ah | ah | al]

        def fp32(): torch.mm(a, w.t(), out=out)
        def tf32():
            with tf32_matmul(): torch.mm(a, w.t(), out=out)
        def split(): X.split_rows(a, ax)
        def x3_2mm(): X.mm(a, wx, out, scratch)
        def x3_3mm():
            X.split_rows(a, ax)
            with tf32_matmul():
                torch.mm(ax[:, K:], wx[:, K:].t(), out=out)  # al.wh
                out.addmm_(ax[:, :K], wx[:, :K].t())  # += ah.wl
                out.addmm_(ax[:, :K], wx[:, K:].t())  # += ah.wh
        def x3_1mm():  # K-concatenated, small terms first; GEMM only (+ split time below)
            with tf32_matmul(): torch.mm(ax3, w3.t(), out=out)
        def x3_1mm_bigfirst():
            with tf32_matmul(): torch.mm(ax3b, w3b.t(), out=out)
        forms = {"fp32": fp32, "tf32": tf32, "split": split, "x3_2mm": x3_2mm, "x3_3mm": x3_3mm, "x3_1mm_gemm": x3_1mm}
        t = {k: timed(f) for k, f in forms.items()}
        t["x3_1mm"] = t.pop("x3_1mm_gemm") + t["split"]
        flop = 2 * M * N * K
        row = {"shape": name, "M": M, "N": N, "K": K, **{f"us_{k}": v for k, v in t.items()},
               "fp32_tflops": flop / t["fp32"] / 1e6, "x3_2mm_tflops_eff": flop / t["x3_2mm"] / 1e6}
        rows.append(row)
        print(f"{name:9s} M={M:5d} " + " ".join(f"{k}={v:8.1f}us" for k, v in t.items())
              + f"  fp32 {row['fp32_tflops']:.1f} TF/s, x3 eff {row['x3_2mm_tflops_eff']:.1f} TF/s", flush=True)
        if M == 1024 or (name == "lm_head" and M == 64):
            want = a.double() @ w.double().T
            e = {}
            for k, f in {**forms, "x3_1mm_bigfirst": x3_1mm_bigfirst}.items():
                if k == "split":
                    continue
                with torch.cuda.stream(ts):
                    f()
                ts.synchronize()
                e[k] = errs(out, want)
            acc.append({"shape": name, "M": M, "K": K, **e})
            print("   accuracy (max err/max|ref|, rms rel, shrink): " + "; ".join(
                f"{k} {v['max_rel']:.2e} {v['rms_rel']:.2e} {v['shrink']:+.1e}" for k, v in e.items()), flush=True)
            del want
        del a, out, scratch, ax, ax3, ax3b
    del w, wx, w3, w3b
    torch.cuda.empty_cache()

json.dump({"rows": rows, "accuracy": acc, "device": torch.cuda.get_device_name(0), "torch": torch.__version__},
          open(sys.argv[1], "w"), indent=1)
print("\nsummary: us per op (fp32 -> x3_2mm / x3_3mm / x3_1mm) and the best x3 speedup")
for r in rows:
    best = min(r["us_x3_2mm"], r["us_x3_3mm"], r["us_x3_1mm"])
    print(f"{r['shape']:9s} M={r['M']:5d}  fp32 {r['us_fp32']:8.1f}  2mm {r['us_x3_2mm']:8.1f}  3mm {r['us_x3_3mm']:8.1f}  "
          f"1mm {r['us_x3_1mm']:8.1f}  tf32 {r['us_tf32']:7.1f}  split {r['us_split']:6.1f}  speedup {r['us_fp32'] / best:5.2f}x")
