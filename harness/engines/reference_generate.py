"""Greedy generation in the reference: prefill, then decode steps with a KV cache and conv state.

The caches are exactly what transformers keeps: per attention layer the post-norm, post-RoPE K and the
raw V of every past position; per ShortConv layer the last conv_L_cache - 1 columns of B*x
(post-gate, pre-conv), oldest first, zero at the start (which is what handles prompts of 1 or 2
tokens). Sequences are independent: each has its own cache, so prompts of different lengths
generate side by side without padding.

Ground truth for generation: decode logits must equal the full-sequence logits of the same prefix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from harness.checkpoints.base import Checkpoint
from harness.config import ModelConfig
from harness.engines.reference import WeightCache, _Weights, apply_rope, check_tokens, decoder_layers, lm_head, rmsnorm, rope_cos_sin


@dataclass
class SequenceCache:
    """One sequence's state between steps."""
    length: int = 0  # positions already processed
    k: dict = field(default_factory=dict)  # attention layer -> [length, nkv, hd]
    v: dict = field(default_factory=dict)
    conv: dict = field(default_factory=dict)  # conv layer -> [L - 1, H] of B*x


def _conv_chunk(h, in_w, conv_w, out_w, state: torch.Tensor | None, L: int):
    """ShortConv over a chunk of T >= 1 tokens continuing from `state` -> (out [T, H], new state)."""
    T, H = h.shape
    B, C, xv = (h @ in_w.T).split(H, dim=-1)
    if state is None:
        state = torch.zeros(L - 1, H, dtype=h.dtype, device=h.device)
    full = torch.cat([state, B * xv], dim=0)
    w = conv_w.reshape(H, L)
    conv = sum(w[:, j] * full[j:j + T] for j in range(L))
    return (C * conv) @ out_w.T, full[-(L - 1):]


def _attention_chunk(h, wq, wk, wv, wo, q_norm, k_norm, cfg: ModelConfig, cache: SequenceCache, layer: int):
    """Causal GQA attention of T new tokens at positions cache.length.. over the cached keys."""
    T = h.shape[0]
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    pos = torch.arange(cache.length, cache.length + T, device=h.device)
    q = rmsnorm((h @ wq.T).view(T, nh, hd), q_norm, cfg.norm_eps)
    k = rmsnorm((h @ wk.T).view(T, nkv, hd), k_norm, cfg.norm_eps)
    v = (h @ wv.T).view(T, nkv, hd)
    cos, sin = rope_cos_sin(pos, hd, cfg.rope_theta, h.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if layer in cache.k:
        k, v = torch.cat([cache.k[layer], k]), torch.cat([cache.v[layer], v])
    cache.k[layer], cache.v[layer] = k, v
    g = nh // nkv
    kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, kk) * hd ** -0.5
    key_pos = torch.arange(k.shape[0], device=h.device)
    scores = scores.masked_fill(key_pos[None, None, :] > pos[None, :, None], float("-inf"))
    o = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), vv).reshape(T, nh * hd)
    return o @ wo.T


def _chunk(x: torch.Tensor, W, cfg: ModelConfig, cache: SequenceCache) -> torch.Tensor:
    """Run T new tokens' embeddings through the model, updating `cache` -> last-position logits."""
    def mix(i: int, h: torch.Tensor) -> torch.Tensor:
        p = f"layers.{i}."
        if cfg.is_attention(i):
            a = p + "self_attn."
            return _attention_chunk(h, W(a + "q_proj.weight"), W(a + "k_proj.weight"), W(a + "v_proj.weight"),
                                    W(a + "out_proj.weight"), W(a + "q_layernorm.weight"),
                                    W(a + "k_layernorm.weight"), cfg, cache, i)
        c = p + "conv."
        y, cache.conv[i] = _conv_chunk(h, W(c + "in_proj.weight"), W(c + "conv.weight"), W(c + "out_proj.weight"),
                                       cache.conv.get(i), cfg.conv_L_cache)
        return y

    x = decoder_layers(x, W, cfg, mix)
    cache.length += x.shape[0]
    return lm_head(x[-1], W, cfg)


@dataclass
class Generation:
    tokens: list[np.ndarray]  # per sequence, the new tokens (int32 [max_new_tokens])
    step_logits: list[np.ndarray]  # per sequence, float32 [max_new_tokens, V]: the logits each token was chosen from


@torch.no_grad()
def reference_generate(ckpt: Checkpoint, prompts, max_new_tokens: int, dtype=torch.float64, device="cpu",
                       chunks: list[int] | None = None, cache: WeightCache | None = None) -> Generation:
    """Greedy generation for each prompt (a list of int arrays, any lengths >= 1).

    `chunks`, for tests, splits each prompt's prefill into pieces of these sizes (multi-token
    continuation chunks must give the same state as one prefill). `cache` keeps the upcast weights
    between steps (without one, every step converts every weight it touches again)."""
    cfg = ckpt.config
    W = _Weights(ckpt, dtype, device, cache)
    embed = W("embed_tokens.weight")
    out_tokens, out_logits = [], []
    for prompt in prompts:
        ids = check_tokens(np.asarray(prompt).reshape(1, -1), cfg)[0]
        cache = SequenceCache()
        pieces = np.split(ids, np.cumsum(chunks)[:-1]) if chunks and sum(chunks) == len(ids) else [ids]
        for piece in pieces:
            logits = _chunk(embed[torch.as_tensor(piece, device=embed.device)], W, cfg, cache)
        toks, lg = [], []
        for _ in range(max_new_tokens):
            nxt = int(torch.argmax(logits))
            toks.append(nxt)
            lg.append(logits.float().cpu().numpy())
            logits = _chunk(embed[torch.as_tensor([nxt], device=embed.device)], W, cfg, cache)
        out_tokens.append(np.array(toks, np.int32))
        out_logits.append(np.stack(lg) if lg else np.zeros((0, cfg.vocab_size), np.float32))
    return Generation(out_tokens, out_logits)
