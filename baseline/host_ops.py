"""The baseline's CPU work, in vectorised float32 numpy (the original used OpenMP loops).

Each function is the CPU part of one step of the original program; the matrix products around
them run on the GPU in engine.py. Shapes are for one sample of T tokens.
"""
from __future__ import annotations

import numpy as np


def embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of the embedding table: [V, H], ids [T] -> [T, H] (a copy, as the original's row copies)."""
    return table[ids]


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Over the last dim; the weight multiplies directly (no 1 + w)."""
    scale = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return w * (x * scale)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """NeoX (rotate_half) RoPE tables [T, head_dim], angles computed in float32 as HF does."""
    inv_freq = np.float32(1.0) / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [T, heads, hd]; cos/sin [T, hd]."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def attention_core(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_norm_w: np.ndarray, k_norm_w: np.ndarray,
                   positions: np.ndarray, num_heads: int, num_kv_heads: int, head_dim: int,
                   eps: float, rope_theta: float) -> np.ndarray:
    """Everything of attention between the projections: q [T, nh*hd], k and v [T, nkv*hd] ->
    o [T, nh*hd]. Per-head q/k RMSNorm, RoPE, GQA repeat of K and V, full T x T scores, causal
    mask, softmax, P @ V. Like the original, it materialises every intermediate."""
    T = q.shape[0]
    q = rmsnorm(q.reshape(T, num_heads, head_dim), q_norm_w, eps)
    k = rmsnorm(k.reshape(T, num_kv_heads, head_dim), k_norm_w, eps)
    v = v.reshape(T, num_kv_heads, head_dim)
    cos, sin = rope_cos_sin(positions, head_dim, rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    group = num_heads // num_kv_heads
    k = np.repeat(k, group, axis=1)  # query head j uses kv head j // group
    v = np.repeat(v, group, axis=1)
    qh, kh, vh = (a.transpose(1, 0, 2) for a in (q, k, v))  # [heads, T, hd]
    scores = (qh @ kh.transpose(0, 2, 1)) * np.float32(head_dim ** -0.5)  # [heads, T, T]
    scores[:, np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf  # key position > query position
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    o = p @ vh  # [heads, T, hd]
    return np.ascontiguousarray(o.transpose(1, 0, 2).reshape(T, num_heads * head_dim))


def shortconv_core(bcx: np.ndarray, conv_w: np.ndarray) -> np.ndarray:
    """Everything of ShortConv between in_proj and out_proj: BCx [T, 3H] -> C * conv(B * x) [T, H].
    Like the original (and HF) it works channel-major [H, T], with the split, the gate, the
    depthwise causal conv (cross-correlation, kernel not flipped, zero history) and the output gate
    as separate passes over full tensors."""
    T = bcx.shape[0]
    H = bcx.shape[1] // 3
    L = conv_w.shape[-1]
    bcx_t = np.ascontiguousarray(bcx.T)  # [3H, T]
    b, c, xv = bcx_t[:H].copy(), bcx_t[H:2 * H].copy(), bcx_t[2 * H:].copy()  # split order B, C, x
    bx = b * xv
    padded = np.concatenate([np.zeros((H, L - 1), dtype=bx.dtype), bx], axis=1)  # [H, T + L - 1]
    w = conv_w.reshape(H, L)
    conv = np.zeros_like(bx)
    for j in range(L):  # over the L kernel taps, each a whole-tensor pass
        conv += w[:, j:j + 1] * padded[:, j:j + T]
    y = c * conv
    return np.ascontiguousarray(y.T)  # back to [T, H]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def route(router_logits: np.ndarray, expert_bias: np.ndarray | None, k: int, norm_topk: bool = True,
          scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid routing from router logits [T, E] -> (expert ids [T, k] int64, weights [T, k] float32).
    top-k on sigmoid + expert_bias (descending, exact ties to the lower id; torch.topk on the CPU prefers the higher one, but continuous scores never tie); the
    weights come from the UNBIASED sigmoid, renormalised by sum + 1e-6, times `scale`."""
    s = sigmoid(router_logits)
    choice = s if expert_bias is None else s + expert_bias.astype(s.dtype)
    idx = np.argsort(-choice, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(s, idx, axis=-1)
    if norm_topk:
        w = w / (w.sum(axis=-1, keepdims=True) + np.float32(1e-6))
    return idx.astype(np.int64), (w * np.float32(scale)).astype(np.float32)


def expert_pairs(idx: np.ndarray) -> np.ndarray:
    """The baseline's processing order of (token, slot, expert): token by token, each token's k
    experts in routing-slot order, one pair at a time. [T*k, 3] int64."""
    T, k = idx.shape
    tok, slot = np.meshgrid(np.arange(T), np.arange(k), indexing="ij")
    return np.stack([tok.ravel(), slot.ravel(), idx.ravel()], axis=1).astype(np.int64)
