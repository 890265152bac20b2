"""Launchers for the generation kernels (decode.cu), on torch CUDA tensors, in kernels.py's style:
each method checks dtype, shape and contiguity, then launches on `stream` (the engine's stream,
so the launches are captured into the decode step's CUDA graph with the cuBLAS GEMMs).

Cache layouts (optimized/decode.py allocates them): conv state [B, L-1, H] and K/V [B, nkv, Lmax,
hd] in the engine dtype, lengths [B] int32 on the device.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.gpu import launch, load_module

from .kernels import SUFFIX, _dev, _need, f32, i32, ptr

HERE = Path(__file__).parent
DECODE_KT = 64  # = DKT in decode.cu: keys per tile, and the fewest keys one split takes
DECODE_THREADS = 256  # = DTHREADS
DECODE_MAXG = 16  # = DMAXG: query heads per kv head
DECODE_HEAD_DIMS = (16, 32, 64)


ARGMAX_COLUMNS = 2048  # logits per argmax block when a row is split


class ArgmaxScratch:
    """Partial results and per-row arrival counters of the split argmax (argmax_rows in decode.cu);
    the counters start at 0 and the last block of each row puts them back."""

    def __init__(self, B: int, V: int, device):
        self.nsplit = max(1, min(1024, -(-V // ARGMAX_COLUMNS)))
        self.part_v = torch.empty((B, self.nsplit), dtype=torch.float32, device=device)
        self.part_i = torch.empty((B, self.nsplit), dtype=torch.int32, device=device)
        self.count = torch.zeros(B, dtype=torch.int32, device=device)


def attention_splits(batch: int, nkv: int, max_len: int, sms: int) -> int:
    """Chunks decode attention splits each (sequence, kv head) into: enough blocks for ~2 per SM
    at batch 1, never more than the cache has tiles (a split takes at least DECODE_KT keys)."""
    _need(min(batch, nkv, max_len, sms) >= 1, "batch, nkv, max_len and sms must be >= 1")
    want = -(-2 * sms // (batch * nkv))
    return max(1, min(want, -(-max_len // DECODE_KT)))


class DecodeKernels:
    def __init__(self, gpu, dtype: torch.dtype, stream=None):
        _need(dtype in SUFFIX, f"dtype {dtype} not supported; use torch.float32 or torch.bfloat16")
        self.dtype, self.stream, sfx = dtype, stream, SUFFIX[dtype]
        m = load_module(HERE / "decode.cu", gpu)
        self.k_conv_step = m.kernel(f"conv_step_{sfx}")
        self.k_conv_fill = m.kernel(f"conv_state_fill_{sfx}")
        self.k_rope_step = m.kernel(f"qk_norm_rope_step_{sfx}")
        self.k_attn = {hd: m.kernel(f"decode_attention_{sfx}_hd{hd}") for hd in DECODE_HEAD_DIMS}
        self.k_combine = m.kernel(f"decode_attention_combine_{sfx}")
        self.k_advance = m.kernel("advance_lengths")
        self.k_argmax = m.kernel("argmax_rows")
        self.pdl = False  # as Kernels.pdl: every kernel of the decode step waits for it (decode.cu)
        self.pdl_kernels = {self.k_conv_step, self.k_rope_step, *self.k_attn.values(), self.k_combine,
                            self.k_advance, self.k_argmax}

    def _go(self, kernel, grid, block, args, **shapes):
        launch(kernel, grid, block, args, shapes=shapes or None, stream=self.stream,
               pdl=self.pdl and kernel in self.pdl_kernels)

    def _lengths(self, lengths, B: int) -> None:
        _dev(lengths, torch.int32, "lengths")
        _need(lengths.numel() == B, f"lengths has {lengths.numel()} entries for {B} sequences")

    # ----- ShortConv -----------------------------------------------------------------------------------
    def conv_step(self, bcx, conv_w, state, y) -> None:
        """y = C * conv(state, B*x) for one token per sequence; state takes B*x (oldest dropped)."""
        for t, n in ((bcx, "bcx"), (conv_w, "conv_w"), (state, "state"), (y, "y")):
            _dev(t, self.dtype, n)
        H, L = conv_w.shape
        _need(state.dim() == 3 and state.shape[1:] == (L - 1, H), f"state must be [B, {L - 1}, {H}], got "
              f"{tuple(state.shape)}")
        B = state.shape[0]
        _need(bcx.numel() == B * 3 * H, f"bcx must hold [{B}, {3 * H}]")
        _need(y.numel() >= B * H, f"y must hold [{B}, {H}]")
        n = B * H
        self._go(self.k_conv_step, ((n + 255) // 256,), (256,), (ptr(bcx), ptr(conv_w), ptr(state), ptr(y), i32(B),
                                                                i32(H), i32(L)), B=B, H=H, L=L)

    def conv_state_fill(self, bcx, lengths, state, seq_len: int) -> None:
        """state[b] = B*x of sequence b's last L-1 real positions (zeros before its start), from the
        prefill's in_proj output bcx [B*seq_len, 3H] of right-padded prompts."""
        _dev(bcx, self.dtype, "bcx"); _dev(state, self.dtype, "state")
        _need(state.dim() == 3, "state must be [B, L-1, H]")
        B, W, H = state.shape
        self._lengths(lengths, B)
        _need(bcx.numel() == B * seq_len * 3 * H, f"bcx must hold [{B} * {seq_len}, {3 * H}]")
        if W == 0:  # conv_L_cache = 1: no state
            return
        n = B * W * H
        self._go(self.k_conv_fill, ((n + 255) // 256,), (256,), (ptr(bcx), ptr(lengths), ptr(state), i32(B),
                                                                i32(seq_len), i32(H), i32(W + 1)), B=B, S=seq_len, H=H)

    # ----- attention -----------------------------------------------------------------------------------
    def qk_norm_rope_step(self, qkv, qw, kw, lengths, q, kc, vc, nh, nkv, hd, eps, theta) -> None:
        """q [B, nh, hd] normed and rotated at position lengths[b]; k, v appended to the caches there."""
        for t, n in ((qkv, "qkv"), (qw, "q_norm"), (kw, "k_norm"), (q, "q"), (kc, "k cache"), (vc, "v cache")):
            _dev(t, self.dtype, n)
        _need(kc.dim() == 4 and kc.shape[1] == nkv and kc.shape[3] == hd and vc.shape == kc.shape,
              f"caches must be [B, {nkv}, Lmax, {hd}], got {tuple(kc.shape)} and {tuple(vc.shape)}")
        B, Lmax = kc.shape[0], kc.shape[2]
        self._lengths(lengths, B)
        _need(qkv.numel() == B * (nh + 2 * nkv) * hd, f"qkv must hold [{B}, {(nh + 2 * nkv) * hd}]")
        _need(q.numel() >= B * nh * hd, f"q must hold [{B}, {nh}, {hd}]")
        warps = B * (nh + 2 * nkv)
        self._go(self.k_rope_step, ((warps * 32 + 255) // 256,), (256,),
                 (ptr(qkv), ptr(qw), ptr(kw), ptr(lengths), ptr(q), ptr(kc), ptr(vc), i32(B), i32(nh), i32(nkv),
                  i32(hd), i32(Lmax), f32(eps), f32(theta)), B=B, heads=(nh, nkv, hd), Lmax=Lmax)

    def decode_attention(self, q, kc, vc, lengths, o, part_o, part_ml) -> None:
        """o [B, nh * hd] = softmax(q K^T / sqrt(hd)) V over cache positions 0..lengths[b], GQA, in
        part_o.shape[2] splits per (sequence, kv head) merged by a second launch."""
        _dev(q, self.dtype, "q")
        nh = part_o.shape[1] if part_o.dim() == 4 else 0
        B = kc.shape[0] if kc.dim() == 4 else 0
        _need(q.numel() == B * nh * kc.shape[-1], f"q must hold [{B}, {nh}, {kc.shape[-1]}]")
        self._attention(q, kc, vc, lengths, o, part_o, part_ml, (ptr(None),) * 3 + (f32(0.0), f32(0.0)))

    def qkv_decode_attention(self, qkv, qw, kw, lengths, kc, vc, o, part_o, part_ml, eps: float, theta: float) -> None:
        """qk_norm_rope_step and decode_attention in one pass-1 launch: the queries normed and rotated
        from the qkv projection [B, (nh + 2 nkv) hd] inside the attention blocks, the new k and v
        written to the caches at lengths[b] by the split that reads them (decode.cu). The same
        values as the two launches."""
        for t, n in ((qkv, "qkv"), (qw, "q_norm"), (kw, "k_norm")):
            _dev(t, self.dtype, n)
        B, nkv, hd = (kc.shape[0], kc.shape[1], kc.shape[3]) if kc.dim() == 4 else (0, 0, 0)
        nh = part_o.shape[1] if part_o.dim() == 4 else 0
        _need(qkv.numel() == B * (nh + 2 * nkv) * hd, f"qkv must hold [{B}, {(nh + 2 * nkv) * hd}]")
        _need(qw.numel() == hd and kw.numel() == hd, f"q_norm and k_norm must be [{hd}]")
        self._attention(None, kc, vc, lengths, o, part_o, part_ml, (ptr(qkv), ptr(qw), ptr(kw), f32(eps), f32(theta)))

    def _attention(self, q, kc, vc, lengths, o, part_o, part_ml, step: tuple) -> None:
        for t, n in ((kc, "k cache"), (vc, "v cache"), (o, "o")):
            _dev(t, self.dtype, n)
        _dev(part_o, torch.float32, "part_o"); _dev(part_ml, torch.float32, "part_ml")
        _need(kc.dim() == 4 and vc.shape == kc.shape, "caches must be [B, nkv, Lmax, hd], both the same shape")
        B, nkv, Lmax, hd = kc.shape
        self._lengths(lengths, B)
        _need(hd in self.k_attn, f"head_dim {hd} not built; decode.cu has {DECODE_HEAD_DIMS}")
        _need(part_o.dim() == 4 and part_o.shape[0] == B and part_o.shape[3] == hd,
              f"part_o must be [{B}, nh, nsplit, {hd}], got {tuple(part_o.shape)}")
        nh, nsplit = part_o.shape[1], part_o.shape[2]
        _need(nh % nkv == 0 and nh // nkv <= DECODE_MAXG, f"{nh} query heads over {nkv} kv heads: the GQA group "
              f"must be whole and at most {DECODE_MAXG}")
        _need(o.numel() >= B * nh * hd, f"o must hold [{B}, {nh}, {hd}]")
        _need(tuple(part_ml.shape) == (B, nh, nsplit, 2), f"part_ml must be [{B}, {nh}, {nsplit}, 2]")
        self._go(self.k_attn[hd], (nsplit, nkv, B), (DECODE_THREADS,),
                 (ptr(q), ptr(kc), ptr(vc), ptr(lengths), ptr(part_o), ptr(part_ml), ptr(o), i32(nh), i32(nkv),
                  i32(Lmax), i32(nsplit), f32(hd ** -0.5), *step), B=B, heads=(nh, nkv, hd), Lmax=Lmax, nsplit=nsplit,
                 fused=q is None)
        if nsplit == 1:  # pass 1 wrote o (decode.cu)
            return
        warps = B * nh
        self._go(self.k_combine, ((warps * 32 + 255) // 256,), (256,),
                 (ptr(part_o), ptr(part_ml), ptr(lengths), ptr(o), i32(B), i32(nh), i32(hd), i32(Lmax), i32(nsplit)),
                 B=B, nh=nh, nsplit=nsplit)

    def argmax_rows(self, logits, ids, scratch: "ArgmaxScratch | None" = None, advance=None) -> None:
        """ids[r] = argmax of fp32 logits[r, :] (lowest index on ties, as numpy), on the device; with
        `scratch` (sized for these logits) each row is split over scratch.nsplit blocks; with
        `advance` (the lengths, int32 [rows]) also advance_lengths' work in the same launch."""
        _dev(logits, torch.float32, "logits")
        _dev(ids, torch.int32, "ids")
        _need(logits.dim() == 2 and ids.numel() == logits.shape[0],
              f"ids must hold one entry per row of logits {tuple(logits.shape)}, got {ids.numel()}")
        B, V = logits.shape
        if advance is not None:
            self._lengths(advance, B)
        nsplit = 1 if scratch is None else scratch.nsplit
        if scratch is not None:
            _need(tuple(scratch.part_v.shape) == (B, nsplit) and scratch.count.numel() == B,
                  f"argmax scratch is for {tuple(scratch.part_v.shape)}, not {B} rows")
        args = (ptr(logits), ptr(ids), i32(V), *(ptr(None),) * 3) if scratch is None else \
            (ptr(logits), ptr(ids), i32(V), ptr(scratch.part_v), ptr(scratch.part_i), ptr(scratch.count))
        self._go(self.k_argmax, (nsplit, B), (1024,), (*args, i32(nsplit), ptr(advance)), B=B, V=V)

    def advance_lengths(self, lengths) -> None:
        _dev(lengths, torch.int32, "lengths")
        B = lengths.numel()
        self._go(self.k_advance, ((B + 255) // 256,), (256,), (ptr(lengths), i32(B)), B=B)
