"""The buffers of one forward shape (Plan) and CUDA graph capture (capturing), for the optimized
engine's forward (engine.py) and its decode step (generation.py)."""
from __future__ import annotations

import contextlib
import gc

import torch

from .kernels import max_gemm_tiles
from .logits_download import LogitsDownload
from .router import FOLDED_ROUTER_PARTS


@contextlib.contextmanager
def capturing(g: torch.cuda.CUDAGraph, stream):
    """torch.cuda.graph with Python's garbage collector paused: a collection during the capture can
    free an earlier engine's PyCUDA module, and its cuModuleUnload invalidates the capture (seen in
    the GPU tests, one engine per test)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(g, stream=stream, capture_error_mode="thread_local"):
            yield
    finally:
        if was_enabled:
            gc.enable()


class Plan:
    """Every buffer of one forward shape (allocated once), and its CUDA graph once captured."""

    def __init__(self, cfg, B: int, S: int, dtype, dev, moe_variant, x3_cols: int = 0):
        T, H, k = B * S, cfg.hidden_size, cfg.num_experts_per_tok
        self.moe_variant = moe_variant  # kernels.MoeVariant: its tile rows size the tile table
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.B, self.S, self.T = B, S, T
        self.npairs = T * k
        e = lambda *shape, dt=dtype: torch.empty(shape, dtype=dt, device=dev)  # noqa: E731
        self.ids = e(T, dt=torch.int32)
        self.x = e(T, H, dt=torch.float32)
        self.h = e(T, H)
        self.y = e(T * max(k, 1), H)  # mixer/dense output (first T rows) or the MoE's per-slot outputs
        self.bcx = e(T, 3 * H)
        self.cy = e(T, H)
        self.qkv = e(T, (nh + 2 * nkv) * hd)
        self.q, self.k, self.v = e(B, nh, S, hd), e(B, nkv, S, hd), e(B, nkv, S, hd)
        self.o = e(T, nh * hd)
        self.gu = e(T, 2 * cfg.intermediate_size)
        self.act_dense = e(T, cfg.intermediate_size)
        self.h32 = e(T, H, dt=torch.float32)  # fp32 router input
        self.router = e(T, cfg.num_experts, dt=torch.float32)
        # the folded router's partial logits (1-2 tokens; RouterKernels.out_router)
        self.r = e(min(T, 2), 2 * cfg.num_experts, FOLDED_ROUTER_PARTS, dt=torch.float32)
        self.idx = e(T, k, dt=torch.int32)
        self.wts = e(T, k, dt=torch.float32)
        self.sorted_pair = e(self.npairs, dt=torch.int32)
        self.offsets = e(cfg.num_experts + 1, dt=torch.int32)
        self.tiles = e(3 * max_gemm_tiles(self.npairs, cfg.num_experts, dtype, moe_variant.tile_rows), dt=torch.int32)
        self.num_tiles = e(1, dt=torch.int32)
        self.act = e(self.npairs, cfg.moe_intermediate_size)
        self.logits = e(B, cfg.vocab_size)
        self.logits_f32 = self.logits if dtype == torch.float32 else e(B, cfg.vocab_size, dt=torch.float32)
        self.ids_host = torch.empty((B, S), dtype=torch.int32, pin_memory=True)
        self.logits_host = torch.empty((B, cfg.vocab_size), dtype=torch.float32, pin_memory=True)
        self.download = LogitsDownload(self.logits_host)
        # the 3xTF32 GEMMs' split activations ([hi | lo] of up to T rows of the widest K); None: plain GEMMs
        self.x3 = e(T * x3_cols, dt=torch.float32) if x3_cols else None
        self.graph = None

