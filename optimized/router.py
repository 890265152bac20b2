"""Launchers for router.cu (the MoE router of the small-batch path: ffn_norm, the fp32 router GEMV
and the biased top-k in one launch, or folded through the mixer's out_proj), on torch CUDA
tensors, in gemv.py's style: each method checks dtype, shape, contiguity and 16-byte alignment,
then launches on `stream`.

Which shapes take them is the engine's choice (optimized/layers.py): at most ROUTER_MAX_TOKENS
tokens (one block per token re-reads the 256 KB router weight from L2; past 64 tokens cuBLAS's
GEMM is the better reader); norm_route where H <= NORM_ROUTE_MAX_H (`norm_route_takes`), else
add_norm then router_topk; at 1-2 tokens the router folded through out_proj (`folds_router`:
out_router, then norm_route_folded). Where the grouped MoE GEMM follows, norm_route also sorts the
pairs for it (norm_route_sort: one launch fewer per MoE layer), and given the folded router Gw and
E <= 32 it runs sliced over H (norm_route_sliced: the router read by many SMs, a few KB each).
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.gpu import launch, load_module

from .gemv import GEMV_WARPS, _aligned, gemv_takes
from .kernels import SUFFIX, _dev, _need, check_sort_buffers, f32, i32, ptr

HERE = Path(__file__).parent
ROUTER_THREADS = 1024  # = RT_THREADS in router.cu
NORM_ROUTE_MAX_H = 2048  # = NR_MAX_H: norm_route keeps the fp32 row in shared memory, H/2 threads
NORM_ROUTE_SPLIT_MAX_TOKENS = 2  # = NRS_MAXT: norm_route_split's tokens per launch
FOLDED_ROUTER_PARTS = 4  # = FR_PARTS: slices of K per folded-router row (out_router's partial logits)
ROUTER_MAX_E = 64
ROUTER_MAX_TOKENS = 64
SLICED_TOKENS = 8  # = NRL_TOK: norm_route_sliced's tokens per block (its token groups: NRL_MAXG = 8)
SLICED_COLS = 256  # = NRL_COLS: its columns per block
SLICED_MAX_E = 32  # = 8 warps x NRL_EW experts


class RouterKernels:
    def __init__(self, gpu, dtype: torch.dtype, stream=None):
        _need(dtype in SUFFIX, f"dtype {dtype} not supported; use torch.float32 or torch.bfloat16")
        self.dtype, self.stream, sfx = dtype, stream, SUFFIX[dtype]
        m = load_module(HERE / "router.cu", gpu)
        self.k_router = m.kernel("router_topk")
        self.k_norm_route = m.kernel(f"norm_route_{sfx}")
        self.k_norm_route_sort = m.kernel(f"norm_route_sort_{sfx}")
        self.k_norm_route_split = m.kernel(f"norm_route_split_{sfx}")
        self.k_norm_route_sliced = m.kernel(f"norm_route_sliced_{sfx}")
        self.k_norm_route_folded = m.kernel(f"norm_route_folded_{sfx}")
        self.k_out_router = m.kernel(f"gemv_out_router_{sfx}")
        self.norm_route_split = True  # 1-2 tokens over several SMs (False: one block per token, for A/B)
        self.sort_in_router = True  # norm_route_sort where a grouped GEMM follows (False: the sort's own launch, for A/B)
        self.route_sliced = True  # with the sort and Gw: norm_route_sliced (False: norm_route_sort; A/B)
        self._sms = gpu.multiprocessors  # norm_route_sliced's blocks wait for each other: all must be resident
        dev = gpu.torch_device  # norm_route_split's logits and arrival count (the last block resets it)
        self._split_logits = torch.empty(NORM_ROUTE_SPLIT_MAX_TOKENS * ROUTER_MAX_E, dtype=torch.float32, device=dev)
        self._split_count = torch.zeros(1, dtype=torch.int32, device=dev)
        self._sort_count = torch.zeros(1, dtype=torch.int32, device=dev)  # norm_route_sort's, likewise
        # norm_route_sliced's partials of up to 64 tokens at H <= 2048: per (group, slice, token) 32 logits
        # (E padded to a warp) and one sum of squares; and its counts (per token group in, per token
        # group out, groups routed; each put back to 0 in the launch)
        groups, slices = ROUTER_MAX_TOKENS // SLICED_TOKENS, NORM_ROUTE_MAX_H // SLICED_COLS
        self._sliced_part = torch.empty(groups * slices * SLICED_TOKENS * (32 + 1), dtype=torch.float32, device=dev)
        self._sliced_counts = torch.zeros(2 * groups + 1, dtype=torch.int32, device=dev)
        self.pdl = False  # as Kernels.pdl: every kernel here waits for it (router.cu)

    def _go(self, kernel, grid, block, args, **shapes):
        launch(kernel, grid, block, args, shapes=shapes or None, stream=self.stream, pdl=self.pdl)

    # ----- ffn_norm + router ---------------------------------------------------------------------------------
    @staticmethod
    def norm_route_takes(H: int, E: int) -> bool:
        """norm_route runs H/2 threads (whole warps, <= 1024) and routes E <= 64 experts."""
        return H % 64 == 0 and H <= NORM_ROUTE_MAX_H and E <= ROUTER_MAX_E

    def sliced_takes(self, T: int, H: int, E: int) -> bool:
        """norm_route_sliced: 1-64 tokens, H a multiple of its 256-column slices up to NORM_ROUTE_MAX_H,
        E <= 32, and its grid (H / 256 slices x T / 8 token groups) no larger than the SMs, so that
        every block is resident while the others wait for it."""
        return (self.route_sliced and 1 <= T <= ROUTER_MAX_TOKENS and H % SLICED_COLS == 0
                and H <= NORM_ROUTE_MAX_H and E <= SLICED_MAX_E
                and (H // SLICED_COLS) * -(-T // SLICED_TOKENS) <= self._sms)

    def norm_route(self, x, y, w, h, eps: float, gate, bias, k: int, norm_topk: bool, scale: float, idx, wts,
                   sort=None, Gw=None) -> None:
        """x += y (one addend per row); h = rmsnorm(x) * w as Kernels.add_norm; then idx, wts = the
        routing of the fp32 normed rows by `gate` [E, H] as router_topk, in one launch of T blocks.
        With `sort` (tile_rows, sorted_pair, offsets, tiles, num_tiles) the same launch also does
        Kernels.moe_sort for the grouped GEMM of that many rows per tile (norm_route_sort: the last
        block to finish sorts); its tile table must hold kernels.max_gemm_tiles entries. With `sort`
        and Gw (gate * w [E, H] fp32, weights.fold_routers) where sliced_takes, norm_route_sliced
        does the same over (H / 256) x (T / 8) blocks; its fp32 sums run in another order."""
        _dev(x, torch.float32, "x")
        for t, n in ((y, "y"), (w, "ffn_norm weight"), (h, "h")):
            _dev(t, self.dtype, n)
        for t, n in ((gate, "router weight"), (bias, "expert_bias"), (wts, "wts")):
            _dev(t, torch.float32, n)
        _dev(idx, torch.int32, "idx")
        E, H = gate.shape
        T = x.numel() // H
        _need(self.norm_route_takes(H, E), f"norm_route needs H % 64 == 0, H <= {NORM_ROUTE_MAX_H} and E <= "
              f"{ROUTER_MAX_E} (got H={H}, E={E})")
        _need(1 <= k <= min(E, 32), f"k must be 1..{min(E, 32)}")
        _need(x.numel() == T * H and y.numel() >= T * H and h.numel() == T * H and w.numel() == H,
              f"x, h must be [T, {H}], y at least that, w [{H}]")
        _need(idx.numel() == T * k and wts.numel() == T * k, f"idx, wts must be [{T}, {k}]")
        _need(_aligned(gate) and _aligned(x), "x and the router weight need 16-byte rows")
        args = (ptr(x), ptr(y), ptr(w), ptr(h), f32(eps), ptr(gate), ptr(bias), i32(H), i32(E), i32(k),
                i32(bool(norm_topk)), f32(scale), ptr(idx), ptr(wts))
        if sort is not None and Gw is not None and self.sliced_takes(T, H, E):
            _dev(Gw, torch.float32, "Gw")
            _need(tuple(Gw.shape) == (E, H), f"Gw must be [{E}, {H}] as the router weight")
            _need(all(_aligned(t) for t in (y, w, h, Gw)), "norm_route_sliced needs 16-byte rows of y, w, h and Gw")
            grid = (H // SLICED_COLS, -(-T // SLICED_TOKENS))
            self._go(self.k_norm_route_sliced, grid, (SLICED_TOKENS * 32,),
                     (*args[:5], ptr(Gw), *args[6:], i32(T), *self._sort_args(sort, T * k, E),
                      ptr(self._sliced_part), ptr(self._sliced_counts)), T=T, E=E, H=H)
        elif sort is not None:
            self._go(self.k_norm_route_sort, (T,), (H // 2,),
                     (*args, *self._sort_args(sort, T * k, E), ptr(self._sort_count)), T=T, E=E, H=H)
        elif self._split_takes(T, H, y, w, h):  # a warp per expert, H / 256 of them per block
            self._go(self.k_norm_route_split, (-(-E // (H // 256)),), (H // 8,),
                     (*args, i32(T), ptr(self._split_logits), ptr(self._split_count)), T=T, E=E, H=H)
        else:
            self._go(self.k_norm_route, (T,), (H // 2,), args, T=T, E=E, H=H)

    def _sort_args(self, sort, npairs: int, E: int) -> tuple:
        """The sort's arguments for a router that sorts (tile rows and the four sort buffers), checked as
        Kernels.moe_sort checks its own."""
        tile_rows, sorted_pair, offsets, tiles, num_tiles = sort
        check_sort_buffers(sorted_pair, offsets, tiles, num_tiles, npairs, E, self.dtype, tile_rows)
        return (i32(tile_rows), ptr(sorted_pair), ptr(offsets), ptr(tiles), ptr(num_tiles))

    @staticmethod
    def _warp_per_token(T: int, H: int) -> bool:
        """The 1-2 token kernels' layout (norm_route_split, norm_route_folded): H / 8 threads in whole
        warps, 8 columns each, and a warp per token to route it (warp t routes token t)."""
        return T <= NORM_ROUTE_SPLIT_MAX_TOKENS and H % 256 == 0 and H // 256 >= T

    def _split_takes(self, T: int, H: int, *vectors) -> bool:
        """norm_route_split: _warp_per_token, 16-byte rows of y, w and h."""
        return self.norm_route_split and self._warp_per_token(T, H) and all(_aligned(t) for t in vectors)

    # ----- the router folded through the mixer's out_proj ----------------------------------------------------
    def folds_router(self, T: int, H: int, E: int) -> bool:
        """Whether out_router + norm_route_folded can replace out_proj + norm_route: _warp_per_token with
        at most 1024 threads (H <= NORM_ROUTE_MAX_H), E <= 32 (route_token32)."""
        return self._warp_per_token(T, H) and H <= NORM_ROUTE_MAX_H and E <= 32

    def out_router(self, a, w, y, M, Gw, x, r) -> None:
        """y [T, N] = a [T, K] @ w [N, K]^T as gemv, and in the same launch the folded router's
        partial logits r [T, 2E, FOLDED_ROUTER_PARTS]: [a @ M^T, x @ Gw^T] (fp32; M, Gw [E, K] fp32,
        x [T, K] the fp32 residual) over that many slices of K, for norm_route_folded. T <= 2."""
        _need(gemv_takes(a, w, y, self.dtype), f"out_router takes what gemv takes; got a {tuple(a.shape)}, "
              f"w {tuple(w.shape)}")
        for t, n in ((M, "M"), (Gw, "Gw"), (x, "x"), (r, "r")):
            _dev(t, torch.float32, n)
            _need(_aligned(t), f"{n} must start on 16 bytes")
        (T, K), N, E = a.shape, w.shape[0], M.shape[0]
        _need(T <= NORM_ROUTE_SPLIT_MAX_TOKENS and K % (4 * FOLDED_ROUTER_PARTS) == 0, f"out_router takes 1.."
              f"{NORM_ROUTE_SPLIT_MAX_TOKENS} rows and K % {4 * FOLDED_ROUTER_PARTS} == 0")
        _need(tuple(M.shape) == (E, K) and tuple(Gw.shape) == (E, K), f"M and Gw must be [E, {K}]")
        _need(x.numel() >= T * K and r.numel() >= T * 2 * E * FOLDED_ROUTER_PARTS,
              f"x must hold [{T}, {K}] and r [{T}, {2 * E}, {FOLDED_ROUTER_PARTS}]")
        blocks = -(-N // GEMV_WARPS) + -(-2 * E * FOLDED_ROUTER_PARTS // GEMV_WARPS)
        self._go(self.k_out_router, (blocks,), (GEMV_WARPS * 32,),
                 (ptr(a), i32(a.stride(0)), ptr(w), ptr(y), i32(N), i32(K), i32(T), ptr(M), ptr(Gw), ptr(x), ptr(r),
                  i32(E)), a=(T, K), w=(N, K), E=E)

    def norm_route_folded(self, x, y, w, h, eps: float, r, bias, k: int, norm_topk: bool, scale: float, idx,
                          wts) -> None:
        """norm_route's outputs (x += y; h = rmsnorm(x) * w; idx, wts) from the partial logits
        r [T, 2E, FOLDED_ROUTER_PARTS] that out_router left: logit e = rstd * (sum of r[t, e] + sum of
        r[t, E + e]). One block; T <= 2."""
        _dev(x, torch.float32, "x"); _dev(r, torch.float32, "r"); _dev(bias, torch.float32, "expert_bias")
        for t, n in ((y, "y"), (w, "ffn_norm weight"), (h, "h")):
            _dev(t, self.dtype, n)
            _need(_aligned(t), f"{n} must start on 16 bytes")
        _dev(idx, torch.int32, "idx"); _dev(wts, torch.float32, "wts")
        H, E = w.numel(), bias.numel()
        T = x.numel() // H
        _need(self.folds_router(T, H, E) and _aligned(x), f"norm_route_folded takes 1..{NORM_ROUTE_SPLIT_MAX_TOKENS} "
              f"rows, H % 256 == 0, H <= {NORM_ROUTE_MAX_H}, E <= 32 (got T={T}, H={H}, E={E})")
        _need(1 <= k <= E, f"k must be 1..{E}")
        _need(y.numel() >= T * H and h.numel() == T * H and r.numel() >= T * 2 * E * FOLDED_ROUTER_PARTS,
              f"y, h must hold [{T}, {H}], r [{T}, {2 * E}, {FOLDED_ROUTER_PARTS}]")
        _need(idx.numel() == T * k and wts.numel() == T * k, f"idx, wts must be [{T}, {k}]")
        self._go(self.k_norm_route_folded, (1,), (H // 8,),
                 (ptr(x), ptr(y), ptr(w), ptr(h), f32(eps), ptr(r), ptr(bias), i32(H), i32(E), i32(k),
                  i32(bool(norm_topk)), f32(scale), ptr(idx), ptr(wts), i32(T)), T=T, E=E, H=H)

    # ----- router ------------------------------------------------------------------------------------------
    def router_topk(self, h32, gate, bias, k: int, norm_topk: bool, scale: float, idx, wts) -> None:
        """idx, wts [T, k] = route(h32 [T, H] @ gate [E, H]^T): fp32 logits, then the biased top-k
        of kernels.route, in one launch of T blocks."""
        for t, n in ((h32, "h32"), (gate, "router weight"), (bias, "expert_bias"), (wts, "wts")):
            _dev(t, torch.float32, n)
        _dev(idx, torch.int32, "idx")
        E, H = gate.shape
        T = h32.numel() // H
        _need(E <= ROUTER_MAX_E and 1 <= k <= min(E, 32), f"router_topk supports E <= {ROUTER_MAX_E}, k <= 32 "
              f"(got E={E}, k={k})")
        _need(H % 4 == 0 and _aligned(h32) and _aligned(gate), "h32 and the router weight need 16-byte rows")
        _need(h32.numel() == T * H and idx.numel() == T * k and wts.numel() == T * k,
              f"h32 must be [T, {H}] and idx, wts [T, {k}]")
        self._go(self.k_router, (T,), (ROUTER_THREADS,), (ptr(h32), ptr(gate), ptr(bias), i32(H), i32(E), i32(k),
                                                          i32(bool(norm_topk)), f32(scale), ptr(idx), ptr(wts)),
                 T=T, E=E, H=H)
