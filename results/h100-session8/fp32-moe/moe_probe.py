"""Run the fp32 grouped MoE GEMMs (gate/up + down) of the named variants at one token count, as
tests/bench/test_bench_optimized.py sets them up (E=32, k=4, H=2048, I=1792, random routing),
for ncu: `python moe_probe.py 1024 mma128 mma128f` (3 launches of each pair)."""
import sys

import torch

from harness.gpu import get_context
from optimized.kernels import Kernels, max_gemm_tiles

tokens, names = int(sys.argv[1]), sys.argv[2:]
K = Kernels(get_context(), torch.float32, stream=None)
E, k, H, Im = 32, 4, 2048, 1792
g = torch.Generator(device="cuda").manual_seed(0)
rnd = lambda *s, scale=1.0: torch.randn(s, device="cuda", generator=g) * scale
w13, w2, h = rnd(E, 2 * Im, H, scale=0.02), rnd(E, H, Im, scale=0.02), rnd(tokens, H)
logits, bias = rnd(tokens, E), rnd(E, scale=0.05)
npairs = tokens * k
idx = torch.empty(tokens, k, dtype=torch.int32, device="cuda")
wts = torch.empty(tokens, k, device="cuda")
K.route(logits, bias, k, True, 1.0, idx, wts)
for name in names:
    rows = K.moe_variant(name).tile_rows
    sp = torch.empty(npairs, dtype=torch.int32, device="cuda")
    offs = torch.empty(E + 1, dtype=torch.int32, device="cuda")
    tiles = torch.empty(3 * max_gemm_tiles(npairs, E, torch.float32, rows), dtype=torch.int32, device="cuda")
    nt = torch.empty(1, dtype=torch.int32, device="cuda")
    act = torch.empty(npairs, Im, device="cuda")
    ys = torch.empty(npairs, H, device="cuda")
    K.moe_sort(idx, E, sp, offs, tiles, nt, variant=name)
    for _ in range(int(__import__('os').environ.get('PROBE_REPS', 3))):
        K.moe_gateup(h, w13, act, sp, tiles, nt, npairs, k, variant=name)
        K.moe_down(act, w2, ys, sp, tiles, nt, wts, npairs, variant=name)
    torch.cuda.synchronize()
    print(name, "tiles", nt.item(), "ys finite", bool(torch.isfinite(ys).all()))
    if "--check" in sys.argv[0:1] or __import__("os").environ.get("PROBE_CHECK"):
        # float64 reference per expert: act rows in sorted order, ys rows by pair
        pairs = sp.long()
        tok, ex = pairs // k, idx.view(-1).long()[pairs]
        ga = torch.empty(npairs, Im, dtype=torch.float64, device="cuda")
        yw = torch.empty(npairs, H, dtype=torch.float64, device="cuda")
        for e in range(E):
            r = (ex == e).nonzero().view(-1)
            if r.numel() == 0:
                continue
            x = h[tok[r]].double()
            gt, up = (x @ w13[e, :Im].double().T), (x @ w13[e, Im:].double().T)
            ga[r] = torch.nn.functional.silu(gt) * up
            yw[pairs[r]] = (act[r].double() @ w2[e].double().T) * wts.view(-1).double()[pairs[r], None]
        ea = ((act.double() - ga).abs().max() / ga.abs().max()).item()
        ey = ((ys.double() - yw).abs().max() / yw.abs().max()).item()
        print(f"{name}: max error / scale: gate/up {ea:.3g}, down {ey:.3g} (test bound 2e-5)")
