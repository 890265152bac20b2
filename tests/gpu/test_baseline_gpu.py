"""The baseline on a real GPU (tiny preset): kernels against numpy, logits against the float64
reference, and the counters' exact accounting of its data movement. Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from baseline.engine import BaselineEngine
from harness.engines.base import Counters
from harness.gpu import GPUUnavailable, KernelError, Transfers, launch
from harness.engines.reference import reference_logits

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine(gpu, tiny_ckpt):
    eng = BaselineEngine(tiny_ckpt, device=gpu.index, progress=False, max_batch=3)
    yield eng
    eng.close()


def rel_err(got, want) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def poisoned(engine, shape):
    """A device buffer of `shape` float32 filled with NaN, so unwritten elements show."""
    t = engine.transfers
    return t.to_device(np.full(shape, np.nan, np.float32), what="poisoned output")


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 7, 5), (3, 33, 31), (17, 65, 129), (33, 100, 64), (64, 96, 2048)])
def test_matmul_kernel_odd_shapes(engine, rng, M, N, K):
    a = rng.normal(size=(M, K)).astype(np.float32)
    b = rng.normal(size=(N, K)).astype(np.float32)
    t = engine.transfers
    d_a, d_b, d_c = t.to_device(a), t.to_device(b), poisoned(engine, (M, N))
    engine.gemm(d_a, d_b, d_c, M, N, K)
    c = t.from_device(d_c, (M, N))
    for d in (d_a, d_b, d_c):
        t.free(d)
    assert np.isfinite(c).all(), "some outputs were never written"
    assert rel_err(c, a.astype(np.float64) @ b.T.astype(np.float64)) < 1e-5


@pytest.mark.parametrize("n", [1, 255, 257, 10_000])
def test_elementwise_kernels(engine, rng, n):
    x = (3 * rng.normal(size=n)).astype(np.float32)
    y = rng.normal(size=n).astype(np.float32)
    t = engine.transfers
    d_x, d_y, d_s, d_m = t.to_device(x), t.to_device(y), poisoned(engine, n), poisoned(engine, n)
    engine.elementwise(engine.k_silu, (d_x, d_s), n)
    engine.elementwise(engine.k_mul, (d_x, d_y, d_m), n)
    s, m = t.from_device(d_s, n), t.from_device(d_m, n)
    for d in (d_x, d_y, d_s, d_m):
        t.free(d)
    x64 = x.astype(np.float64)
    assert rel_err(s, x64 / (1 + np.exp(-x64))) < 1e-6
    np.testing.assert_array_equal(m, x * y)


@pytest.mark.parametrize("S", [1, 2, 17])
def test_logits_match_reference(engine, tiny_ckpt, rng, S):
    tokens = rng.integers(0, tiny_ckpt.config.vocab_size, size=(3, S), dtype=np.int32)
    got = engine.forward(tokens)
    want = reference_logits(tiny_ckpt, tokens, dtype=torch.float64)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got.astype(np.float64) - want).max() < 1e-4
    assert rel_err(got, want) < 1e-5
    assert (got.argmax(-1) == want.argmax(-1)).all()


def expected_weight_bytes(cfg, S: int) -> tuple[int, int]:
    """(expert bytes, all weight bytes) the baseline uploads for one sample of S tokens."""
    H, F = cfg.hidden_size, 4
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    pairs = S * cfg.num_experts_per_tok * len(cfg.moe_layers)
    expert = pairs * 3 * cfg.moe_intermediate_size * H * F
    total = expert + cfg.vocab_size * H * F  # LM head
    for i in range(cfg.num_layers):
        total += ((2 * nh + 2 * nkv) * hd * H if cfg.is_attention(i) else 4 * H * H) * F
        total += cfg.num_experts * H * F if cfg.is_moe(i) else 3 * cfg.intermediate_size * H * F
    return expert, total


@pytest.mark.parametrize("S", [1, 5])
def test_counters_one_sample(engine, tiny_ckpt, rng, S):
    cfg = tiny_ckpt.config
    tokens = rng.integers(0, cfg.vocab_size, size=(1, S), dtype=np.int32)
    engine.counters.reset()
    engine.forward(tokens)
    c = engine.counters
    expert, total = expected_weight_bytes(cfg, S)
    assert c.extra["expert_h2d_bytes"] == expert
    assert c.weight_h2d_bytes == total
    # every matmul: x, w, y; every MLP: input, w1, w3, w2, output + 4 intermediates
    pairs = S * cfg.num_experts_per_tok * len(cfg.moe_layers)
    n_matmul = sum(4 if cfg.is_attention(i) else 2 for i in range(cfg.num_layers)) + len(cfg.moe_layers) + 1
    n_mlp = pairs + cfg.num_dense_layers
    assert c.device_allocs == 3 * n_matmul + 9 * n_mlp
    assert engine.transfers.live_bytes == 0, "the baseline frees everything it allocates"
    assert c.h2d_pinned_bytes == 0 and c.d2h_pinned_bytes == 0  # pageable, as the original
    assert c.d2h_bytes > 0 and c.h2d_bytes > c.weight_h2d_bytes


def test_transfers_count_pinned_and_pageable(gpu, rng):
    counters = Counters()
    t = Transfers(counters, gpu)
    host = rng.normal(size=1000).astype(np.float32)
    pinned = t.pinned_empty(1000)
    pinned[:] = host
    d = t.alloc(host.nbytes)
    t.htod(d, host, weight=True, tag="w")
    t.htod(d, pinned)
    back = t.from_device(d, 1000)
    t.free(d)
    np.testing.assert_array_equal(back, host)
    assert counters.h2d_bytes == 8000 and counters.h2d_pinned_bytes == 4000
    assert counters.weight_h2d_bytes == 4000 and counters.extra["w_h2d_bytes"] == 4000
    assert counters.d2h_bytes == 4000 and counters.d2h_pinned_bytes == 0
    assert counters.device_allocs == 1 and counters.device_alloc_bytes == 4000 and t.live_bytes == 0
    with pytest.raises(ValueError, match="do not fit"):
        d = t.alloc(16)
        try:
            t.htod(d, host)
        finally:
            t.free(d)


def test_out_of_memory_says_how_much(gpu):
    t = Transfers(Counters(), gpu)
    with pytest.raises(GPUUnavailable, match="wanted 1,125,899,906,842,624 bytes"):
        t.alloc(1 << 50)


def test_launch_errors_name_the_kernel(engine):
    with pytest.raises(KernelError, match="matmul.*grid"):
        launch(engine.k_matmul, (1, 70_000), (32, 32), (np.int32(0),) * 6, shapes={"x": (1, 1)})
    with pytest.raises(KernelError, match="silu.*Python int"):
        launch(engine.k_silu, (1,), (256,), (0, 0, 5))


def test_torch_and_pycuda_share_one_context(engine, rng):
    """A torch CUDA tensor is a valid pointer for our kernels: one (primary) context."""
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA")
    dev = torch.device(engine.gpu.torch_device)
    a = torch.from_numpy(rng.normal(size=300).astype(np.float32)).to(dev)
    b = torch.from_numpy(rng.normal(size=300).astype(np.float32)).to(dev)
    out = torch.full((300,), float("nan"), device=dev)
    torch.cuda.synchronize(dev)
    engine.elementwise(engine.k_mul, (a, b, out), 300)
    torch.testing.assert_close(out, a * b, rtol=0, atol=0)
