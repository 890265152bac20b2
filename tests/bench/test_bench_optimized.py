"""pytest-benchmark microbenchmarks of the optimized engine's grouped MoE GEMMs (every variant,
small to large batches), attention, and the small-batch GEMVs of the batch-1 decode step, at
the real model's shapes (bf16 and fp32). GPU only:
skipped cleanly without one.

  pytest tests/bench -m gpu --benchmark-only

Each round launches the kernel(s) and synchronizes; extra_info carries the achieved TFLOP/s and,
for the MoE GEMMs, the rate at which the touched experts' weights were read (weight_GBps: each
touched expert's w1|w3 and w2 once, the least any kernel must read) and whether the engine picks
that variant for that token count (engine_choice)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _variant_names():
    from optimized.kernels import MOE_VARIANTS
    return list(MOE_VARIANTS)


@pytest.fixture(scope="module", params=list(DTYPES))
def K(gpu, request):
    from optimized.kernels import Kernels
    return Kernels(gpu, DTYPES[request.param], stream=None)


@pytest.fixture(scope="module")
def moe_weights(K):
    E, H, Im = 32, 2048, 1792
    return _rand(E, 2 * Im, H, dtype=K.dtype, scale=0.02), _rand(E, H, Im, dtype=K.dtype, scale=0.02)


def _rand(*shape, dtype, scale=1.0):
    return (torch.randn(shape, device="cuda") * scale).to(dtype)


@pytest.mark.parametrize("variant", _variant_names())
@pytest.mark.parametrize("tokens", [16, 64, 256, 1024, 4096])
def test_bench_moe_grouped_gemms(benchmark, K, moe_weights, tokens, variant):
    from optimized.kernels import max_gemm_tiles, moe_variant_for
    if variant not in K.moe:
        pytest.skip(f"{variant} is not built for {K.dtype}")
    E, k, H, Im = 32, 4, 2048, 1792
    w13, w2 = moe_weights
    npairs = tokens * k
    h = _rand(tokens, H, dtype=K.dtype)
    logits = _rand(tokens, E, dtype=K.dtype)
    bias = _rand(E, dtype=torch.float32, scale=0.05)
    idx = torch.empty(tokens, k, dtype=torch.int32, device="cuda")
    wts = torch.empty(tokens, k, dtype=torch.float32, device="cuda")
    sp = torch.empty(npairs, dtype=torch.int32, device="cuda")
    offs = torch.empty(E + 1, dtype=torch.int32, device="cuda")
    rows = K.moe_variant(variant).tile_rows
    tiles = torch.empty(3 * max_gemm_tiles(npairs, E, K.dtype, rows), dtype=torch.int32, device="cuda")
    nt = torch.empty(1, dtype=torch.int32, device="cuda")
    act = torch.empty(npairs, Im, dtype=K.dtype, device="cuda")
    ys = torch.empty(npairs, H, dtype=K.dtype, device="cuda")
    K.route(logits, bias, k, True, 1.0, idx, wts)
    K.moe_sort(idx, E, sp, offs, tiles, nt, variant=variant)

    def both():
        K.moe_gateup(h, w13, act, sp, tiles, nt, npairs, k, variant=variant)
        K.moe_down(act, w2, ys, sp, tiles, nt, wts, npairs, variant=variant)
        torch.cuda.synchronize()

    both()
    benchmark(both)
    med = benchmark.stats.stats.median
    flops = 2 * npairs * 3 * H * Im
    touched = int((torch.bincount(idx.view(-1).long(), minlength=E) > 0).sum())
    weight_bytes = touched * 3 * H * Im * w2.element_size()
    info = benchmark.extra_info
    info["tflops"], info["weight_GBps"] = flops / med / 1e12, weight_bytes / med / 1e9
    # the kernels alone: back-to-back launches between CUDA events (no per-round launch + sync gap)
    ms = _event_ms(lambda: (K.moe_gateup(h, w13, act, sp, tiles, nt, npairs, k, variant=variant),
                            K.moe_down(act, w2, ys, sp, tiles, nt, wts, npairs, variant=variant)))
    info["event_ms"], info["event_tflops"], info["event_weight_GBps"] = ms, flops / ms / 1e9, weight_bytes / ms / 1e6
    info["engine_choice"] = moe_variant_for(K.dtype, tokens, K.arch) == variant


def _event_ms(fn, reps: int = 20) -> float:
    """Median over 5 trials of (time of `reps` back-to-back calls between CUDA events) / reps."""
    fn()
    trials = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        trials.append(start.elapsed_time(end) / reps)
    return sorted(trials)[len(trials) // 2]


@pytest.mark.parametrize("variant", ["simt", "mma"])  # Kernels.attn_variant: attention.cu or attention_mma.cu
@pytest.mark.parametrize("B,S", [(64, 16), (16, 128), (8, 512)])
def test_bench_attention(benchmark, K, B, S, variant):
    if variant == "mma" and 64 not in K.k_attn_mma:
        pytest.skip(f"no tensor-core attention kernel for {K.dtype}")
    K.attn_variant = variant
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
    ms = _event_ms(lambda: K.attention(q, kk, v, o, B, S, nh, nkv, hd))
    benchmark.extra_info["event_ms"], benchmark.extra_info["event_tflops"] = ms, flops / ms / 1e9
    K.attn_variant = "mma"


@pytest.fixture(scope="module")
def G(gpu, K):
    """GEMV launchers on their own stream, so that a CUDA graph can hold 20 launches: timed one by
    one from Python, a 5-20 us kernel is bound by the launcher's host time, not the GPU."""
    from optimized.gemv import GemvKernels
    stream = gpu.cuda.Stream()
    kernels = GemvKernels(gpu, K.dtype, stream=stream)
    kernels.tstream = torch.cuda.ExternalStream(stream.handle)
    return kernels


# the batch-1 decode step's weight streams: out_proj, in_proj, the LM head (fp32 logits), and one
# MoE layer's four experts (gate/up then down)
@pytest.mark.parametrize("what,N,K_", [("out_proj", 2048, 2048), ("in_proj", 6144, 2048), ("lm_head", 65536, 2048),
                                       ("moe_4_experts", 1792, 2048)])
def test_bench_gemv(benchmark, G, what, N, K_):
    """Weight bytes per second of the small-batch GEMVs at one token: a CUDA graph of 20
    back-to-back launches (no PDL), replayed; extra_info graph_GBps and us_per_launch."""
    x = _rand(1, K_, dtype=G.dtype)
    if what == "moe_4_experts":
        E, k = 32, 4
        w13, w2 = _rand(E, 2 * N, K_, dtype=G.dtype, scale=0.02), _rand(E, K_, N, dtype=G.dtype, scale=0.02)
        idx = torch.tensor([[3, 11, 17, 29]], dtype=torch.int32, device="cuda")
        wts = torch.full((1, k), 0.25, device="cuda")
        act, ys = torch.empty(k, N, dtype=G.dtype, device="cuda"), torch.empty(k, K_, dtype=G.dtype, device="cuda")
        nbytes = k * 3 * N * K_ * w2.element_size()

        def launch():
            G.moe_gateup(x, w13, act, idx, k)
            G.moe_down(act, w2, ys, idx, wts)
    else:
        w = _rand(N, K_, dtype=G.dtype, scale=0.02)
        y = torch.empty(1, N, dtype=torch.float32 if what == "lm_head" else G.dtype, device="cuda")
        nbytes = N * K_ * w.element_size()

        def launch():
            G.gemv(x, w, y)

    reps = 20
    torch.cuda.synchronize()
    with torch.cuda.stream(G.tstream):
        launch()  # warm-up outside the capture
    G.tstream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=G.tstream):
        for _ in range(reps):
            launch()

    def go():
        with torch.cuda.stream(G.tstream):
            graph.replay()
        G.tstream.synchronize()

    go()
    benchmark(go)
    per_launch = benchmark.stats.stats.median / reps
    benchmark.extra_info["us_per_launch"] = per_launch * 1e6
    benchmark.extra_info["graph_GBps"] = nbytes / per_launch / 1e9
