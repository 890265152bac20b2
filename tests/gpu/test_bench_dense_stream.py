"""The kernel workshop's split-K dense stream GEMM (bench/dense_stream.cu, bench/dense.py's version
2) against float64 torch on random inputs, outputs poisoned with NaN first: 5-64 rows, the model's
shapes (one to eight K slices) and odd ones (N not a multiple of the 128-column slab, K not a
multiple of the 128-element stage), strided rows as the LM head's last positions, bf16 and fp32
output; the same bits on every run and from a replayed graph (the last block to arrive resets its
slab's count, common.cuh's arrived_last). bench's --quick run only checks two shapes."""
from __future__ import annotations

import pytest
import torch

from test_optimized_kernels import close, poisoned, rand, run  # tests/gpu is on sys.path (no __init__.py)

pytestmark = pytest.mark.gpu

# (N, K): out_proj (8 slices on an H100), in_proj (2), qkv (4), the dense FFN's w2 (K = 7168, 7 k-tiles
# per slice), an odd N and K (a partial slab and a partial stage), a tiny one (one slice)
SHAPES = [(2048, 2048), (6144, 2048), (3072, 2048), (2048, 7168), (1000, 1800), (72, 40)]


@pytest.fixture(scope="module")
def DS(gpu):
    from bench.dense import DenseStream
    ds = DenseStream(gpu, stream=None)
    ds.reserve(SHAPES + [(300, 64)])
    return ds


@pytest.mark.parametrize("M", [5, 16, 17, 40, 64])
@pytest.mark.parametrize("N,K", SHAPES)
def test_dense_stream(DS, M, N, K):
    x, w = rand(M, K, dtype=torch.bfloat16), rand(N, K, dtype=torch.bfloat16, scale=K ** -0.5)
    y = poisoned(M, N, dtype=torch.bfloat16)
    run(lambda: DS.mm(x, w, y))
    close(y, x.double() @ w.double().T, torch.bfloat16, f"dense_stream {M}x{N}x{K} ({DS.split(N, K)[1]} slices)")
    assert not DS.counts.any(), "a slab's arrival count was not put back to 0"


@pytest.mark.parametrize("N,K", [(2048, 2048), (1000, 1800)])
def test_dense_stream_fp32_out_strided_rows(DS, N, K):
    """The LM head: the last position of each of 9 sequences of 3 tokens, fp32 logits (no bf16 rounding)."""
    h = rand(9, 3, K, dtype=torch.bfloat16)
    rows = h[:, 2, :]
    w = rand(N, K, dtype=torch.bfloat16, scale=K ** -0.5)
    y = poisoned(9, N, dtype=torch.float32)
    assert DS.takes(rows, w, y) and not rows.is_contiguous()
    run(lambda: DS.mm(rows, w, y))
    want = rows.double() @ w.double().T
    assert (y.double() - want).abs().max().item() < 1e-5 * want.abs().max().item()


def test_dense_stream_same_bits_every_run_and_from_a_graph(gpu, DS):
    """The partials are added in split order, so a run, a second run and a graph replay (on new x,
    through the counts the last blocks reset) give the same bits."""
    N, K, M = 2048, 2048, 64
    assert DS.split(N, K)[1] > 1
    x, w = rand(M, K, dtype=torch.bfloat16), rand(N, K, dtype=torch.bfloat16, scale=K ** -0.5)
    y1, y2 = poisoned(M, N, dtype=torch.bfloat16), poisoned(M, N, dtype=torch.bfloat16)
    run(lambda: DS.mm(x, w, y1))
    run(lambda: DS.mm(x, w, y2))
    assert torch.equal(y1, y2)
    xg, yg = x.clone(), poisoned(M, N, dtype=torch.bfloat16)
    from optimized.plan import capturing
    ps = gpu.cuda.Stream()  # the engine's arrangement: a PyCUDA stream, wrapped for torch's capture
    graph, saved = torch.cuda.CUDAGraph(), DS.stream
    DS.stream = ps
    try:
        with capturing(graph, torch.cuda.ExternalStream(ps.handle)):
            DS.mm(xg, w, yg)
    finally:
        DS.stream = saved
    for seed in (1, 2):
        xg.copy_(rand(M, K, dtype=torch.bfloat16, seed=seed))
        yg.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want = poisoned(M, N, dtype=torch.bfloat16)
        run(lambda: DS.mm(xg, w, want))
        assert torch.equal(yg, want), f"replay {seed}"


def test_dense_stream_refuses_what_it_cannot_take(gpu, DS):
    w = rand(64, 64, dtype=torch.bfloat16)
    for x, why in ((rand(65, 64, dtype=torch.bfloat16), "65 rows"), (rand(8, 64, dtype=torch.float32), "fp32"),
                   (rand(8, 130, dtype=torch.bfloat16)[:, 1:65], "unaligned rows")):
        y = poisoned(x.shape[0], 64, dtype=torch.bfloat16)
        assert not DS.takes(x, w, y), why
        with pytest.raises(ValueError, match="dense_stream takes"):
            DS.mm(x, w, y)
    from bench.dense import DenseStream
    small = DenseStream(gpu, stream=None)
    small.reserve([(72, 40)])  # one slice: no workspace
    x, w = rand(16, 2048, dtype=torch.bfloat16), rand(2048, 2048, dtype=torch.bfloat16)
    y = poisoned(16, 2048, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="call reserve"):
        small.mm(x, w, y)  # out_proj splits K, and no workspace was reserved for it
