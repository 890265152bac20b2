"""CPU tests of the optimized engine's host logic: the grouped GEMM's tile bound (the grid is sized
from it with no host sync, so it must cover every routing), the bench tool's shape parser, and
the dtype option's refusal message, the logits download's row chunks and the profiles' launches
without PDL."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from optimized.__main__ import parse_shapes
from optimized.kernels import GEMM_TILE_ROWS, max_gemm_tiles

OPTIMIZED = Path(__file__).resolve().parents[1] / "optimized"


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


def source_defines(name: str) -> dict[str, int]:
    """The integer #defines of optimized/<name>."""
    src = (OPTIMIZED / name).read_text()
    return {m[0]: int(m[1]) for m in re.findall(r"#define (\w+) (\d+)", src)}


def test_gemv_and_router_constants_match_the_kernel_sources():
    """gemv.py and router.py size grids from these; the #defines of gemv.cuh and router.cu must
    say the same."""
    from optimized import gemv, router
    defines = source_defines("gemv.cuh") | source_defines("router.cu")
    assert defines["GV_MAXB"] == gemv.GEMV_MAX_TOKENS
    assert defines["GV_WARPS"] == gemv.GEMV_WARPS
    assert defines["RT_THREADS"] == router.ROUTER_THREADS
    assert defines["NR_MAX_H"] == router.NORM_ROUTE_MAX_H
    assert defines["NRS_MAXT"] == router.NORM_ROUTE_SPLIT_MAX_TOKENS
    assert defines["FR_PARTS"] == router.FOLDED_ROUTER_PARTS
    assert gemv.MOE_GEMV_MAX_PAIRS <= 65535 and router.ROUTER_MAX_TOKENS >= gemv.GEMV_MAX_TOKENS


def test_grid_constants_match_the_kernel_sources():
    """kernels.py sizes the grids of shortconv_tiled and the two attention kernels from these; the
    .cu files' #defines must say the same."""
    from optimized import kernels
    ew = source_defines("elementwise.cu")
    assert (ew["SC_TOKENS"], ew["SC_L"]) == (kernels.CONV_TILED_TOKENS, kernels.CONV_TILED_TAPS)
    assert source_defines("attention.cu")["QT"] == kernels.ATTN_QT
    assert source_defines("attention_mma.cu")["AM_QT"] == kernels.ATTN_MMA_QT


def test_cli_refuses_a_moe_variant_not_built_for_the_dtype():
    """`python -m optimized` checks --moe-variants before loading a model (a bf16-only variant at
    fp32 once ended the run with a segmentation fault after the other variants' timings)."""
    from optimized.__main__ import main
    with pytest.raises(SystemExit, match="'wmma128' is not built for fp32"):
        main(["--dtype", "fp32", "--moe-variants", "auto,wmma128"])
    with pytest.raises(SystemExit, match="'nope' is not built for bf16"):
        main(["--moe-variants", "nope"])


def test_row_chunks_cover_every_row_once_in_order():
    from optimized.logits_download import row_chunks
    V4 = 65536 * 4  # one fp32 logits row of the real vocabulary
    assert row_chunks(64, V4, 2 << 20) == [(r, r + 8) for r in range(0, 64, 8)]
    assert row_chunks(1, V4, 2 << 20) == [(0, 1)]
    assert row_chunks(5, 3 << 20, 2 << 20) == [(r, r + 1) for r in range(5)]  # a row above a chunk: one per DMA
    assert row_chunks(10, 100, 350) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert row_chunks(0, 100) == []
    with pytest.raises(ValueError):
        row_chunks(3, 0)


def test_logits_download_refuses_a_pageable_buffer():
    from optimized.logits_download import LogitsDownload
    with pytest.raises(ValueError, match="pinned"):
        LogitsDownload(torch.empty(2, 8))


def test_moe_policy_falls_back_off_the_h100():
    """The wgmma variants exist for sm_90 only; elsewhere the policy must name a variant every GPU has,
    and every policy entry must end with one."""
    from optimized.kernels import MOE_POLICY, MOE_VARIANTS, moe_variant_for
    assert moe_variant_for(torch.bfloat16, 4096, "sm_90") == "wg256"
    assert moe_variant_for(torch.bfloat16, 4096, "sm_80") == "mma256wl"
    assert moe_variant_for(torch.bfloat16, 1024, "sm_89") == "mma128xl"
    for dtype, entries in MOE_POLICY.items():
        for _, names in entries:
            assert MOE_VARIANTS[names[-1]].arch is None and all(dtype in MOE_VARIANTS[n].dtypes for n in names)


def test_wgmma_variant_table_matches_the_kernel_source():
    """kernels.py's wg rows (BN, STAGES, shared memory) against moe_wgmma.cu's WGMMA_VARIANT lines and the
    smem the kernel checks for (STAGES * (128 + BN) * 128 + 1024)."""
    import re
    from pathlib import Path

    from optimized import kernels
    src = (Path(kernels.__file__).parent / "moe_wgmma.cu").read_text()
    built = {m[0]: tuple(map(int, m[1:])) for m in re.findall(r"WGMMA_VARIANT\((\w+)_bf16, (\d+), (\d+), \d+\)", src)}
    table = {n: v for n, v in kernels.MOE_VARIANTS.items() if v.module == "moe_wgmma"}
    assert set(built) == set(table) and built
    for name, (bn, stages) in built.items():
        v = table[name]
        assert (v.down_cols, v.gateup_cols, v.tile_rows, v.threads) == (bn, bn // 2, 128, 256)
        assert v.smem == stages * (128 + bn) * 128 + 1024 <= 227 * 1024


def test_check_sort_buffers_refuses_what_the_sort_would_write_past(monkeypatch):
    """Kernels.moe_sort and norm_route_sort share these checks: each output must hold what the sort writes."""
    import optimized.kernels as kernels
    monkeypatch.setattr(kernels, "_dev", lambda t, dtype, name: None)  # CPU tensors stand in for the device ones
    npairs, E, rows = 40, 8, 16
    tiles_len = 3 * max_gemm_tiles(npairs, E, torch.bfloat16, rows)

    def check(sp=npairs, offs=E + 1, tiles=tiles_len, tile_rows=rows):
        z = lambda n: torch.zeros(n, dtype=torch.int32)  # noqa: E731
        kernels.check_sort_buffers(z(sp), z(offs), z(tiles), z(1), npairs, E, torch.bfloat16, tile_rows)
    check()
    for bad, message in (({"sp": npairs - 1}, "sorted_pair must hold 40 pairs"),
                         ({"offs": E}, "expert_offsets 9 entries"), ({"tiles": tiles_len - 1}, "tile table too small"),
                         ({"tile_rows": 0}, "tile rows must be >= 1")):
        with pytest.raises(ValueError, match=message):
            check(**bad)


@pytest.mark.parametrize("decode_compiled", [True, False])
def test_profiles_launch_without_pdl_and_restore_each_choice(monkeypatch, decode_compiled):
    """Under PDL the profiler counts a kernel's wait for the one before it as its time, so
    profile_launches turns each launcher's PDL off for the profiled work, then restores the
    engine's choice, also when the profile fails (DK is None before the first prefill)."""
    from types import SimpleNamespace

    from harness.measure import op_profile
    from optimized.engine import OptimizedEngine

    eng = object.__new__(OptimizedEngine)  # the host logic only: no GPU, no weights
    eng.K, eng.G, eng.R = (SimpleNamespace(pdl=True) for _ in range(3))
    eng.DK = SimpleNamespace(pdl=True) if decode_compiled else None
    launchers = [k for k in (eng.K, eng.G, eng.R, eng.DK) if k is not None]
    eng.R.pdl = False  # each keeps its own choice
    seen = []

    def fake_profile(work, on_gpu, synchronize):
        seen.append([k.pdl for k in launchers])
        return [{"name": "k", "calls": 1, "us": 1.0}]
    monkeypatch.setattr(op_profile, "profile_ops", fake_profile)
    assert eng.profile_launches(lambda: None) == [{"name": "k", "calls": 1, "us": 1.0}]
    assert seen == [[False] * len(launchers)]
    assert [k.pdl for k in launchers] == [True, True, False] + [True] * decode_compiled

    def failing_profile(work, on_gpu, synchronize):
        raise RuntimeError("CUPTI unavailable")
    monkeypatch.setattr(op_profile, "profile_ops", failing_profile)
    with pytest.raises(RuntimeError, match="CUPTI"):
        eng.profile_launches(lambda: None)
    assert [k.pdl for k in launchers] == [True, True, False] + [True] * decode_compiled
