"""The optimized engine (issue 10): the whole [B, S] batch in one forward, weights resident in the
engine dtype, the project's own PyCUDA kernels for everything but the plain dense GEMMs, and the
forward replayed from a CUDA graph per (B, S).

| step                       | how                                                                   |
|----------------------------|-----------------------------------------------------------------------|
| embedding                  | gather kernel into the fp32 residual stream x                         |
| residual add + RMSNorm     | one kernel per norm (add_norm): x += sum of addends; h = norm(x) * w  |
| ShortConv                  | in_proj (cuBLAS), fused B*x / causal conv3 / C* kernel, out_proj      |
| attention                  | fused qkv GEMM (cuBLAS), q/k norm + RoPE kernel, flash-style causal   |
|                            | GQA kernel (bf16 head_dim 64: tensor cores, attention_mma.cu; else    |
|                            | attention.cu), out_proj (cuBLAS)                                      |
| dense FFN (layers < 2)     | fused w1|w3 GEMM (cuBLAS), silu_mul kernel, w2 (cuBLAS)               |
| MoE                        | router GEMM (cuBLAS), route kernel (fp32 biased top-k), sort of the   |
|                            | (token, slot) pairs by expert on the device, grouped gate/up GEMM     |
|                            | with SiLU*up in its epilogue, grouped down GEMM that applies the      |
|                            | routing weight; the k slots are summed by the next add_norm. The      |
|                            | GEMM variant is picked per forward shape from its token count:        |
|                            | weight-streaming mma.sync tiles of 16-64 rows for small batches,      |
|                            | 128-row tiles for large ones, on the H100 with wgmma (moe_wgmma.cu;   |
|                            | kernels.moe_variant_for)                                              |
| LM head                    | last position of each sequence only (cuBLAS)                          |

At 1-4 tokens (the batch-1 decode step) the projections, the MoE and the LM head are weight-
streaming GEMVs instead (optimized/gemv.py: one warp per weight row, each MoE pair its own GEMV
up to 2 tokens, no sort), and up to 64 tokens a MoE layer's ffn_norm, router GEMM and routing
are one launch (router.py's norm_route; where H > 2048, add_norm then router_topk). At 1-2 tokens (decode)
the router is folded through the mixer's out_proj instead (weights.fold_routers): the out_proj
launch also computes the logits' two partial sums and a one-block norm_route_folded only scales
and routes them (fold_router). Option gemv=False keeps add_norm, cuBLAS and the grouped GEMM there
(for comparison).

cuBLAS (torch.mm) does the plain dense GEMMs; in fp32 with TF32 off, in bf16 with fp32
accumulation (reduced-precision reductions off). With option tf32x3 (fp32, off by default),
from TF32X3_MIN_ROWS rows on the dense projections (conv in/out, attention qkv/out, dense FFN
w13/w2; not the router or the LM head) run as 3xTF32 instead (optimized/split_tf32.py): the
activations split by a kernel into a TF32 hi and an fp32 lo part, cuBLAS GEMMs on TF32 tensor
cores against the weights' split made at load (2x their fp32 bytes more): the two small
products in one, the big one in tf32x3_chunks K chunks (the tensor core's truncating
accumulation, kept short); TF32 is on only around those calls. H100, 64 x 16: 98.2 -> 91.1 ms
per forward. Off by default because the job's answers on a GPU machine come from the float32
GPU reference, whose dense GEMMs are fp32 cuBLAS as the plain path's are: on 256 prompts of 16
tokens that reference and the plain engine both sit on the float64-wrong side of one routing
near-tie (0.13 off float64), 3xTF32 on the right side, so against float32 answers it is the one
INVALID (against float64: VALID, max error 3.2e-5): results/h100-session7/fp32-dense-notes.md.
The residual stream stays fp32 in both dtypes (HF keeps it bf16: a deliberate, more accurate
difference). The engine's stream is a PyCUDA stream wrapped for torch (ExternalStream), so both
libraries' work is ordered on it and captured into one torch.cuda.CUDAGraph. Options: dtype
"bf16" (default) | "fp32", max_batch (default 256), max_tokens per internal forward (default
16384; larger calls are split by sequences), graphs (default True), moe_variant (default None:
chosen by token count; or a name from kernels.MOE_VARIANTS, for every shape), max_len (default
4096: cache positions per sequence for generation), gemv (default True: the small-batch kernels
above), pdl (default True on sm_90: the kernels that support it are launched with programmatic
dependent launch, harness/gpu/pdl.py, so each starts while the one before it finishes), tf32x3
(default False; fp32 only, ignored in bf16: the 3xTF32 dense GEMMs above, `--option
tf32x3=true`), tf32x3_min_rows (default split_tf32.TF32X3_MIN_ROWS: the fewest rows of a GEMM,
and tokens of a plan, that take 3xTF32), tf32x3_chunks (default split_tf32.TF32X3_CHUNKS).

Generation (issue 12, optimized/decode.py): `prefill(prompts)` runs this forward body over the
prompts (an int [B, S] array, or a list of 1-D prompts of different lengths, right-padded) and
keeps K/V and conv state in caches sized from (B, max_len); `decode(tokens)` runs one step for
T = B tokens (conv_step; qkv GEMM + qk_norm_rope_step + flash-decoding attention + out GEMM; the
same FFN/MoE, norms and LM head helpers as the forward), eager the first time and then replayed
from a CUDA graph captured per decode plan (one batch size at a time). `greedy_steps(ids, n)`
streams n greedy steps: each step's argmax is the next step's input on the device, so the next
step is queued before the host reads the current one's ids. Option stream_decode (default True)
lets harness.generation's greedy_generate use it; False keeps one decode_greedy call per step
(`--option stream_decode=false`, to compare).
"""
from __future__ import annotations

import contextlib
import gc
from collections import OrderedDict

import numpy as np
import torch

from harness.engine import Engine
from harness.gpu import get_context, release_context
from harness.reference import check_tokens

from .decode import DecodePlan, PrefillFill, check_room, decode_body, pad_prompts
from .decode_kernels import DecodeKernels, attention_splits
from .gemv import GEMV_MAX_TOKENS, MOE_GEMV_MAX_PAIRS, GemvKernels
from .kernels import Kernels, max_gemm_tiles, moe_variant_for
from .logits_download import LogitsDownload
from .router import FOLDED_ROUTER_PARTS, ROUTER_MAX_TOKENS, RouterKernels
from .split_tf32 import TF32X3_CHUNKS, TF32X3_MIN_ROWS, SplitTF32
from .weights import PackedWeights

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MAX_PLANS = 4  # (B, S) shapes whose buffers and graph are kept
STREAM_OPEN = ("a streamed generation (greedy_steps) is still open: exhaust it or close() it before the next "
               "decode, prefill or stream")


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


class OptimizedEngine(Engine):
    name = "optimized"
    phase = None
    supports_generation = True

    def __init__(self, checkpoint, device=0, dtype: str = "bf16", max_batch: int = 256, max_tokens: int = 16384,
                 graphs: bool = True, progress: bool = True, moe_variant: str | None = None, max_len: int = 4096,
                 gemv: bool = True, pdl: bool = True, stream_decode: bool = True, tf32x3: bool = False,
                 tf32x3_min_rows: int = TF32X3_MIN_ROWS, tf32x3_chunks: int = TF32X3_CHUNKS, **options):
        super().__init__(checkpoint, device, **options)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported by the optimized engine; choose bf16 or fp32")
        if int(max_batch) < 1 or int(max_tokens) < 1 or int(max_len) < 1:
            raise ValueError("max_batch, max_tokens and max_len must be >= 1")
        self.dtype, self.tdtype = dtype, DTYPES[dtype]
        self.max_batch, self.max_tokens, self.use_graphs = int(max_batch), int(max_tokens), bool(graphs)
        self.max_len = int(max_len)
        self.use_gemv = bool(gemv)
        self.fold_router = True  # 1-2 tokens: the MoE router folded through out_proj (False: norm_route; for A/B)
        self.stream_decode = bool(stream_decode)  # harness.generation's greedy_generate streams (greedy_steps)
        self._closed = False
        self.DK: DecodeKernels | None = None  # compiled at the first prefill
        self._dec: DecodePlan | None = None  # the current generation's caches
        self.gpu = get_context(device)
        self.tdev = torch.device("cuda", self.gpu.index)
        torch.cuda.set_device(self.tdev)
        # fp32 must stay fp32 (the job's 1e-3); bf16 GEMMs accumulate in fp32 without reduced-precision
        # split-K reductions. These are process-wide torch settings.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        self.stream = self.gpu.cuda.Stream()
        self.tstream = torch.cuda.ExternalStream(self.stream.handle, device=self.tdev)
        self.K = Kernels(self.gpu, self.tdtype, self.stream)
        self.G = GemvKernels(self.gpu, self.tdtype, self.stream)
        self.R = RouterKernels(self.gpu, self.tdtype, self.stream)
        # programmatic dependent launch needs sm_90 (griddepcontrol); the kernels that wait for it
        # start while the kernel before them finishes (launch latency hidden, weights prefetched)
        self.use_pdl = bool(pdl) and int(self.gpu.arch.split("_")[1]) >= 90
        self.K.pdl = self.G.pdl = self.R.pdl = self.use_pdl
        self.forced_moe_variant = None
        self.set_moe_variant(moe_variant)
        # 3xTF32 dense GEMMs (fp32 only): the split kernel, the weights' split, the current plan's scratch
        self.X3 = SplitTF32(self.gpu, self.stream, tf32x3_chunks) if tf32x3 and dtype == "fp32" else None
        self.tf32x3_min_rows = max(1, int(tf32x3_min_rows))
        self._x3: torch.Tensor | None = None
        self.W = PackedWeights(checkpoint, self.tdtype, self.tdev, self.counters, progress, tf32x3=self.X3 is not None)
        if self.use_gemv:
            self.W.fold_routers()
        torch.cuda.synchronize(self.tdev)
        self.counters.extra["resident_weight_bytes"] = self.W.nbytes()
        self.head_out_fp32 = self._probe_mm_out_dtype()
        self.counters.extra["lm_head_fp32_output"] = self.head_out_fp32
        self.plans: OrderedDict[tuple[int, int], Plan] = OrderedDict()
        self.graph_error: str | None = None

    def _probe_mm_out_dtype(self) -> bool:
        """bf16 LM head with fp32 output (torch.mm out_dtype, newer torch): logits are not rounded
        to bf16. Older torch: bf16 logits, as HF returns them."""
        if self.tdtype == torch.float32:
            return False
        try:
            a = torch.ones((2, 8), dtype=self.tdtype, device=self.tdev)
            out = torch.empty((2, 4), dtype=torch.float32, device=self.tdev)
            torch.mm(a, torch.ones((8, 4), dtype=self.tdtype, device=self.tdev), out_dtype=torch.float32, out=out)
            torch.cuda.synchronize(self.tdev)
            return bool(torch.all(out == 8))
        except (TypeError, RuntimeError):
            return False

    # ----- the forward's device work (captured into a graph) ----------------------------------------
    def _mm(self, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
        """out = a @ w^T: the GEMV for a few rows, 3xTF32 for a split weight from tf32x3_min_rows
        rows on (into the current plan's scratch, self._x3), else plain cuBLAS."""
        if self.use_gemv and self.G.takes(a, w, out):
            self.G.gemv(a, w, out)
            return
        wx = self.W.split_of(w) if self._x3 is not None and a.shape[0] >= self.tf32x3_min_rows else None
        if wx is not None:
            self.X3.mm(a, wx, out, self._x3)
        else:
            torch.mm(a, w.t(), out=out)

    def _x3_cols(self, T: int) -> int:
        """Scratch columns per token of a plan of T tokens for the 3xTF32 GEMMs (0: none)."""
        return 2 * self.W.split_max_k if self.X3 is not None and T >= self.tf32x3_min_rows else 0

    def _moe_gemv(self, P: Plan) -> bool:
        """The MoE of P runs as one GEMV per (token, expert) pair (no sort; a forced grouped GEMM
        variant wins)."""
        return self.use_gemv and self.forced_moe_variant is None and P.npairs <= MOE_GEMV_MAX_PAIRS

    def _body(self, P: Plan, fill=None) -> None:
        """The forward of P's [B, S] token ids -> last-position logits. With `fill` (a
        decode.PrefillFill) it is a prefill: K/V and conv state go to the generation caches and
        the LM head runs on each sequence's own last real row."""
        cfg, K = self.config, self.K
        H = cfg.hidden_size
        nh, nkv, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.norm_eps

        def mix(i: int, L: dict) -> None:
            if cfg.is_attention(i):
                self._mm(P.h, L["qkv"], P.qkv)
                K.qk_norm_rope(P.qkv, L["q_norm"], L["k_norm"], P.q, P.k, P.v, P.S, nh, nkv, hd, eps, cfg.rope_theta)
                if fill is not None:
                    fill.keep_kv(i, P.k, P.v)
                K.attention(P.q, P.k, P.v, P.o, P.B, P.S, nh, nkv, hd)
                self._out_proj(i, L, P.o, P)
            else:
                self._mm(P.h, L["in"], P.bcx)
                if fill is not None:
                    fill.keep_conv(i, P.bcx)
                K.shortconv(P.bcx, L["conv_w"], P.cy, P.S)
                self._out_proj(i, L, P.cy, P)

        self._layers(P, mix)
        if fill is None:
            last = P.h.view(P.B, P.S, H)[:, P.S - 1, :]  # the LM head runs on the last position only
        else:
            last = fill.last_rows(P.h)
        self._lm_head(last, P)

    def _layers(self, P: Plan, mix) -> None:
        """Embedding, every layer (add_norm, the mixer `mix(i, L)` writing P.y[:T], the FFN) and the
        final norm into P.h: the part the forward and the decode step share."""
        cfg, K, W = self.config, self.K, self.W
        self._x3 = P.x3  # _mm's scratch for this plan (the LM head after this runs on the same plan)
        K.embedding_norm(P.ids, W.embed, P.x, W.layers[0]["op_norm"], P.h, cfg.norm_eps)  # + layer 0's op_norm
        nadd = 0
        for i, L in enumerate(W.layers):
            if i:
                K.add_norm(P.x, P.y, nadd, L["op_norm"], P.h, cfg.norm_eps)
            mix(i, L)
            nadd = self._ffn(P, L, i)
        K.add_norm(P.x, P.y, nadd, W.final_norm, P.h, cfg.norm_eps)

    def _ffn(self, P: Plan, L: dict, i: int) -> int:
        """Layer i's residual add + ffn_norm, then its MoE or dense SwiGLU into P.y. Returns how many
        addends per token P.y holds for the next add_norm (k for the MoE's slots, else 1)."""
        cfg, K = self.config, self.K
        k, T = cfg.num_experts_per_tok, P.T
        moe = cfg.is_moe(i)
        self._ffn_norm(P, L, moe)
        if moe:
            if self._moe_gemv(P):
                self.G.moe_gateup(P.h, L["w13"], P.act, P.idx, k)
                self.G.moe_down(P.act, L["w2"], P.y, P.idx, P.wts)
                return k
            v = P.moe_variant.name
            K.moe_sort(P.idx, cfg.num_experts, P.sorted_pair, P.offsets, P.tiles, P.num_tiles, variant=v)
            K.moe_gateup(P.h, L["w13"], P.act, P.sorted_pair, P.tiles, P.num_tiles, P.npairs, k, variant=v)
            K.moe_down(P.act, L["w2"], P.y, P.sorted_pair, P.tiles, P.num_tiles, P.wts, P.npairs, variant=v)
            return k
        if self.use_gemv and T <= GEMV_MAX_TOKENS:  # gate/up GEMV with SiLU*up in its epilogue
            self.G.moe_gateup(P.h, L["w13"][None], P.act_dense, None, 1)
        else:
            self._mm(P.h, L["w13"], P.gu)
            K.silu_mul(P.gu, P.act_dense)
        self._mm(P.act_dense, L["w2"], P.y[:T])
        return 1

    def _folded(self, P: Plan, L: dict) -> bool:
        """Whether layer L's router runs folded through its out_proj (optimized/router.cu's
        norm_route_folded): a MoE layer of 1-2 tokens on the GEMV path."""
        cfg = self.config
        return ("router_M" in L and self.fold_router and self.use_gemv
                and self.R.folds_router(P.T, cfg.hidden_size, cfg.num_experts)
                and self.G.takes(P.cy, L["out"], P.y[:P.T]))

    def _out_proj(self, i: int, L: dict, a: torch.Tensor, P: Plan) -> None:
        """The mixer's out_proj of a [T, H] into P.y; where the router is folded, the same launch
        leaves its partial logits in P.r."""
        if self._folded(P, L):
            self.R.out_router(a, L["out"], P.y[:P.T], L["router_M"], L["router_Gw"], P.x, P.r[:P.T])
        else:
            self._mm(a, L["out"], P.y[:P.T])

    def _ffn_norm(self, P: Plan, L: dict, moe: bool) -> None:
        """x += the mixer's output; h = ffn_norm(x); on a MoE layer also the routing (P.idx, P.wts):
        one launch up to 64 tokens (norm_route), else add_norm then the router."""
        cfg, K, R, T = self.config, self.K, self.R, P.T
        route = (cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor, P.idx, P.wts)
        small = moe and self.use_gemv and T <= ROUTER_MAX_TOKENS
        if self._folded(P, L):  # the logits' partial sums came with out_proj (_out_proj)
            R.norm_route_folded(P.x, P.y[:T], L["ffn_norm"], P.h, cfg.norm_eps, P.r[:T], L["bias"], *route)
            return
        if small and R.norm_route_takes(cfg.hidden_size, cfg.num_experts):
            R.norm_route(P.x, P.y[:T], L["ffn_norm"], P.h, cfg.norm_eps, L["gate"], L["bias"], *route)
            return
        K.add_norm(P.x, P.y, 1, L["ffn_norm"], P.h, cfg.norm_eps, h32=P.h32 if moe else None)
        if small:
            R.router_topk(P.h32, L["gate"], L["bias"], *route)
        elif moe:
            self._mm(P.h32, L["gate"], P.router)
            K.route(P.router, L["bias"], *route)

    def _lm_head(self, rows: torch.Tensor, P: Plan) -> None:
        """Tied LM head on the final-normed `rows` [B, H] -> P.logits_f32 [B, V]."""
        W = self.W
        if self.use_gemv and self.G.takes(rows, W.embed, P.logits_f32):  # fp32 logits straight from the GEMV
            self.G.gemv(rows, W.embed, P.logits_f32)
        elif self.head_out_fp32 and P.logits_f32 is not P.logits:
            torch.mm(rows, W.embed.t(), out_dtype=torch.float32, out=P.logits_f32)
        else:
            self._mm(rows, W.embed, P.logits)
            if P.logits_f32 is not P.logits:
                P.logits_f32.copy_(P.logits)

    # ----- plans and graphs ----------------------------------------------------------------------------
    def set_moe_variant(self, name: str | None) -> None:
        """Use grouped GEMM variant `name` for every shape from now on (None: by token count).
        Drops the plans (and graphs) built for the previous choice."""
        if name is not None:
            self.K.moe_variant(name)  # refuses an unknown name, listing the available ones
        self.forced_moe_variant = name
        if getattr(self, "plans", None):
            self.synchronize()
            self.plans.clear()
        if getattr(self, "_dec", None) is not None:  # its MoE buffers were sized for the old choice
            self.synchronize()
            self._dec = None

    def moe_variant_name(self, tokens: int) -> str:
        return self.forced_moe_variant or moe_variant_for(self.tdtype, tokens, self.K.arch)

    def _plan(self, B: int, S: int) -> Plan:
        key = (B, S)
        if key in self.plans:
            self.plans.move_to_end(key)
            return self.plans[key]
        while len(self.plans) >= MAX_PLANS:
            self.plans.popitem(last=False)
        P = Plan(self.config, B, S, self.tdtype, self.tdev, self.K.moe_variant(self.moe_variant_name(B * S)),
                 self._x3_cols(B * S))
        self.plans[key] = P
        return P

    def _capture(self, P: Plan) -> None:
        """Warm up eagerly once (cuBLAS handles, heuristics), then capture the forward's launches."""
        with torch.cuda.stream(self.tstream):
            self._body(P)
        self.tstream.synchronize()
        if not self.use_graphs or self.graph_error is not None:
            return
        g = torch.cuda.CUDAGraph()
        try:
            with capturing(g, self.tstream):
                self._body(P)
            P.graph = g
        except Exception as e:  # keep a working (eager) engine and say why
            self.graph_error = f"{type(e).__name__}: {e}"
            print(f"optimized: CUDA graph capture failed, running eagerly: {self.graph_error}")

    def _forward_chunk(self, tokens: np.ndarray) -> np.ndarray:
        B, S = tokens.shape
        P = self._plan(B, S)
        P.ids_host.numpy()[:] = tokens
        with torch.cuda.stream(self.tstream):
            P.ids.view(B, S).copy_(P.ids_host, non_blocking=True)
            if P.graph is None and self.use_graphs and self.graph_error is None:
                self._capture(P)  # first call of this shape: warm-up + capture, ids already on the device
            if P.graph is not None:
                P.graph.replay()
            else:
                self._body(P)
            P.download.enqueue(P.logits_f32)
        return self._collect_logits(P, tokens)

    def _collect_logits(self, P: Plan, tokens: np.ndarray) -> np.ndarray:
        """The logits of the forward just queued (P.download enqueued), as a new array; counts the copies."""
        P.download.prepare()  # the answer's host pages, touched while the GPU runs the forward
        logits = P.download.collect()
        self._count_io(tokens.nbytes, P.logits_host.numel() * 4, copies=len(P.download.chunks))
        return logits

    def profile(self, tokens: np.ndarray, on_gpu: bool = True) -> list[dict]:
        """The forward's launches of the first internal chunk, run eagerly under torch.profiler (a
        graph replay would show the profiler one opaque launch)."""
        from harness.op_profile import profile_ops
        tokens = check_tokens(tokens, self.config).astype(np.int32)
        self.forward(tokens)  # this shape's plan, its graph and its ids on the device
        B, S = tokens.shape
        P = self.plans[(min(B, max(1, self.max_tokens // S)), S)]

        def body():
            with torch.cuda.stream(self.tstream):
                self._body(P)
        return profile_ops(body, True, self.synchronize)

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("this engine was closed; build a new one")
        tokens = check_tokens(tokens, self.config).astype(np.int32)
        B, S = tokens.shape
        if B > self.max_batch:
            raise ValueError(f"batch of {B} prompts exceeds max_batch={self.max_batch}; split it or build the "
                             "engine with max_batch=N")
        per = max(1, self.max_tokens // S)  # sequences per internal forward
        outs = [self._forward_chunk(tokens[b:b + per]) for b in range(0, B, per)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    # ----- generation (optimized/decode.py) ------------------------------------------------------------
    def prefill(self, prompts, max_new_tokens: int | None = None) -> np.ndarray:
        """Start a generation: prompts int [B, S] (or a list of 1-D prompts of any lengths) ->
        float32 [B, V] logits at each prompt's last token; the caches keep every sequence for
        `decode`. With max_new_tokens, refuses up front a generation that would outgrow max_len."""
        self._check_open()
        if self._dec is not None and self._dec.streaming:
            raise RuntimeError(STREAM_OPEN)  # its queued steps would run on the new generation's caches
        padded, lengths = pad_prompts(prompts, self.config)
        B, S = padded.shape
        if B > self.max_batch:
            raise ValueError(f"batch of {B} prompts exceeds max_batch={self.max_batch}; split it or build the "
                             "engine with max_batch=N")
        steps = 0 if max_new_tokens is None else max(int(max_new_tokens) - 1, 0)  # the first token is prefill's
        check_room(lengths, self.max_len, steps, f"a prefill of {S} tokens and {steps} decode steps")
        D = self._decode_plan(B)
        D.active = False
        with torch.cuda.stream(self.tstream):
            D.lengths.copy_(torch.from_numpy(lengths))
        per = max(1, self.max_tokens // S)  # sequences per internal forward, as in forward()
        outs = [self._prefill_chunk(D, padded[b:b + per], lengths[b:b + per], b) for b in range(0, B, per)]
        D.len_host[:] = lengths
        D.active = True
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def decode(self, tokens) -> np.ndarray:
        """One step: the next token of every sequence of the last prefill, int [B] -> float32 [B, V]."""
        return self._decode_step(tokens, want_logits=True)

    def decode_greedy(self, tokens) -> np.ndarray:
        """One step that returns each sequence's argmax token id (int32 [B]), chosen on the GPU: B ints
        cross PCIe instead of B x V logits."""
        return self._decode_step(tokens, want_logits=False)

    def greedy_steps(self, first_ids, steps: int):
        """`steps` greedy decode steps streamed from the last prefill: a generator of each step's
        int32 [B] ids (step 1 decodes first_ids, each later step the ids the step before chose).
        The chosen ids feed the next step on the device (decode_body's argmax writes the work
        plan's input ids), so step n + 1 is queued on the GPU before the host waits for step n:
        the GPU does not idle while the caller handles a token. Checks first_ids and the room for
        all `steps` now. Closing the generator early waits for the step queued ahead, which has run
        (lengths count it; its ids are not handed over), and leaves the engine ready for decode or
        prefill; while the generator is open, decode, prefill and another stream are refused."""
        D = self._active_decode()
        tokens = self._step_ids(D, first_ids)
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        check_room(D.len_host, self.max_len, steps, f"a stream of {steps} decode steps")
        return self._stream(D, tokens, steps, D.len_host.copy())

    def _stream(self, D: DecodePlan, tokens: np.ndarray, steps: int, start: np.ndarray):
        """greedy_steps' generator. Slot n % 2 of D.ids_ring and done[n % 2] belong to step n + 1:
        the step being read and the one in flight never share a slot."""
        if self._active_decode() is not D or not np.array_equal(D.len_host, start):
            raise RuntimeError("the generation changed between greedy_steps() and its first step; call "
                               "greedy_steps again")
        if steps == 0:
            return
        D.streaming = True
        done = [torch.cuda.Event(), torch.cuda.Event()]
        queued = 0  # steps enqueued on the device
        try:
            with torch.cuda.stream(self.tstream):
                self._upload_ids(D, tokens)
            self._count_io(tokens.nbytes, 0)
            queued = self._enqueue_streamed(D, queued, done)
            for n in range(steps):
                self._check_open()  # closed while the caller held a token: its context is gone
                if queued < steps:
                    queued = self._enqueue_streamed(D, queued, done)  # step n + 2 runs while the host reads n + 1
                done[n % 2].synchronize()
                D.len_host += 1
                yield D.ids_ring[n % 2].numpy().copy()
        finally:
            D.streaming = False
            if not self._closed:
                self.stream.synchronize()  # a step queued ahead of an early close has advanced lengths
            D.len_host[:] = start + queued

    def _enqueue_streamed(self, D: DecodePlan, queued: int, done: list) -> int:
        """Queue streamed step queued + 1: the step, its ids into its ring slot, its event. Returns
        the new count of queued steps."""
        slot = queued % 2
        with torch.cuda.stream(self.tstream):
            self._run_step(D)
            D.ids_ring[slot].copy_(D.next_ids, non_blocking=True)
            done[slot].record(self.tstream)
        self._count_io(0, D.ids_ring[slot].numel() * D.ids_ring.element_size())
        return queued + 1

    def _decode_step(self, tokens, want_logits: bool) -> np.ndarray:
        D = self._active_decode()
        tokens = self._step_ids(D, tokens)
        check_room(D.len_host, self.max_len, 1, "this decode step")
        P = D.work
        with torch.cuda.stream(self.tstream):
            self._upload_ids(D, tokens)
            self._run_step(D)
            out = P.logits_host if want_logits else D.next_ids_host
            out.copy_(P.logits_f32 if want_logits else D.next_ids, non_blocking=True)
        self.stream.synchronize()
        D.len_host += 1
        self._count_io(tokens.nbytes, out.numel() * out.element_size())
        return out.numpy().copy()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this engine was closed; build a new one")

    def _active_decode(self) -> DecodePlan:
        """The current generation, refusing a closed engine, no prefill yet, or an open stream."""
        self._check_open()
        D = self._dec
        if D is None or not D.active:
            raise ValueError("decode before prefill: call prefill(prompts) first to start a generation")
        if D.streaming:
            raise RuntimeError(STREAM_OPEN)
        return D

    def _step_ids(self, D: DecodePlan, tokens) -> np.ndarray:
        """One token per sequence of D (int [B] or [B, 1]) -> checked int32 [B]."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 2 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if tokens.ndim != 1 or len(tokens) != D.B:
            raise ValueError(f"decode takes one token per sequence: int [{D.B}] for the {D.B} sequences of the last "
                             f"prefill, got shape {tokens.shape}")
        return check_tokens(tokens[:, None], self.config)[:, 0].astype(np.int32)

    def _upload_ids(self, D: DecodePlan, tokens: np.ndarray) -> None:
        """tokens -> D.work.ids through the pinned host buffer (call on self.tstream)."""
        P = D.work
        P.ids_host.numpy()[:, 0] = tokens
        P.ids.copy_(P.ids_host.view(-1), non_blocking=True)

    def _run_step(self, D: DecodePlan) -> None:
        """One decode step on the ids already in D.work.ids (call on self.tstream): the graph's
        replay, or eagerly the first time, capturing the graph for the next steps."""
        if D.graph is not None:
            D.graph.replay()
            return
        decode_body(self, D)
        if self.use_graphs and self.graph_error is None and not D.capture_tried:
            self._capture_decode(D)  # records the next steps' launches; runs nothing now

    def _decode_kernels(self) -> DecodeKernels:
        if self.DK is None:
            self.DK = DecodeKernels(self.gpu, self.tdtype, self.stream)
            self.DK.pdl = self.use_pdl
        return self.DK

    def _decode_plan(self, B: int) -> DecodePlan:
        """The caches for B sequences: the current plan when its batch matches (its graph stays
        valid: same buffers), else a new one (the old caches are freed first)."""
        self._decode_kernels()
        if self._dec is not None and self._dec.B == B:
            return self._dec
        if self._dec is not None:
            self.synchronize()
            self._dec = None
            torch.cuda.empty_cache()
        work = Plan(self.config, B, 1, self.tdtype, self.tdev, self.K.moe_variant(self.moe_variant_name(B)),
                    self._x3_cols(B))
        sms = torch.cuda.get_device_properties(self.tdev).multi_processor_count
        nsplit = attention_splits(B, self.config.num_key_value_heads, self.max_len, sms)
        self._dec = DecodePlan(self.config, work, self.max_len, nsplit)
        self.counters.extra["decode_cache_bytes"] = self._dec.nbytes()
        return self._dec

    def _prefill_chunk(self, D: DecodePlan, tokens: np.ndarray, lengths: np.ndarray, b0: int) -> np.ndarray:
        B, S = tokens.shape
        P = self._plan(B, S)
        P.ids_host.numpy()[:] = tokens
        with torch.cuda.stream(self.tstream):
            P.ids.view(B, S).copy_(P.ids_host, non_blocking=True)
            fill = PrefillFill(self.DK, D, b0, lengths, S)
            self._body(P, fill)  # eager: the fill's cache slices differ per call
            P.download.enqueue(P.logits_f32)
        logits = self._collect_logits(P, tokens)
        self.counters.h2d_bytes += (4 + 8) * B  # lengths and the last-row index, small pageable copies
        self.counters.h2d_copies += 2
        return logits

    def _capture_decode(self, D: DecodePlan) -> None:
        D.capture_tried = True
        g = torch.cuda.CUDAGraph()
        try:
            with capturing(g, self.tstream):
                decode_body(self, D)
            D.graph = g
        except Exception as e:  # keep a working (eager) decode and say why
            self.graph_error = f"{type(e).__name__}: {e}"
            print(f"optimized: CUDA graph capture of the decode step failed, decoding eagerly: {self.graph_error}")

    def _count_io(self, h2d: int, d2h: int, copies: int = 1) -> None:
        """One pinned upload of ids and a pinned download in `copies` DMAs (logits, or greedy ids);
        0 bytes: no such copy (a streamed step downloads without an upload)."""
        c = self.counters
        c.h2d_bytes += h2d
        c.h2d_pinned_bytes += h2d
        c.h2d_copies += h2d > 0
        c.d2h_bytes += d2h
        c.d2h_pinned_bytes += d2h
        c.d2h_copies += copies if d2h > 0 else 0

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.synchronize()
            self.plans.clear()
            self._dec = None
            self._x3 = None
            self.W = None
            torch.cuda.empty_cache()
            release_context(self.gpu)
