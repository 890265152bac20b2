"""Time the grouped MoE GEMMs of given variants at the real shape (E=32, k=4, H=2048, Im=1792), gate/up and
down separately, between CUDA events; print the tile table's padding. Usage: python moe_probe.py TOKENS V1,V2,..."""
import sys
import torch
from harness.gpu.context import get_context
from optimized.kernels import Kernels, max_gemm_tiles

tokens, names = int(sys.argv[1]), sys.argv[2].split(",")
gpu = get_context()
K = Kernels(gpu, torch.bfloat16, stream=None)
E, k, H, Im = 32, 4, 2048, 1792
torch.manual_seed(0)
r = lambda *s, scale=1.0: (torch.randn(s, device="cuda") * scale).to(torch.bfloat16)
w13, w2 = r(E, 2 * Im, H, scale=0.02), r(E, H, Im, scale=0.02)
npairs = tokens * k
h, logits = r(tokens, H), r(tokens, E)
bias = torch.randn(E, device="cuda") * 0.05
idx = torch.empty(tokens, k, dtype=torch.int32, device="cuda"); wts = torch.empty(tokens, k, device="cuda")
sp = torch.empty(npairs, dtype=torch.int32, device="cuda"); offs = torch.empty(E + 1, dtype=torch.int32, device="cuda")
act = torch.empty(npairs, Im, dtype=torch.bfloat16, device="cuda"); ys = torch.empty(npairs, H, dtype=torch.bfloat16, device="cuda")
K.route(logits, bias, k, True, 1.0, idx, wts)
flops_gu, flops_dn = 2 * npairs * 2 * H * Im, 2 * npairs * H * Im


def ev(fn, reps=20):
    fn(); torch.cuda.synchronize()
    out = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record(); b.synchronize(); out.append(a.elapsed_time(b) / reps)
    return sorted(out)[2]


for name in names:
    rows = K.moe_variant(name).tile_rows
    tiles = torch.empty(3 * max_gemm_tiles(npairs, E, torch.bfloat16, rows), dtype=torch.int32, device="cuda")
    nt = torch.empty(1, dtype=torch.int32, device="cuda")
    K.moe_sort(idx, E, sp, offs, tiles, nt, variant=name)
    n = int(nt.item())
    gu = ev(lambda: K.moe_gateup(h, w13, act, sp, tiles, nt, npairs, k, variant=name))
    dn = ev(lambda: K.moe_down(act, w2, ys, sp, tiles, nt, wts, npairs, variant=name))
    pad = n * rows / npairs - 1
    print(f"{tokens:6d} {name:10s} tiles {n:4d} padding {pad * 100:5.1f}%  gate/up {gu * 1e3:7.1f} us "
          f"{flops_gu / gu / 1e9:6.1f} TFLOP/s ({flops_gu * (1 + pad) / gu / 1e9:6.1f} computed)  down {dn * 1e3:7.1f} us "
          f"{flops_dn / dn / 1e9:6.1f} TFLOP/s ({flops_dn * (1 + pad) / dn / 1e9:6.1f} computed)", flush=True)
