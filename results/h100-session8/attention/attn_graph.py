"""Kernel-only attention time: a CUDA graph of 20 back-to-back launches, replayed (5 trials, median),
for attention.cu (simt), attention_mma.cu (mma, mma3) and torch sdpa (causal, GQA) as a yardstick.
Real shapes nh 32, nkv 8, hd 64, bf16. Prints one row per shape and variant; JSON to argv[1]."""
import json, sys
import torch
import torch.nn.functional as F
from harness.gpu import get_context
from optimized.kernels import Kernels

gpu = get_context()
stream = gpu.cuda.Stream()
K = Kernels(gpu, torch.bfloat16, stream=stream)
ts = torch.cuda.ExternalStream(stream.handle)
nh, nkv, hd, reps = 32, 8, 64, 20
rows = []

def graph_ms(launch):
    torch.cuda.synchronize()
    with torch.cuda.stream(ts):
        launch()
    ts.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=ts):
        for _ in range(reps):
            launch()
    t = []
    for _ in range(6):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(ts):
            a.record(); g.replay(); b.record()
        b.synchronize(); t.append(a.elapsed_time(b) / reps)
    return sorted(t[1:])[2]

for B, S in [(8, 512), (16, 512), (16, 128), (64, 16), (1, 16)]:
    q = torch.randn(B, nh, S, hd, device="cuda").to(torch.bfloat16)
    k, v = (torch.randn(B, nkv, S, hd, device="cuda").to(torch.bfloat16) for _ in range(2))
    o = torch.empty(B * S, nh * hd, dtype=torch.bfloat16, device="cuda")
    flops = B * 4 * nh * hd * S * (S + 1) / 2
    for var in ("simt", "mma", "mma3", "sdpa"):
        if var == "sdpa":
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            K.attn_variant = var
            fn = lambda: K.attention(q, k, v, o, B, S, nh, nkv, hd)
        try:
            ms = graph_ms(fn)
        except Exception as e:  # noqa: BLE001
            print(f"{B}x{S} {var}: {type(e).__name__}: {e}"); continue
        rows.append(dict(B=B, S=S, variant=var, ms=ms, tflops=flops / ms / 1e9))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
print(f"{'BxS':>8} {'var':>5} {'us/launch':>10} {'x6 layers ms':>12} {'TFLOP/s':>8}")
for r in rows:
    print(f"{r['B']}x{r['S']:<5} {r['variant']:>5} {1000*r['ms']:10.2f} {6*r['ms']:12.3f} {r['tflops']:8.1f}")
