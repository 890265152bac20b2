"""pytest-benchmark regression tests of the optimized engine's kernels, on the cases of bench/:
the grouped MoE GEMMs (bench/moe_gemm.py; every variant, 16 to 4096 tokens), attention
(bench/attention.py) and the one-token GEMVs of the decode step (bench/gemv.py), in bf16 and fp32.
Each round replays a CUDA graph of 20 launches, so pytest-benchmark's statistics and its
--benchmark-compare apply to the GPU's time. GPU only: skipped cleanly without one.

  pytest tests/bench --benchmark-save=ref                                  # on the reference commit
  pytest tests/bench --benchmark-compare --benchmark-compare-fail=mean:5%

extra_info: ms_per_launch, GBps and TFLOPs as the bench scripts count them, and for the MoE GEMMs
engine_choice (whether the engine picks that variant at that token count). Correctness is checked
by tests/gpu and by each bench script; these time only."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
REPS = 20  # launches per graph replay


def _variant_names():
    from optimized.kernels import MOE_VARIANTS
    return list(MOE_VARIANTS)


@pytest.fixture(scope="module")
def dev(gpu):
    from bench.common import Device
    return Device(gpu.index)


@pytest.fixture(scope="module", params=list(DTYPES))
def K(dev, request):
    from optimized.kernels import Kernels
    return Kernels(dev.gpu, DTYPES[request.param], stream=dev.stream)


@pytest.fixture(scope="module")
def G(dev, K):
    from optimized.gemv import GemvKernels
    return GemvKernels(dev.gpu, K.dtype, stream=dev.stream)


def time_graph(benchmark, dev, launch, nbytes=None, flops=None) -> None:
    """Benchmark rounds of one replay of a graph of REPS launches; extra_info per launch."""
    graph = dev.capture(launch, REPS)

    def replay():
        with torch.cuda.stream(dev.tstream):
            graph.replay()
        dev.tstream.synchronize()

    benchmark(replay)
    ms = benchmark.stats.stats.median / REPS * 1e3
    info = benchmark.extra_info
    info["ms_per_launch"] = ms
    if nbytes:
        info["GBps"] = nbytes / ms / 1e6
    if flops:
        info["TFLOPs"] = flops / ms / 1e9


@pytest.mark.parametrize("variant", _variant_names())
@pytest.mark.parametrize("tokens", [16, 64, 256, 1024, 4096])
def test_bench_moe_grouped_gemms(benchmark, dev, K, tokens, variant):
    from bench.moe_gemm import HIDDEN, Layer
    from optimized.kernels import moe_variant_for
    if variant not in K.moe:
        pytest.skip(f"{variant} is not built for {K.dtype} on {K.arch}")
    layer = Layer(dev, K.dtype, tokens)
    ys = torch.empty(layer.npairs, HIDDEN, dtype=K.dtype, device=dev.torch_device)
    time_graph(benchmark, dev, layer.kernel_launch(K, variant, ys), layer.touched_bytes, layer.flops)
    benchmark.extra_info["engine_choice"] = moe_variant_for(K.dtype, tokens, K.arch) == variant


@pytest.mark.parametrize("variant", ["simt", "mma"])  # Kernels.attn_variant: attention.cu or attention_mma.cu
@pytest.mark.parametrize("B,S", [(64, 16), (16, 128), (8, 512)])
def test_bench_attention(benchmark, dev, K, B, S, variant):
    from bench.attention import HEAD_DIM, Case
    if variant == "mma" and HEAD_DIM not in K.k_attn_mma:
        pytest.skip(f"no tensor-core attention kernel for {K.dtype}")
    case = Case(dev, K.dtype, B, S)
    try:
        time_graph(benchmark, dev, case.kernel_launch(K, variant), case.nbytes, case.flops)
    finally:
        K.attn_variant = "mma"


@pytest.mark.parametrize("case", ["out_proj", "in_proj", "lm_head", "moe_4_experts"])
def test_bench_gemv(benchmark, dev, G, case):
    """The batch-1 decode step's weight streams (GemvKernels, no PDL): GBps against the HBM ceiling."""
    from bench.gemv import CASES, dense_case, moe_case
    N, K_ = CASES[case]
    if case == "moe_4_experts":
        launches, _, _, nbytes, flops = moe_case(dev, G, G.dtype, N, K_)
    else:
        launches, _, _, nbytes, flops = dense_case(dev, G, G.dtype, N, K_, fp32_out=case == "lm_head")
    time_graph(benchmark, dev, launches["gemv"], nbytes, flops)
