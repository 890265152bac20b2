"""Launchers for gemv.cu (weight-streaming GEMV for 1-4 tokens: the batch-1 decode step), on torch
CUDA tensors, in kernels.py's style: each method checks dtype, shape, contiguity and 16-byte
alignment, then launches on `stream`.

Which shapes take them is the engine's choice (optimized/layers.py): a projection with at most
GEMV_MAX_TOKENS rows (`takes`), the MoE of at most MOE_GEMV_MAX_PAIRS (token, expert) pairs (no
sort: each pair is its own GEMV, an expert shared by two pairs is read twice, from L2 at best).
The MoE router's kernels are router.py's.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.gpu import launch, load_module

from .kernels import SUFFIX, _dev, _need, i32, ptr

HERE = Path(__file__).parent
GEMV_MAX_TOKENS = 4  # = GV_MAXB in gemv.cu
GEMV_WARPS = 8  # = GV_WARPS: output columns per block
CONV_STEP_MAX_TOKENS = 2  # conv_in_step's nb cases
MOE_GEMV_MAX_PAIRS = 8  # 2 tokens: at 4 (16 pairs) the grouped GEMM, which reads each expert once, is faster
CHUNK = {torch.float32: 4, torch.bfloat16: 8}  # elements per 16-byte load


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def _rows_ok(t: torch.Tensor, K: int) -> bool:
    """[rows, K] with unit column stride and every row starting on 16 bytes."""
    return (t.dim() == 2 and t.shape[1] == K and t.stride(1) == 1 and _aligned(t)
            and (t.stride(0) * t.element_size()) % 16 == 0)


def gemv_takes(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, dtype) -> bool:
    """Whether the GEMV runs y = x @ w^T for weights of `dtype` (else the engine keeps cuBLAS):
    1..GEMV_MAX_TOKENS rows, K a multiple of a 16-byte chunk, 16-byte aligned rows, y contiguous
    in `dtype` or fp32 (gemv_bf16_f32out)."""
    return (x.dtype == w.dtype == dtype and y.dtype in (dtype, torch.float32) and x.is_cuda
            and 1 <= x.shape[0] <= GEMV_MAX_TOKENS and w.dim() == 2 and w.is_contiguous()
            and w.shape[1] % CHUNK[dtype] == 0 and _aligned(w) and _rows_ok(x, w.shape[1])
            and y.is_contiguous() and y.shape == (x.shape[0], w.shape[0]))


class GemvKernels:
    def __init__(self, gpu, dtype: torch.dtype, stream=None):
        _need(dtype in SUFFIX, f"dtype {dtype} not supported; use torch.float32 or torch.bfloat16")
        self.dtype, self.stream, sfx = dtype, stream, SUFFIX[dtype]
        self.chunk = CHUNK[dtype]
        m = load_module(HERE / "gemv.cu", gpu)
        self.k_gemv = {dtype: m.kernel(f"gemv_{sfx}")}  # by the output dtype
        if dtype == torch.bfloat16:
            self.k_gemv[torch.float32] = m.kernel("gemv_bf16_f32out")
        self.k_gateup = m.kernel(f"moe_gemv_gateup_{sfx}")
        self.k_down = m.kernel(f"moe_gemv_down_{sfx}")
        self.k_conv_in_step = m.kernel(f"conv_in_step_{sfx}")
        self.pdl = False  # as Kernels.pdl: every kernel here waits for it (gemv.cu)

    def _go(self, kernel, grid, block, args, **shapes):
        launch(kernel, grid, block, args, shapes=shapes or None, stream=self.stream, pdl=self.pdl)

    # ----- dense projections -----------------------------------------------------------------------------
    def takes(self, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether gemv(x, w, y) can run (gemv_takes)."""
        return gemv_takes(x, w, y, self.dtype)

    def gemv(self, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
        """y [nb, N] = x [nb, K] @ w [N, K]^T for nb <= GEMV_MAX_TOKENS; x rows may be strided (the
        LM head's last positions); y in the engine dtype, or fp32 for bf16 weights."""
        if not self.takes(x, w, y):
            raise ValueError(f"gemv takes x [1..{GEMV_MAX_TOKENS}, K] ({self.dtype}, unit column stride, rows on 16 "
                             f"bytes), w [N, K] contiguous with K % {self.chunk} == 0 and y [rows, N] contiguous in "
                             f"{sorted(map(str, self.k_gemv))}; got x {tuple(x.shape)} {x.dtype} stride {x.stride()}, "
                             f"w {tuple(w.shape)} {w.dtype}, y {tuple(y.shape)} {y.dtype}")
        (nb, K), N = x.shape, w.shape[0]
        self._go(self.k_gemv[y.dtype], ((N + GEMV_WARPS - 1) // GEMV_WARPS,), (GEMV_WARPS * 32,),
                 (ptr(x), i32(x.stride(0)), ptr(w), ptr(y), i32(N), i32(N), i32(K), i32(nb)), x=(nb, K), w=(N, K))

    # ----- MoE, one GEMV per (token, expert) pair ------------------------------------------------------
    def _moe_checks(self, a, w, out, rows: int, K: int, what: str) -> None:
        for t, n in ((a, "input"), (w, "weights"), (out, "output")):
            _dev(t, self.dtype, f"{what} {n}")
            _need(_aligned(t), f"{what} {n} must start on 16 bytes")
        _need(K % self.chunk == 0, f"{what}: K={K} must be a multiple of {self.chunk} (16-byte rows)")
        _need(a.numel() >= rows * K, f"{what}: input holds fewer than {rows} rows of {K}")

    def moe_gateup(self, h, w13, act, idx, topk: int) -> None:
        """act[p] = silu(h[t] @ w1_e^T) * (h[t] @ w3_e^T) for pair p = t * topk + j of expert
        e = idx[p]; w13 [E, 2N, K]. idx None: every pair uses expert 0 (w13 [1, 2N, K], the dense
        FFN, topk 1)."""
        E, N2, K = w13.shape
        N = N2 // 2
        npairs = h.shape[0] if idx is None else idx.numel()
        if idx is not None:
            _dev(idx, torch.int32, "idx")
        else:
            _need(E == 1 and topk == 1, "without idx the weights must be one expert [1, 2N, K] and topk 1")
        _need(npairs <= 65535, f"{npairs} pairs exceed one launch's grid")
        self._moe_checks(h, w13, act, npairs // max(topk, 1), K, "moe_gemv_gateup")
        _need(act.numel() >= npairs * N, f"act must hold [{npairs}, {N}]")
        self._go(self.k_gateup, ((N + GEMV_WARPS - 1) // GEMV_WARPS, npairs), (GEMV_WARPS * 32,),
                 (ptr(h), ptr(w13), ptr(act), ptr(idx), i32(topk), i32(N), i32(K)), npairs=npairs, N=N, K=K)

    def moe_down(self, act, w2, ys, idx, wts) -> None:
        """ys[p] = wts[p] * (act[p] @ w2_e^T), e = idx[p]; w2 [E, N, K]; ys [npairs, N] (the k
        slots of a token are summed by the next add_norm)."""
        E, N, K = w2.shape
        _dev(idx, torch.int32, "idx"); _dev(wts, torch.float32, "wts")
        npairs = idx.numel()
        _need(wts.numel() == npairs, "wts must have one weight per pair")
        _need(npairs <= 65535, f"{npairs} pairs exceed one launch's grid")
        self._moe_checks(act, w2, ys, npairs, K, "moe_gemv_down")
        _need(ys.numel() >= npairs * N, f"ys must hold [{npairs}, {N}]")
        self._go(self.k_down, ((N + GEMV_WARPS - 1) // GEMV_WARPS, npairs), (GEMV_WARPS * 32,),
                 (ptr(act), ptr(w2), ptr(ys), ptr(idx), ptr(wts), i32(N), i32(K)), npairs=npairs, N=N, K=K)

    # ----- ShortConv decode step --------------------------------------------------------------------------
    def conv_in_step(self, h, w_in, conv_w, state, y) -> None:
        """y [B, H] = C * conv(state, B*x) with B, C, x = h [B, H] @ w_in [3H, H]^T, state [B, L-1, H]
        advanced by one column (DecodeKernels.conv_step after the in_proj GEMM, in one launch), for
        B <= CONV_STEP_MAX_TOKENS."""
        for t, n in ((h, "h"), (w_in, "in_proj weight"), (conv_w, "conv_w"), (state, "state"), (y, "y")):
            _dev(t, self.dtype, n)
        H, L = conv_w.shape
        _need(state.dim() == 3 and state.shape[1:] == (L - 1, H), f"state must be [B, {L - 1}, {H}]")
        B = state.shape[0]
        _need(1 <= B <= CONV_STEP_MAX_TOKENS, f"conv_in_step takes 1..{CONV_STEP_MAX_TOKENS} sequences, got {B}")
        _need(tuple(w_in.shape) == (3 * H, H), f"in_proj weight must be [{3 * H}, {H}]")
        _need(h.numel() == B * H and y.numel() >= B * H, f"h and y must hold [{B}, {H}]")
        _need(H % self.chunk == 0 and _aligned(h) and _aligned(w_in), "h and w_in need 16-byte rows")
        self._go(self.k_conv_in_step, ((H + GEMV_WARPS - 1) // GEMV_WARPS,), (GEMV_WARPS * 32,),
                 (ptr(h), ptr(w_in), ptr(conv_w), ptr(state), ptr(y), i32(H), i32(L), i32(B)), B=B, H=H, L=L)
