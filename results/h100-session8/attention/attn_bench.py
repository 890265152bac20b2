"""SIMT vs tensor-core attention at the real shapes (nh 32, nkv 8, hd 64, bf16): max error of the output
scale vs float64 and vs SIMT, and ms per launch (median of 5 trials of 20 back-to-back launches between
CUDA events). Prints one table row per shape and variant; writes JSON to argv[1]."""
import json, sys
import torch
sys.path.insert(0, "tests/gpu")
from test_optimized_kernels import naive_attention
from harness.gpu import get_context
from optimized.kernels import Kernels

K = Kernels(get_context(), torch.bfloat16, stream=None)
nh, nkv, hd = 32, 8, 64
rows = []
def event_ms(fn, reps=20):
    fn(); t = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps): fn()
        b.record(); b.synchronize(); t.append(a.elapsed_time(b) / reps)
    return sorted(t)[2]
for B, S in [(8, 512), (16, 128), (64, 16), (16, 512)]:
    g = torch.Generator(device="cuda"); g.manual_seed(B * 1000 + S)
    r = lambda *s: torch.randn(s, generator=g, device="cuda").to(torch.bfloat16)
    q, k, v = r(B, nh, S, hd), r(B, nkv, S, hd), r(B, nkv, S, hd)
    want = naive_attention(q, k, v).double()
    scale = want.abs().max().item()
    outs = {}
    flops = B * 4 * nh * hd * S * (S + 1) / 2
    for var in ("simt", "mma", "mma3"):
        K.attn_variant = var
        o = torch.full((B * S, nh * hd), float("nan"), dtype=torch.bfloat16, device="cuda")
        K.attention(q, k, v, o, B, S, nh, nkv, hd); torch.cuda.synchronize()
        outs[var] = o.view(B, S, -1).double()
        ms = event_ms(lambda: K.attention(q, k, v, o, B, S, nh, nkv, hd))
        err = ((outs[var] - want).abs().max() / scale).item()
        vs = ((outs[var] - outs["simt"]).abs().max() / scale).item()
        rows.append(dict(B=B, S=S, variant=var, ms=ms, tflops=flops / ms / 1e9, err_f64=err, err_vs_simt=vs,
                         finite=bool(torch.isfinite(outs[var]).all())))
json.dump(rows, open(sys.argv[1], "w"), indent=1)
print(f"{'BxS':>8} {'var':>5} {'ms/launch':>10} {'x6 layers':>9} {'TFLOP/s':>8} {'err_f64':>9} {'vs_simt':>9}")
for r in rows:
    print(f"{r['B']}x{r['S']:<5} {r['variant']:>5} {r['ms']:10.4f} {6*r['ms']:9.3f} {r['tflops']:8.1f} "
          f"{r['err_f64']:9.2e} {r['err_vs_simt']:9.2e} {'' if r['finite'] else 'NONFINITE'}")
