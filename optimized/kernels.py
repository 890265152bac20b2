"""Launchers for the optimized engine's PyCUDA kernels, on torch CUDA tensors.

Each method checks what it is given (dtype, shape, contiguity) and launches one kernel on
`stream` (a pycuda Stream; the engine wraps the same handle for torch, so PyCUDA launches and
torch ops are ordered on one stream and are captured into one CUDA graph together).
Kernel sources: elementwise.cu, attention.cu, attention_mma.cu, moe_gemm.cu, moe_stream.cu and
moe_wgmma.cu (sm_90a, built on the H100 only) beside this file.
With `pdl` set (the engine does on sm_90), the kernels in `pdl_kernels` (they start with
pdl_wait, common.cuh) are launched with programmatic dependent launch (harness.gpu.pdl).

The grouped MoE GEMMs come in variants (MOE_VARIANTS) that differ in the rows of one tile: the
tile table (moe_sort), the gate/up and the down launch of one layer must use the same variant.
moe_variant_for(dtype, tokens) is the engine's choice by the forward's token count (an expert
never gets more rows than there are tokens, so small batches get small tiles).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.gpu import launch, load_module
from harness.gpu.pdl import DEFAULT_DYNAMIC_SMEM

HERE = Path(__file__).parent
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
GEMM_TILE_ROWS = {torch.bfloat16: 128, torch.float32: 64}  # the large-batch variants' rows (BM / SBM in moe_gemm.cu)
BF16_GEMM_SMEM = 3 * (128 + 128) * (32 + 8) * 2  # = BF16_SMEM_BYTES in moe_gemm.cu


@dataclass(frozen=True)
class MoeVariant:
    """One grouped-GEMM kernel pair: moe_gateup_<stem> / moe_down_<stem> in `module`."""
    name: str
    module: str               # source file stem
    stem: str                 # kernel name stem; "{sfx}" is replaced by f32 / bf16
    dtypes: tuple             # storage dtypes it is built for
    tile_rows: int            # rows of one tile (the BM moe_sort must build the table with)
    threads: int
    smem: int                 # dynamic shared memory per block
    gateup_cols: int          # act columns per block
    down_cols: int            # output columns per block
    arch: str | None = None   # built only for this GPU arch, compiled for its "a" target (wgmma: sm_90 -> sm_90a)


def _stream(rows: int, mt: int, wm: int, bkb: int, stages: int, tag: str = "",
            dtypes=(torch.bfloat16, torch.float32), wn: int | None = None, bn: int = 64) -> MoeVariant:
    """moe_stream.cu's table: WM x WN warps (WN = 4 / WM unless given), STAGES x (BN weight rows +
    BM tile rows) x (BKB + 16) bytes of shared memory; gate/up covers BN / 2 act columns per block."""
    wn = 4 // wm if wn is None else wn
    assert rows == 16 * mt and mt % wm == 0 and bn % (16 * wn) == 0
    name = f"mma{rows}{tag}"
    return MoeVariant(name, "moe_stream", f"{name}_{{sfx}}", tuple(dtypes), rows, 32 * wm * wn,
                      stages * (bn + rows) * (bkb + 16), bn // 2, bn)


def _wgmma(name: str, bn: int, stages: int) -> MoeVariant:
    """moe_wgmma.cu's table: 2 warpgroups on 128 rows x BN columns, STAGES x (128 + BN) rows of 128 bytes
    (+ 1024 bytes to align the swizzle atoms)."""
    return MoeVariant(name, "moe_wgmma", f"{name}_{{sfx}}", (torch.bfloat16,), 128, 256,
                      stages * (128 + bn) * 128 + 1024, bn // 2, bn, arch="sm_90")


F32 = (torch.float32,)
MOE_VARIANTS = {v.name: v for v in (
    MoeVariant("wmma128", "moe_gemm", "bf16", (torch.bfloat16,), 128, 256, BF16_GEMM_SMEM, 64, 128),
    MoeVariant("simt64", "moe_gemm", "f32", F32, 64, 256, 0, 32, 64),
    _stream(16, 1, 1, 256, 4),
    _stream(16, 1, 1, 256, 3, "b", (torch.bfloat16,)),  # pipeline-depth alternatives (3 blocks/SM)
    _stream(16, 1, 1, 128, 6, "c", (torch.bfloat16,)),
    _stream(32, 2, 1, 256, 4),
    _stream(64, 4, 1, 256, 3),
    _stream(128, 8, 2, 128, 4),
    # bf16 only, with LATE_REFILL: 2 x 4 warps on 128 columns (mma128f's warp grid), and
    # 256-row tiles of 4 x 4 warps for the large batches
    _stream(128, 8, 2, 128, 4, "xl", (torch.bfloat16,), wn=4, bn=128),
    _stream(256, 16, 4, 128, 3, "wl", (torch.bfloat16,), wn=4, bn=128),
    # fp32 only, moe_stream.cu's FAST main loop; mma128f: 2 x 4 warps on 128 columns, 256 B stages
    _stream(16, 1, 1, 256, 4, "f", F32),
    _stream(64, 4, 1, 256, 3, "f", F32),
    _stream(128, 8, 2, 256, 3, "f", F32, wn=4, bn=128),
    # FAST with moe_stream.cu's FLAGS (l: LATE_REFILL, t: SPLIT_TRUNC) on the f geometries, and mma128r
    # (both flags) = 4 x 2 warps on 64 columns, 128 B stages, 2 blocks/SM (16 warps/SM in 128 registers)
    _stream(64, 4, 1, 256, 3, "fl", F32),
    _stream(128, 8, 2, 256, 3, "tl", F32, wn=4, bn=128),
    _stream(128, 8, 4, 128, 4, "r", F32, wn=2, bn=64),
    # bf16 on the H100 only: moe_wgmma.cu's warpgroup MMAs, 128-row tiles x BN columns
    _wgmma("wg128", 128, 3), _wgmma("wg256", 256, 4),
)}
LARGE_VARIANT = {torch.bfloat16: "wmma128", torch.float32: "simt64"}
# (most tokens per forward, variant), first match wins. The H100 timings behind each choice
# (microbenchmarks of one layer's grouped GEMMs, and forwards, medians):
# - 16-row tiles stream best up to 64 tokens, 64-row tiles at 256; mma128 ties WMMA at 1024 tokens
#   in isolation and wins by ~1 ms in the 64x16 forward; WMMA stays ahead at 4096.
# - fp32: 3xTF32 mma beats SIMT everywhere measured, and the FAST variants beat the plain ones at
#   every token count measured, 16 to 4096 (at 1024 tokens 3.31 -> 1.84 ms, at 16 0.66 -> 0.46 ms).
#   At 256 tokens mma64fl 0.79 -> 0.72 ms (same numerics as mma64f); the fp32 64x16 forward
#   62.4-62.7 ms with mma128f, 59.2-59.3 with mma128r, 59.6-59.8 with mma128tl (error 9e-7 -> 1.2e-6
#   / 1.5e-6 of the output scale; both VALID at --accuracy 64x16). At 4096 tokens (microbenchmark
#   only) mma128tl 6.04 ms, mma128r 6.36, mma128f 6.34; the 8x512 forward mma128tl 207.6 ms,
#   mma128r 217.4, mma128f 220.5.
# - bf16 forwards: 64x16 mma128 18.77 ms, wmma128 19.77, mma128xl 17.41 (mma256wl 17.84); 16x128
#   mma128 31.29, mma256wl 26.11 (mma128xl 28.87); 8x512 wmma128 61.02, mma256wl 49.38; 16x512
#   wmma128 119.3, mma256wl 96.6. LATE_REFILL is worth 2-5 % on both of those bf16 geometries
#   (without it: mma128x 17.80 / 57.34, mma256w 19.33 / 51.67 at 64x16 / 8x512).
# - bf16 wgmma: moe_wgmma.cu's wg256 at 4096 tokens 0.92 ms per layer (gate/up + down) against
#   mma256wl's 1.64, and at 1024 tokens 0.40 against mma128xl's 0.64; forwards 8x512 44.4 -> 30.1 ms,
#   16x512 84.4 -> 55.8, 16x128 25.0 -> 17.0 (wg128 in between), 64x16 mma128xl 17.2 -> wg256
#   12.0 ms, 8x64 (512 tokens) mma64 12.8 -> wg256 9.5.
# A policy entry names the variants in order of preference: the first one built for the GPU's arch
# is used.
MOE_POLICY = {
    torch.bfloat16: ((64, ("mma16",)), (256, ("mma64",)), (512, ("wg256", "mma64")), (1024, ("wg256", "mma128xl")),
                     (None, ("wg256", "mma256wl"))),
    torch.float32: ((64, ("mma16f",)), (256, ("mma64fl",)), (2048, ("mma128r",)), (None, ("mma128tl",))),
}


def variants_built_for(dtype, arch: str | None = None) -> list[str]:
    """Names of the grouped GEMM variants compiled for storage dtype `dtype` on a GPU of `arch`
    (Kernels.moe's keys; arch None: every variant of the dtype)."""
    return [name for name, v in MOE_VARIANTS.items()
            if dtype in v.dtypes and (arch is None or v.arch in (None, arch))]


def moe_variant_for(dtype, tokens: int, arch: str | None = None) -> str:
    """The grouped GEMM variant for a forward of `tokens` tokens on a GPU of `arch` (None: any)."""
    built = set(variants_built_for(dtype, arch))
    for most, names in MOE_POLICY[dtype]:
        if most is None or tokens <= most:
            return next(n for n in names if n in built)
    raise AssertionError("MOE_POLICY must end with a catch-all")


CONV_TILED_TOKENS, CONV_TILED_TAPS = 8, 3  # = SC_TOKENS, SC_L in elementwise.cu (shortconv_tiled)
ATTN_QT = 32  # = QT in attention.cu
ATTN_HEAD_DIMS = (16, 32, 64)
ATTN_MMA_QT = 64  # = AM_QT in attention_mma.cu (query rows per block)
# Kernels.attn_variant: "mma" = attention_mma.cu's tensor-core kernel for bf16 with head_dim 64 (every
# other dtype and head_dim stays on attention.cu); "simt" = attention.cu always, for A/B comparisons.
# H100, nh 32 / nkv 8, kernel only (CUDA graph): 8x512 772.9 -> 50.9 us per layer, 16x128
# 150.6 -> 13.9, 64x16 67.3 -> 12.4, 1x16 17.7 -> 3.3 (torch sdpa: 38.9 / 13.4 / 45.7 / 6.8).
ATTN_VARIANTS = ("mma", "simt")
NORM_MAXV = 16
SORT_MAX_E = 256


def ptr(t: torch.Tensor | None) -> np.uintp:
    return np.uintp(0 if t is None else t.data_ptr())


def i32(v) -> np.int32:
    return np.int32(int(v))


def f32(v) -> np.float32:
    return np.float32(float(v))


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _dev(t: torch.Tensor, dtype, name: str) -> None:
    _need(t.is_cuda and t.dtype == dtype and t.is_contiguous(),
          f"{name} must be a contiguous CUDA {dtype} tensor, got {t.dtype} on {t.device} "
          f"(contiguous={t.is_contiguous()})")


def max_gemm_tiles(npairs: int, num_experts: int, dtype, tile_rows: int | None = None) -> int:
    """Upper bound of the grouped GEMM's row tiles: sum_e ceil(c_e / BM) <= npairs // BM + E
    (BM = tile_rows, by default the dtype's large-batch variant's)."""
    return npairs // (tile_rows or GEMM_TILE_ROWS[dtype]) + num_experts


def check_sort_buffers(sorted_pair, expert_offsets, tiles, num_tiles, npairs: int, num_experts: int, dtype,
                       tile_rows: int) -> None:
    """The sort's outputs (Kernels.moe_sort, router.py's norm_route_sort): int32 CUDA tensors, sorted_pair
    holding npairs pairs, expert_offsets num_experts + 1 entries, and the tile table long enough for
    them in tiles of tile_rows (>= 1) rows: the kernel writes that far."""
    for t, n in ((sorted_pair, "sorted_pair"), (expert_offsets, "expert_offsets"), (tiles, "tiles"),
                 (num_tiles, "num_tiles")):
        _dev(t, torch.int32, n)
    _need(tile_rows >= 1, f"tile rows must be >= 1, got {tile_rows}")
    _need(sorted_pair.numel() >= npairs and expert_offsets.numel() >= num_experts + 1,
          f"sorted_pair must hold {npairs} pairs and expert_offsets {num_experts + 1} entries")
    _need(tiles.numel() >= 3 * max_gemm_tiles(npairs, num_experts, dtype, tile_rows), "tile table too small")


def _moe_grid(v: MoeVariant, tiles: int, slabs: int) -> tuple[int, int]:
    """The grouped GEMM's grid. moe_wgmma.cu puts the column slabs on x, so that the slabs of one row
    tile run side by side and read its rows from L2 (with the tiles on x the down GEMM's act rows, 59 MB
    at 4096 tokens, are read from HBM once per slab); the older kernels put the tiles on x."""
    return (slabs, tiles) if v.module == "moe_wgmma" else (tiles, slabs)


class Kernels:
    def __init__(self, gpu, dtype: torch.dtype, stream=None):
        if dtype not in SUFFIX:
            raise ValueError(f"dtype {dtype} not supported; use torch.float32 or torch.bfloat16")
        self.dtype, self.stream, sfx = dtype, stream, SUFFIX[dtype]
        ew = load_module(HERE / "elementwise.cu", gpu)
        at = load_module(HERE / "attention.cu", gpu)
        modules = {m: load_module(HERE / f"{m}.cu", gpu) for m in ("moe_gemm", "moe_stream")}
        self.arch = gpu.arch
        self.k_embed = ew.kernel(f"embedding_gather_{sfx}")
        self.k_embed_norm = ew.kernel(f"embed_norm_vec8_{sfx}")
        self.k_add_norm = ew.kernel(f"add_norm_{sfx}")
        self.k_add_norm_vec8 = ew.kernel(f"add_norm_vec8_{sfx}")
        self.k_silu_mul = ew.kernel(f"silu_mul_{sfx}")
        self.k_conv = ew.kernel(f"shortconv_{sfx}")
        self.k_conv_tiled = ew.kernel(f"shortconv_tiled_{sfx}")
        # shortconv_tiled where it applies (3 taps, even H), bf16 only: same bits as shortconv, and on an
        # H100 bf16 8x512 47.89 -> 47.03 ms, 64x16 17.61 -> 17.22 ms, but fp32 64x16 59.22 -> 61.08 ms
        # (not understood; fp32 stays on the per-channel kernel). Tests flip it.
        self.conv_tiled = dtype == torch.bfloat16
        self.k_rope = ew.kernel(f"qk_norm_rope_{sfx}")
        self.k_route = {t: ew.kernel(f"route_{SUFFIX[t]}") for t in SUFFIX}  # by the router logits' dtype
        self.k_sort = ew.kernel("moe_sort_pairs")
        self.k_attn = {hd: at.kernel(f"attention_{sfx}_hd{hd}") for hd in ATTN_HEAD_DIMS}
        # head_dim -> tensor-core kernel (bf16 only)
        self.k_attn_mma = ({64: load_module(HERE / "attention_mma.cu", gpu).kernel("attention_mma_bf16_hd64")}
                           if dtype == torch.bfloat16 else {})
        self.attn_variant = "mma"  # a test or benchmark may set "simt" to compare
        self.pdl = False  # the engine's choice: launch the kernels that wait for it with PDL
        self.pdl_kernels = {self.k_embed, self.k_embed_norm, self.k_add_norm, self.k_add_norm_vec8}
        from harness.gpu.context import import_driver
        attr = import_driver().function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES
        self.moe: dict[str, tuple] = {}  # variant name -> (variant, gate/up kernel, down kernel)
        for v in map(MOE_VARIANTS.get, variants_built_for(dtype, gpu.arch)):
            if v.module not in modules:  # arch-specific sources, compiled only where they run
                modules[v.module] = load_module(HERE / f"{v.module}.cu", gpu, arch=f"{v.arch}a" if v.arch else None)
            mod, stem = modules[v.module], v.stem.format(sfx=sfx)
            pair = (mod.kernel(f"moe_gateup_{stem}"), mod.kernel(f"moe_down_{stem}"))
            if v.smem > DEFAULT_DYNAMIC_SMEM:  # above the default limit a block must ask for its shared memory
                for k in pair:
                    k.function.set_attribute(attr, v.smem)
            if v.module in ("moe_wgmma", "moe_stream"):  # they wait for PDL: the down's first weights load early
                self.pdl_kernels.update(pair)
            self.moe[v.name] = (v, *pair)

    def _go(self, kernel, grid, block, args, shared=0, **shapes):
        launch(kernel, grid, block, args, shapes=shapes or None, shared=shared, stream=self.stream,
               pdl=self.pdl and kernel in self.pdl_kernels)

    # ----- residual stream -------------------------------------------------------------------------
    def embedding(self, ids: torch.Tensor, table: torch.Tensor, x: torch.Tensor) -> None:
        _dev(ids, torch.int32, "ids"); _dev(table, self.dtype, "table"); _dev(x, torch.float32, "x")
        n, H = ids.numel(), table.shape[1]
        _need(x.numel() >= n * H, "x too small for the ids")
        self._go(self.k_embed, (n,), (256,), (ptr(ids), ptr(table), ptr(x), i32(H)), ids=n, H=H)

    def embedding_norm(self, ids: torch.Tensor, table: torch.Tensor, x: torch.Tensor, w, h, eps: float) -> None:
        """embedding(ids, table, x), then h = rmsnorm(x) * w for those rows (add_norm with no addend):
        one launch where add_norm would take its vector kernel (the same values bit for bit)."""
        _dev(ids, torch.int32, "ids"); _dev(table, self.dtype, "table"); _dev(x, torch.float32, "x")
        _dev(w, self.dtype, "w"); _dev(h, self.dtype, "h")
        n, H = ids.numel(), table.shape[1]
        _need(w.numel() == H and x.numel() >= n * H and h.numel() >= n * H, f"x, h must hold [{n}, {H}], w [{H}]")
        if H % 256 or H > 8 * 1024 or any(t.data_ptr() % 16 for t in (table, x, w, h)):
            self.embedding(ids, table, x)
            self.add_norm(x, None, 0, w, h, eps, rows=n)
            return
        self._go(self.k_embed_norm, (n,), (H // 8,), (ptr(ids), ptr(table), ptr(x), ptr(w), ptr(h), i32(H), f32(eps)),
                 ids=n, H=H)

    def add_norm(self, x, y, nadd: int, w, h, eps: float, rows: int | None = None, h32=None) -> None:
        """x[r] += sum_{j<nadd} y[r*nadd+j]; h[r] = rmsnorm(x[r]) * w, for the first `rows` rows;
        with h32 also the unrounded fp32 h."""
        _dev(x, torch.float32, "x"); _dev(w, self.dtype, "w"); _dev(h, self.dtype, "h")
        H = w.numel()
        rows = x.numel() // H if rows is None else rows
        _need(H <= NORM_MAXV * 256, f"hidden size {H} exceeds add_norm's {NORM_MAXV * 256}")
        if nadd:
            _dev(y, self.dtype, "y")
            _need(y.numel() >= rows * nadd * H, "y holds fewer than rows * nadd rows")
        if h32 is not None:
            _dev(h32, torch.float32, "h32")
        # rows of 8 columns per thread, whole warps, at most 8 addends: the branch-free vector kernel
        vec8 = (H % 256 == 0 and H <= 8 * 1024 and nadd <= 8
                and all(t.data_ptr() % 16 == 0 for t in (x, y, w, h, h32) if t is not None))  # 16-byte vectors
        kernel, threads = (self.k_add_norm_vec8, H // 8) if vec8 else (self.k_add_norm, 256)
        self._go(kernel, (rows,), (threads,), (ptr(x), ptr(y if nadd else None), i32(nadd), ptr(w), ptr(h),
                                               ptr(h32), i32(H), f32(eps)), rows=rows, H=H, nadd=nadd)

    # ----- mixers ------------------------------------------------------------------------------------
    def shortconv(self, bcx, conv_w, y, seq_len: int) -> None:
        _dev(bcx, self.dtype, "bcx"); _dev(conv_w, self.dtype, "conv_w"); _dev(y, self.dtype, "y")
        H, L = conv_w.shape
        ntok = bcx.numel() // (3 * H)
        _need(ntok % seq_len == 0, "token count is not a multiple of seq_len")
        if self.conv_tiled and L == CONV_TILED_TAPS and H % 2 == 0:  # channel pairs: 4- or 8-byte aligned loads
            grid = (-(-H // (2 * 128)), -(-ntok // CONV_TILED_TOKENS))
            self._go(self.k_conv_tiled, grid, (128,), (ptr(bcx), ptr(conv_w), ptr(y), i32(ntok), i32(seq_len), i32(H)),
                     ntok=ntok, H=H)
            return
        n = ntok * H
        self._go(self.k_conv, ((n + 255) // 256,), (256,), (ptr(bcx), ptr(conv_w), ptr(y), i32(ntok), i32(seq_len),
                                                           i32(H), i32(L)), ntok=ntok, H=H)

    def qk_norm_rope(self, qkv, qw, kw, q, k, v, seq_len, nh, nkv, hd, eps, theta) -> None:
        for t, n in ((qkv, "qkv"), (qw, "q_norm"), (kw, "k_norm"), (q, "q"), (k, "k"), (v, "v")):
            _dev(t, self.dtype, n)
        ntok = qkv.numel() // ((nh + 2 * nkv) * hd)
        warps = ntok * (nh + 2 * nkv)
        self._go(self.k_rope, ((warps * 32 + 255) // 256,), (256,),
                 (ptr(qkv), ptr(qw), ptr(kw), ptr(q), ptr(k), ptr(v), i32(ntok), i32(seq_len), i32(nh), i32(nkv),
                  i32(hd), f32(eps), f32(theta)), ntok=ntok, heads=(nh, nkv, hd))

    def attention(self, q, k, v, o, batch, seq_len, nh, nkv, hd) -> None:
        for t, n in ((q, "q"), (k, "k"), (v, "v"), (o, "o")):
            _dev(t, self.dtype, n)
        _need(hd in self.k_attn, f"head_dim {hd} not built; attention.cu has {ATTN_HEAD_DIMS}")
        _need(self.attn_variant in ATTN_VARIANTS,
              f"attn_variant {self.attn_variant!r} unknown; choose one of {ATTN_VARIANTS}")
        _need(nkv >= 1 and nh % nkv == 0, f"nh={nh} must be a multiple of nkv={nkv}")
        args = (ptr(q), ptr(k), ptr(v), ptr(o), i32(seq_len), i32(nh), i32(nkv), f32(hd ** -0.5))
        if (self.attn_variant == "mma" and hd in self.k_attn_mma
                and all(t.data_ptr() % 16 == 0 for t in (q, k, v, o))):  # cp.async / uint4 stores: 16-byte rows
            grid = (nh, batch, (seq_len + ATTN_MMA_QT - 1) // ATTN_MMA_QT)
            self._go(self.k_attn_mma[hd], grid, (128,), args, B=batch, S=seq_len)
            return
        G = nh // nkv
        _need(G * ATTN_QT <= 256, f"GQA group {G} too large for one block")
        grid = ((seq_len + ATTN_QT - 1) // ATTN_QT, nkv, batch)
        self._go(self.k_attn[hd], grid, (G * ATTN_QT,), args, B=batch, S=seq_len)

    # ----- feed-forward --------------------------------------------------------------------------------
    def silu_mul(self, gu, act) -> None:
        _dev(gu, self.dtype, "gu"); _dev(act, self.dtype, "act")
        rows, I2 = gu.shape
        n = rows * (I2 // 2)
        self._go(self.k_silu_mul, ((n + 255) // 256,), (256,), (ptr(gu), ptr(act), i32(rows), i32(I2 // 2)), rows=rows)

    def route(self, logits, bias, k: int, norm_topk: bool, scale: float, idx, wts) -> None:
        _need(logits.dtype in SUFFIX, "router logits must be fp32 or bf16")
        _dev(logits, logits.dtype, "router logits"); _dev(bias, torch.float32, "expert_bias")
        _dev(idx, torch.int32, "idx"); _dev(wts, torch.float32, "wts")
        ntok, E = logits.shape
        _need(E <= 64 and k <= min(E, 32), f"route supports E <= 64 experts, k <= 32 (got E={E}, k={k})")
        self._go(self.k_route[logits.dtype], ((ntok * 32 + 255) // 256,), (256,),
                 (ptr(logits), ptr(bias), i32(ntok), i32(E), i32(k), i32(bool(norm_topk)), f32(scale), ptr(idx),
                  ptr(wts)), ntok=ntok, E=E)

    def moe_variant(self, name: str | None) -> MoeVariant:
        """The grouped GEMM variant called `name` (None: this dtype's large-batch one)."""
        name = name or LARGE_VARIANT[self.dtype]
        if name not in self.moe:
            raise ValueError(f"MoE variant {name!r} is not available for {SUFFIX[self.dtype]}; choose one of "
                             f"{sorted(self.moe)}")
        return self.moe[name][0]

    def moe_sort(self, idx, num_experts, sorted_pair, expert_offsets, tiles, num_tiles, npairs=None,
                 variant: str | None = None) -> None:
        """Sort the (token, slot) pairs by expert and build the tile table for `variant`."""
        _dev(idx, torch.int32, "idx")
        npairs = idx.numel() if npairs is None else npairs
        rows = self.moe_variant(variant).tile_rows
        _need(num_experts <= SORT_MAX_E, f"moe_sort supports up to {SORT_MAX_E} experts")
        check_sort_buffers(sorted_pair, expert_offsets, tiles, num_tiles, npairs, num_experts, self.dtype, rows)
        self._go(self.k_sort, (1,), (1024,), (ptr(idx), i32(npairs), i32(num_experts), i32(rows),
                                             ptr(sorted_pair), ptr(expert_offsets), ptr(tiles), ptr(num_tiles)),
                 npairs=npairs)

    def _gemm_checks(self, A, W, out, K, v: MoeVariant):
        _dev(A, self.dtype, "A"); _dev(W, self.dtype, "W"); _dev(out, self.dtype, "out")
        step = 8 if v.name == "wmma128" else 16 if v.name == "simt64" else 16 // W.element_size()
        _need(K % step == 0, f"K={K} must be a multiple of {step} for the {v.name} {SUFFIX[self.dtype]} grouped GEMM")

    def moe_gateup(self, h, w13, act, sorted_pair, tiles, num_tiles, npairs: int, topk: int,
                   variant: str | None = None) -> None:
        """act[r] = silu(h[t] @ w1_e^T) * (h[t] @ w3_e^T), r = sorted row, t = sorted_pair[r] // topk.
        `tiles` must come from moe_sort with the same variant."""
        v = self.moe_variant(variant)
        E, N2, K = w13.shape
        N = N2 // 2
        self._gemm_checks(h, w13, act, K, v)
        _need(v.name != "wmma128" or N % 8 == 0, f"expert width {N} must be a multiple of 8")
        grid = _moe_grid(v, max_gemm_tiles(npairs, E, self.dtype, v.tile_rows), (N + v.gateup_cols - 1) // v.gateup_cols)
        self._go(self.moe[v.name][1], grid, (v.threads,), (ptr(h), ptr(w13), ptr(act), ptr(sorted_pair), ptr(tiles),
                                                          ptr(num_tiles), i32(N), i32(K), i32(topk)),
                 shared=v.smem, npairs=npairs, N=N, K=K, variant=v.name)

    def moe_down(self, act, w2, ys, sorted_pair, tiles, num_tiles, pair_w, npairs: int,
                 variant: str | None = None) -> None:
        """ys[p] = pair_w[p] * (act[r] @ w2_e^T) for sorted row r holding pair p."""
        v = self.moe_variant(variant)
        E, N, K = w2.shape
        self._gemm_checks(act, w2, ys, K, v)
        _dev(pair_w, torch.float32, "pair_w")
        grid = _moe_grid(v, max_gemm_tiles(npairs, E, self.dtype, v.tile_rows), (N + v.down_cols - 1) // v.down_cols)
        self._go(self.moe[v.name][2], grid, (v.threads,), (ptr(act), ptr(w2), ptr(ys), ptr(sorted_pair), ptr(tiles),
                                                          ptr(num_tiles), ptr(pair_w), i32(N), i32(K)),
                 shared=v.smem, npairs=npairs, N=N, K=K, variant=v.name)
