"""The optimized engine's weights: resident on the GPU as torch tensors in the engine dtype, packed
for its kernels (expert_bias stays fp32: it decides near-equal router scores):

| tensor                     | layout                                   | used by                      |
|----------------------------|------------------------------------------|------------------------------|
| embed                      | [V, H]                                   | embedding gather, LM head    |
| L.qkv                      | [(nh + 2 nkv) hd, H] = cat(q, k, v)      | one cuBLAS GEMM              |
| L.w13 (dense)              | [2 I, H] = cat(w1, w3)                   | one cuBLAS GEMM + silu_mul   |
| L.w13 (MoE)                | [E, 2 Im, H], per expert cat(w1_e, w3_e) | grouped gate/up GEMM         |
| L.w2 (MoE)                 | [E, H, Im]                               | grouped down GEMM            |
| L.conv_w                   | [H, Lc]                                  | shortconv                    |
| L.router_Gw, L.router_M    | [E, H] fp32: gate * ffn_norm weight, and | the router folded through    |
| (MoE, fold_routers)        | that @ out_proj (made in float64)        | out_proj at 1-2 tokens       |

With tf32x3 (fp32 engines only) every dense projection that cuBLAS runs for more than a few rows
(conv in/out, attention qkv/out, the dense FFN's w13/w2) is also kept split for the 3xTF32 GEMM,
as split_tf32.split_weight's [wl | wh] [N, 2K] (2x its fp32 bytes more, 3.6 GB for the real
model; the originals stay for the small-batch GEMVs and plain cuBLAS): `split_of(w)` finds it.
The router (routing precision) and the tied LM head (at 64 rows 3xTF32 lost to plain fp32, and
its split would cost 1.1 GB) stay plain fp32.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from harness.checkpoints.base import keeps_fp32

from .split_tf32 import split_weight

SPLIT_KEYS = ("in", "out", "qkv")  # per layer; plus the dense FFN's w13 and w2


class PackedWeights:
    def __init__(self, checkpoint, dtype: torch.dtype, device: torch.device, counters=None, progress=True,
                 tf32x3: bool = False):
        if tf32x3 and dtype != torch.float32:
            raise ValueError(f"tf32x3 splits fp32 weights; the engine dtype is {dtype}")
        self.cfg = cfg = checkpoint.config
        self.dtype, self.device = dtype, device
        self.layers: list[dict[str, torch.Tensor]] = []
        self.uploaded = 0
        self._ckpt, self._counters = checkpoint, counters
        self._split: dict[int, torch.Tensor] = {}  # data_ptr of a weight -> its split_weight
        self.split_max_k = 0  # widest K among the split weights (sizes the activations' scratch)

        self.embed = self._get("embed_tokens.weight")
        self.final_norm = self._get("embedding_norm.weight")
        bar = tqdm(range(cfg.num_layers), desc=f"optimized: packing {dtype} weights", unit="layer",
                   disable=not progress, leave=False)
        for i in bar:
            p, L = f"layers.{i}.", {}
            L["op_norm"] = self._get(p + "operator_norm.weight")
            L["ffn_norm"] = self._get(p + "ffn_norm.weight")
            if cfg.is_attention(i):
                a = p + "self_attn."
                L["qkv"] = self._cat([a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"])
                L["out"] = self._get(a + "out_proj.weight")
                L["q_norm"] = self._get(a + "q_layernorm.weight")
                L["k_norm"] = self._get(a + "k_layernorm.weight")
            else:
                c = p + "conv."
                L["in"] = self._get(c + "in_proj.weight")
                L["conv_w"] = self._get(c + "conv.weight").reshape(cfg.hidden_size, cfg.conv_L_cache).contiguous()
                L["out"] = self._get(c + "out_proj.weight")
            f = p + "feed_forward."
            if cfg.is_moe(i):
                E, Im, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
                L["gate"] = self._get(f + "gate.weight", torch.float32)  # the router runs in fp32
                L["bias"] = self._get(f + "expert_bias", torch.float32)
                w13 = torch.empty((E, 2 * Im, H), dtype=dtype, device=device)
                w2 = torch.empty((E, H, Im), dtype=dtype, device=device)
                for e in range(E):
                    x = f"{f}experts.{e}."
                    w13[e, :Im].copy_(self._fetch(x + "w1.weight"))
                    w13[e, Im:].copy_(self._fetch(x + "w3.weight"))
                    w2[e].copy_(self._fetch(x + "w2.weight"))
                L["w13"], L["w2"] = w13, w2
            else:
                L["w13"] = self._cat([f + "w1.weight", f + "w3.weight"])
                L["w2"] = self._get(f + "w2.weight")
            if tf32x3:
                for key in (*SPLIT_KEYS, *(() if cfg.is_moe(i) else ("w13", "w2"))):
                    if key in L:
                        self._add_split(L[key])
            self.layers.append(L)
        self._ckpt = None

    def _fetch(self, name: str, dtype=None) -> torch.Tensor:
        raw = self._ckpt.raw(name)
        if not raw.is_cuda:
            self.uploaded += raw.numel() * raw.element_size()
            if self._counters is not None:
                self._counters.weight_h2d_bytes += raw.numel() * raw.element_size()
                self._counters.h2d_bytes += raw.numel() * raw.element_size()
        dtype = torch.float32 if keeps_fp32(name) else (dtype or self.dtype)  # as Checkpoint.get
        return raw.to(device=self.device, dtype=dtype)

    def _get(self, name: str, dtype=None) -> torch.Tensor:
        return self._fetch(name, dtype).contiguous()

    def _cat(self, names: list[str]) -> torch.Tensor:
        parts = [self._fetch(n) for n in names]
        return torch.cat(parts, dim=0).contiguous()

    def _add_split(self, w: torch.Tensor) -> None:
        self._split[w.data_ptr()] = split_weight(w)
        self.split_max_k = max(self.split_max_k, w.shape[1])

    def split_of(self, w: torch.Tensor) -> torch.Tensor | None:
        """The 3xTF32 split [wl | wh] of weight w (one of this object's tensors), or None."""
        wx = self._split.get(w.data_ptr())
        return wx if wx is not None and tuple(wx.shape) == (w.shape[0], 2 * w.shape[1]) else None

    def fold_routers(self) -> None:
        """L.router_Gw and L.router_M for every MoE layer: the router's logits of a token are
        rstd * Gw . (x + out_proj(a)) = rstd * (Gw . x + M . a), so the out_proj launch can compute
        them beside its output and the ffn_norm after it only scales (router.cu's norm_route_folded).
        22 x 2 x 256 KB for the real model."""
        for L in self.layers:
            if "gate" in L:
                Gw = L["gate"].double() * L["ffn_norm"].double()[None, :]
                L["router_Gw"] = Gw.float().contiguous()
                L["router_M"] = (Gw @ L["out"].double()).float().contiguous()

    def nbytes(self) -> int:
        n = self.embed.numel() * self.embed.element_size() + self.final_norm.numel() * self.final_norm.element_size()
        for L in self.layers:
            n += sum(t.numel() * t.element_size() for t in L.values())
        return n + sum(t.numel() * t.element_size() for t in self._split.values())
