"""Dense fp32 GEMMs on TF32 tensor cores at ~fp32 accuracy ("3xTF32", the fp32 engine's option
tf32x3): a = ah + al and w = wh + wl with ah, wh the TF32 roundings (low 13 mantissa bits zero)
and al, wl the exact fp32 remainders; a.w ~ ah.wh + ah.wl + al.wh (al.wl, ~2^-22 of the product,
is dropped). Each TF32 product of a hi part is exact in the tensor core; the lo parts lose their
own last bits (TF32 keeps 10 of their mantissa bits), ~2^-21 of a.w.

Layouts (column slices of them are cuBLAS operands as they are, no copies):
  weights, split once at load:   wx = [wl | wh]   [N, 2K]  (optimized/weights.py; 2x their fp32 bytes)
  activations, split per call:   ax = [ah | al]   [M, 2K]  (split_tf32.cu, into a plan's scratch)
  out  = ax @ wx^T                                     = ah.wl + al.wh  (the small products, K' = 2K)
  out += ax[:, k0:k1] @ wx[:, K+k0:K+k1]^T per chunk   = ah.wh          (the big one in K chunks)
Why the chunks: the tensor core's fp32 accumulation truncates (optimized/moe_stream.cu,
mma_step), and one cuBLAS accumulator over the whole K shrinks the output by ~2e-9 x K of itself
(H100: 4.2e-6 at K = 2048, 1.4e-5 at 7168, the same as plain TF32's; plain fp32 cuBLAS ~1e-9).
In the fp32 engine (one accumulator) 13 of 256 prompts of 16 tokens then ended up to 0.54 off
float64 with top-1 intact, each at one of the prompts' smallest routing margins (a near-tie,
docs/usage.md; plain fp32: one, shared with the float32 reference), so the big product is summed in
`chunks` GEMMs of K / chunks each, every one from a fresh accumulator, added by cuBLAS's fp32
epilogue (round to nearest): the bias falls with the chunk length. TF32 is on only around these
calls (tf32_matmul); the engine keeps it off.

split_tf32() is the split in plain torch (any device): the weights' split at load and the CPU
mirror of the kernel that the tests compare bit for bit.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from harness.gpu import launch, load_module

from .kernels import _need, i32, ptr

HERE = Path(__file__).parent
TF32_DROPPED_BITS = 13  # fp32 has 23 mantissa bits, TF32 10
SPLIT_THREADS = 256
# Fewest rows that take 3xTF32: below, reading 3x the weight bytes (and, in chunks, 1 + chunks
# GEMM launches) costs more than the tensor cores save. H100, the model's projections, 8 chunks:
# plain fp32 won on all five at 128 rows, on three of five at 256, on none at 1024 (not measured
# in between; in one accumulator 3xTF32 won on all from 128 rows).
TF32X3_MIN_ROWS = 1024
# K chunks of the big product (see above). H100 at K = 2048: the shrink is 4.2e-6 / chunks (fp32
# cuBLAS' rms error 5.7e-7, 8 chunks' 6.4e-7); the fp32 engine at 64 x 16 took 86.2 (1 chunk),
# 88.0 (2), 89.4 (4), 91.5 (8), 96.2 ms (16); 4, 8 and 16 were VALID against float64 on 256
# prompts of 16 tokens, 1 and 2 not (13 and more near-tie flips).
TF32X3_CHUNKS = 8

_HALF_ULP = 1 << (TF32_DROPPED_BITS - 1)
_KEEP_MASK = -(1 << TF32_DROPPED_BITS)  # int32 0xffffe000
_EXP_MASK = 0x7F800000
_CANONICAL_NAN = 0x7FFFFFFF


def split_tf32(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 a -> (hi, lo): hi = a rounded to the nearest TF32 value (ties away from zero), lo =
    a - hi (exact). Non-finite: hi keeps an infinity, a NaN becomes 0x7fffffff; lo = 0. The same
    bit arithmetic as split_tf32.cu."""
    _need(a.dtype == torch.float32, f"split_tf32 takes float32, got {a.dtype}")
    u = a.contiguous().view(torch.int32)
    finite = (u & _EXP_MASK) != _EXP_MASK
    is_nan = ~finite & ((u & 0x007FFFFF) != 0)
    hi_bits = torch.where(finite, (u + _HALF_ULP) & _KEEP_MASK, u)  # int32 wraps like the kernel's unsigned add
    hi_bits = torch.where(is_nan, torch.full_like(u, _CANONICAL_NAN), hi_bits)
    hi = hi_bits.view(torch.float32)
    lo = torch.where(finite, a - hi, torch.zeros_like(a))
    return hi, lo


def split_weight(w: torch.Tensor) -> torch.Tensor:
    """A [N, K] fp32 weight -> wx = [wl | wh] [N, 2K] (the layout SplitTF32.mm takes)."""
    _need(w.dim() == 2 and w.dtype == torch.float32, f"split_weight takes a 2-D float32 weight, got {w.dtype} "
          f"{tuple(w.shape)}")
    hi, lo = split_tf32(w)
    return torch.cat([lo, hi], dim=1).contiguous()


def chunk_bounds(K: int, chunks: int) -> list[tuple[int, int]]:
    """[k0, k1) ranges that cover 0..K in at most `chunks` pieces, each starting on a multiple of 4
    (16-byte aligned operands for cuBLAS's tensor-core kernels)."""
    step = -(-K // max(1, chunks))  # ceil(K / chunks)
    step = max(4, -(-step // 4) * 4)  # rounded up to a multiple of 4
    return [(k, min(k + step, K)) for k in range(0, K, step)]


@contextlib.contextmanager
def tf32_matmul():
    """cuBLAS fp32 GEMMs on TF32 tensor cores inside, the previous setting restored after. Uses
    the legacy flag as the rest of the project does (torch refuses to mix it with fp32_precision)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class SplitTF32:
    """The activation split kernel (split_tf32.cu) and the 3xTF32 GEMM, on `stream` (a pycuda
    Stream; torch work goes to torch's current stream, which the engine makes the same one)."""

    def __init__(self, gpu, stream=None, chunks: int = TF32X3_CHUNKS):
        _need(int(chunks) >= 1, f"chunks must be >= 1, got {chunks}")
        m = load_module(HERE / "split_tf32.cu", gpu)
        self.k_vec4, self.k_any = m.kernel("split_tf32_vec4"), m.kernel("split_tf32_any")
        self.stream, self.chunks = stream, int(chunks)

    def split_rows(self, a: torch.Tensor, ax: torch.Tensor) -> None:
        """a [M, K] fp32 (unit column stride, any row stride) -> ax [M, 2K] = [hi | lo] (contiguous)."""
        _need(a.is_cuda and a.dtype == torch.float32 and a.dim() == 2 and a.stride(1) == 1,
              f"split_rows takes a CUDA float32 [M, K] with unit column stride, got {a.dtype} {tuple(a.shape)} "
              f"strides {a.stride()} on {a.device}")
        M, K = a.shape
        _need(ax.is_cuda and ax.dtype == torch.float32 and ax.is_contiguous() and tuple(ax.shape) == (M, 2 * K),
              f"split_rows writes a contiguous CUDA float32 [{M}, {2 * K}], got {ax.dtype} {tuple(ax.shape)}")
        if M == 0 or K == 0:
            return
        lda = a.stride(0) if M > 1 else K
        vec = K % 4 == 0 and lda % 4 == 0 and a.data_ptr() % 16 == 0 and ax.data_ptr() % 16 == 0
        kernel, n = (self.k_vec4, M * K // 4) if vec else (self.k_any, M * K)
        launch(kernel, ((n + SPLIT_THREADS - 1) // SPLIT_THREADS,), (SPLIT_THREADS,),
               (ptr(a), i32(lda), ptr(ax), i32(M), i32(K)), shapes={"a": (M, K), "lda": lda}, stream=self.stream)

    def mm(self, a: torch.Tensor, wx: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor) -> None:
        """out [M, N] = a [M, K] @ w^T to ~fp32 accuracy, w given as wx = split_weight(w) [N, 2K].
        scratch: fp32 CUDA, at least 2 M K elements (the split activations; nothing is allocated,
        so the call can be captured into a CUDA graph)."""
        M, K = a.shape
        N = wx.shape[0]
        _need(wx.dim() == 2 and wx.shape[1] == 2 * K and wx.dtype == torch.float32 and wx.is_contiguous(),
              f"wx must be split_weight(w) of a [N, {K}] weight: contiguous float32 [N, {2 * K}], got "
              f"{wx.dtype} {tuple(wx.shape)}")
        _need(tuple(out.shape) == (M, N) and out.dtype == torch.float32, f"out must be float32 [{M}, {N}], got "
              f"{out.dtype} {tuple(out.shape)}")
        _need(scratch.dtype == torch.float32 and scratch.is_contiguous() and scratch.numel() >= 2 * M * K,
              f"scratch must be contiguous float32 with at least {2 * M * K} elements, got {scratch.numel()}")
        ax = scratch.view(-1)[:2 * M * K].view(M, 2 * K)
        self.split_rows(a, ax)
        x3_gemms(ax, wx, out, self.chunks)


def x3_gemms(ax: torch.Tensor, wx: torch.Tensor, out: torch.Tensor, chunks: int = TF32X3_CHUNKS) -> None:
    """out = a @ w^T from the split activations ax = [ah | al] [M, 2K] and the split weight
    wx = [wl | wh] [N, 2K]: cuBLAS GEMMs with TF32 on, the big product in `chunks` K chunks
    (any device: the CPU tests run it)."""
    K = ax.shape[1] // 2
    with tf32_matmul():
        torch.mm(ax, wx.t(), out=out)  # ah.wl + al.wh
        for k0, k1 in chunk_bounds(K, chunks):
            out.addmm_(ax[:, k0:k1], wx[:, K + k0:K + k1].t())  # += ah.wh over [k0, k1), a fresh accumulator
