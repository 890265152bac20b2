"""The optimized engine's forward, layer by layer (ForwardLayers, a mixin of OptimizedEngine): the
device work its CUDA graphs capture, shared by the forward, the prefill and the decode step.

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
up to 2 tokens, no sort). Up to 64 tokens a MoE layer's ffn_norm, router GEMM and routing are one
launch (optimized/router.py's norm_route, whose last block also sorts the pairs for the grouped
GEMM, sliced over H with the folded router where E <= 32; where H > 2048, add_norm then
router_topk). At 1-2 tokens (decode) the router is folded through the mixer's out_proj instead
(weights.fold_routers): the out_proj launch also computes the logits' two partial sums and a
one-block norm_route_folded only scales and routes them (fold_router). Option gemv=False keeps
add_norm, cuBLAS and the grouped GEMM there (for comparison).

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
INVALID (against float64: VALID, max error 3.2e-5).
"""
from __future__ import annotations

import torch

from .gemv import GEMV_MAX_TOKENS, MOE_GEMV_MAX_PAIRS
from .plan import Plan
from .router import ROUTER_MAX_TOKENS


class ForwardLayers:
    """The forward's steps on a Plan's buffers. Uses the engine's config, kernels (K, G, R), weights
    (W), options (use_gemv, fold_router, forced_moe_variant, tf32x3: X3, tf32x3_min_rows) and
    head_out_fp32."""

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
        sorted_by_router = self._ffn_norm(P, L, moe)
        if moe and self._route_probe is not None:  # OptimizedEngine.touched_experts (never in a graph)
            self._route_probe.append(P.idx.clone())
        if moe:
            if self._moe_gemv(P):
                self.G.moe_gateup(P.h, L["w13"], P.act, P.idx, k)
                self.G.moe_down(P.act, L["w2"], P.y, P.idx, P.wts)
                return k
            v = P.moe_variant.name
            if not sorted_by_router:
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

    def _ffn_norm(self, P: Plan, L: dict, moe: bool) -> bool:
        """x += the mixer's output; h = ffn_norm(x); on a MoE layer also the routing (P.idx, P.wts):
        one launch up to 64 tokens (norm_route, which also sorts the pairs for a grouped GEMM), else
        add_norm then the router. Returns whether the pairs are sorted (P.sorted_pair, P.tiles)."""
        cfg, K, R, T = self.config, self.K, self.R, P.T
        route = (cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor, P.idx, P.wts)
        small = moe and self.use_gemv and T <= ROUTER_MAX_TOKENS
        if self._folded(P, L):  # the logits' partial sums came with out_proj (_out_proj)
            R.norm_route_folded(P.x, P.y[:T], L["ffn_norm"], P.h, cfg.norm_eps, P.r[:T], L["bias"], *route)
            return False
        if small and R.norm_route_takes(cfg.hidden_size, cfg.num_experts):
            sort = None
            if R.sort_in_router and not self._moe_gemv(P):  # one launch fewer before the grouped GEMM
                sort = (P.moe_variant.tile_rows, P.sorted_pair, P.offsets, P.tiles, P.num_tiles)
            R.norm_route(P.x, P.y[:T], L["ffn_norm"], P.h, cfg.norm_eps, L["gate"], L["bias"], *route, sort=sort,
                         Gw=L.get("router_Gw"))
            return sort is not None
        K.add_norm(P.x, P.y, 1, L["ffn_norm"], P.h, cfg.norm_eps, h32=P.h32 if moe else None)
        if small:
            R.router_topk(P.h32, L["gate"], L["bias"], *route)
        elif moe:
            self._mm(P.h32, L["gate"], P.router)
            K.route(P.router, L["bias"], *route)
        return False

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
