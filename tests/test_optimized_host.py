"""CPU tests of the optimized engine's host logic: the grouped GEMM's tile bound (the grid is sized
from it with no host sync, so it must cover every routing), the bench tool's shape parser, and
the dtype option's refusal message."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from optimized.__main__ import parse_shapes
from optimized.kernels import GEMM_TILE_ROWS, max_gemm_tiles


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tile_bound_covers_every_routing(dtype):
    rng = np.random.default_rng(0)
    BM = GEMM_TILE_ROWS[dtype]
    for _ in range(500):
        E = int(rng.integers(1, 65))
        npairs = int(rng.integers(1, 5000))
        counts = np.bincount(rng.integers(0, E, npairs) if rng.random() < 0.5 else np.zeros(npairs, int), minlength=E)
        need = int(sum(-(-c // BM) for c in counts))
        assert need <= max_gemm_tiles(npairs, E, dtype)


def test_parse_shapes():
    assert parse_shapes("1x16,64x16,8X512") == [(1, 16), (64, 16), (8, 512)]
    with pytest.raises(SystemExit, match="BxS"):
        parse_shapes("64by16")


def test_unknown_dtype_is_refused_before_any_gpu_work(tiny_ckpt):
    from optimized.engine import OptimizedEngine
    with pytest.raises(ValueError, match="bf16 or fp32"):
        OptimizedEngine(tiny_ckpt, device=0, dtype="fp16")
