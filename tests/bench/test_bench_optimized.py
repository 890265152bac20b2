"""pytest-benchmark microbenchmarks of the optimized engine's grouped MoE GEMMs and attention at
the real model's shapes (bf16 and fp32). GPU only: skipped cleanly without one.

  pytest tests/bench -m gpu --benchmark-only

Each round launches the kernel(s) and synchronizes; extra_info carries the achieved TFLOP/s."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.fixture(scope="module", params=list(DTYPES))
def K(gpu, request):
    from optimized.kernels import Kernels
    return Kernels(gpu, DTYPES[request.param], stream=None)


def _rand(*shape, dtype, scale=1.0):
    return (torch.randn(shape, device="cuda") * scale).to(dtype)


@pytest.mark.parametrize("tokens", [16, 1024, 4096])
def test_bench_moe_grouped_gemms(benchmark, K, tokens):
    from optimized.kernels import max_gemm_tiles
    E, k, H, Im = 32, 4, 2048, 1792
    npairs = tokens * k
    h = _rand(tokens, H, dtype=K.dtype)
    logits = _rand(tokens, E, dtype=K.dtype)
    bias = _rand(E, dtype=torch.float32, scale=0.05)
    w13 = _rand(E, 2 * Im, H, dtype=K.dtype, scale=0.02)
    w2 = _rand(E, H, Im, dtype=K.dtype, scale=0.02)
    idx = torch.empty(tokens, k, dtype=torch.int32, device="cuda")
    wts = torch.empty(tokens, k, dtype=torch.float32, device="cuda")
    sp = torch.empty(npairs, dtype=torch.int32, device="cuda")
    offs = torch.empty(E + 1, dtype=torch.int32, device="cuda")
    tiles = torch.empty(3 * max_gemm_tiles(npairs, E, K.dtype), dtype=torch.int32, device="cuda")
    nt = torch.empty(1, dtype=torch.int32, device="cuda")
    act = torch.empty(npairs, Im, dtype=K.dtype, device="cuda")
    ys = torch.empty(npairs, H, dtype=K.dtype, device="cuda")
    K.route(logits, bias, k, True, 1.0, idx, wts)
    K.moe_sort(idx, E, sp, offs, tiles, nt)

    def both():
        K.moe_gateup(h, w13, act, sp, tiles, nt, npairs, k)
        K.moe_down(act, w2, ys, sp, tiles, nt, wts, npairs)
        torch.cuda.synchronize()

    both()
    benchmark(both)
    flops = 2 * npairs * 3 * H * Im
    benchmark.extra_info["tflops"] = flops / benchmark.stats.stats.median / 1e12
    touched = int((torch.bincount(idx.view(-1).long(), minlength=E) > 0).sum())
    benchmark.extra_info["weight_GBps"] = touched * 3 * H * Im * w2.element_size() / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("B,S", [(64, 16), (8, 512)])
def test_bench_attention(benchmark, K, B, S):
    nh, nkv, hd = 32, 8, 64
    q, kk, v = _rand(B, nh, S, hd, dtype=K.dtype), _rand(B, nkv, S, hd, dtype=K.dtype), _rand(B, nkv, S, hd, dtype=K.dtype)
    o = torch.empty(B * S, nh * hd, dtype=K.dtype, device="cuda")

    def go():
        K.attention(q, kk, v, o, B, S, nh, nkv, hd)
        torch.cuda.synchronize()

    go()
    benchmark(go)
    flops = B * 4 * nh * hd * S * (S + 1) / 2
    benchmark.extra_info["tflops"] = flops / benchmark.stats.stats.median / 1e12
