"""The reference forward: plain torch, written from the model's description (LFM2-MoE). Ground truth for every engine.

Runs in float64 (default) or float32, on the CPU or a GPU. Weights are fetched from the
checkpoint layer by layer and upcast when used, so the full 8.3 B model runs from a memory-mapped
bf16 checkpoint without ever holding an fp32 copy of it (pass `cache=WeightCache(...)` to keep the
upcast weights when many batches go through, e.g. on a large GPU).

Expert combine: like HF eager, experts in ascending id order; in float64 the order does not matter
at the 1e-3 contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from harness.checkpoints.base import Checkpoint
from harness.config import ModelConfig


# ----- the pure ops (engines' CPU paths and tests compare against these) ----------------------
def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise over the last dim; the weight multiplies directly (no 1 + w offset)."""
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """NeoX rotate_half RoPE over the full head_dim; angles in fp32 as HF computes them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, heads, hd]; cos/sin: [T, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def route(h: torch.Tensor, gate_w: torch.Tensor, expert_bias: torch.Tensor, k: int,
          norm_topk: bool = True, scale: float = 1.0):
    """Sigmoid router: the bias only chooses experts, the weights come from the unbiased sigmoid.
    h: [T, H] -> (indices [T, k] long, weights [T, k])."""
    s = torch.sigmoid(h @ gate_w.T)
    idx = torch.topk(s + expert_bias.to(s.dtype), k=k, dim=-1).indices
    w = torch.gather(s, 1, idx)
    if norm_topk:
        w = w / (w.sum(-1, keepdim=True) + 1e-6)
    return idx, w * scale


def routing_margin(h: torch.Tensor, gate_w: torch.Tensor, expert_bias: torch.Tensor, k: int) -> torch.Tensor:
    """How far each token is from choosing another expert set: the k-th minus the (k+1)-th biased
    score, [T]. Near zero, the rounding of any other implementation may flip the choice
    (docs/usage.md, near-ties), and that token's MoE output changes by a whole expert."""
    s = torch.sigmoid(h @ gate_w.T) + expert_bias.to(h.dtype)
    top = torch.topk(s, k=min(k + 1, s.shape[-1]), dim=-1).values
    return top[..., k - 1] - top[..., -1] if top.shape[-1] > k else torch.full_like(top[..., 0], float("inf"))


def swiglu(h: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    return (F.silu(h @ w1.T) * (h @ w3.T)) @ w2.T


def short_conv(h: torch.Tensor, in_w: torch.Tensor, conv_w: torch.Tensor, out_w: torch.Tensor) -> torch.Tensor:
    """ShortConv over sequences h: [..., T, H] (leading dims are independent sequences). Split
    order B, C, x; causal depthwise cross-correlation over time with zero history; no activation."""
    *lead, T, H = h.shape
    L = conv_w.shape[-1]
    B, C, xv = (h @ in_w.T).split(H, dim=-1)
    bx = torch.cat([torch.zeros(*lead, L - 1, H, dtype=h.dtype, device=h.device), B * xv], dim=-2)
    w = conv_w.reshape(H, L)
    conv = sum(w[:, j] * bx[..., j:j + T, :] for j in range(L))
    return (C * conv) @ out_w.T


def attention(h: torch.Tensor, wq, wk, wv, wo, q_norm, k_norm, cfg: ModelConfig) -> torch.Tensor:
    """Causal GQA attention over sequences h: [..., T, H], positions 0..T-1 in each."""
    *lead, T, _ = h.shape
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = rmsnorm((h @ wq.T).view(*lead, T, nh, hd), q_norm, cfg.norm_eps)
    k = rmsnorm((h @ wk.T).view(*lead, T, nkv, hd), k_norm, cfg.norm_eps)
    v = (h @ wv.T).view(*lead, T, nkv, hd)
    cos, sin = rope_cos_sin(torch.arange(T, device=h.device), hd, cfg.rope_theta, h.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    g = nh // nkv
    k = k.repeat_interleave(g, dim=-2)  # query head j uses kv head j // g
    v = v.repeat_interleave(g, dim=-2)
    scores = torch.einsum("...qhd,...khd->...hqk", q, k) * hd ** -0.5
    causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = torch.einsum("...hqk,...khd->...qhd", p, v).reshape(*lead, T, nh * hd)
    return o @ wo.T


# ----- weights ---------------------------------------------------------------------------------
class WeightCache:
    """Upcast weights kept between calls (on `device`), for repeated forwards."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}


class _Weights:
    def __init__(self, ckpt: Checkpoint, dtype, device, cache: WeightCache | None):
        self.ckpt, self.dtype, self.device, self.cache = ckpt, dtype, device, cache

    def __call__(self, name: str) -> torch.Tensor:
        if self.cache is not None and name in self.cache.tensors:
            return self.cache.tensors[name]
        dtype = torch.float64 if self.dtype == torch.float64 else self.dtype
        t = self.ckpt.get(name, dtype=dtype, device=self.device)
        if self.cache is not None:
            self.cache.tensors[name] = t
        return t


# ----- the model ---------------------------------------------------------------------------------
@dataclass
class ReferenceOutput:
    logits: np.ndarray  # float32 [B, V], last position
    hidden: list = field(default_factory=list)  # per layer output, [B, S, H] (debug)
    router_indices: dict = field(default_factory=dict)  # layer -> LongTensor [B, S, k] (debug)
    router_weights: dict = field(default_factory=dict)  # layer -> [B, S, k] (debug)
    router_margins: dict = field(default_factory=dict)  # layer -> [B, S] (debug), see routing_margin()


def _moe(h: torch.Tensor, W, prefix: str, cfg: ModelConfig):
    idx, wts = route(h, W(prefix + "gate.weight"), W(prefix + "expert_bias"), cfg.num_experts_per_tok,
                     cfg.norm_topk_prob, cfg.routed_scaling_factor)
    out = torch.zeros_like(h)
    for e in torch.unique(idx).tolist():  # ascending expert id, as HF eager
        tok, slot = (idx == e).nonzero(as_tuple=True)
        p = f"{prefix}experts.{e}."
        y = swiglu(h[tok], W(p + "w1.weight"), W(p + "w3.weight"), W(p + "w2.weight"))
        out.index_add_(0, tok, y * wts[tok, slot, None])
    return out, idx, wts


def decoder_layers(x: torch.Tensor, W, cfg: ModelConfig, mixer, debug: ReferenceOutput | None = None):
    """The residual stream x [..., T, H] through every layer (pre-norm residual blocks). `mixer(i, h)` is
    layer i's attention or ShortConv on the normed h (whole prompts, or chunks against caches);
    norms, MLPs and the MoE see every token alike. With `debug`, per-layer outputs and router
    choices are appended to its lists (hidden) and dicts (router_indices/weights)."""
    H = x.shape[-1]
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        x = x + mixer(i, rmsnorm(x, W(p + "operator_norm.weight"), cfg.norm_eps))
        h = rmsnorm(x, W(p + "ffn_norm.weight"), cfg.norm_eps)
        f = p + "feed_forward."
        if cfg.is_moe(i):
            y, idx, wts = _moe(h.reshape(-1, H), W, f, cfg)
            y = y.reshape(h.shape)
            if debug is not None:
                debug.router_indices[i] = idx.reshape(*h.shape[:-1], -1)
                debug.router_weights[i] = wts.reshape(*h.shape[:-1], -1)
                debug.router_margins[i] = routing_margin(h, W(f + "gate.weight"), W(f + "expert_bias"),
                                                         cfg.num_experts_per_tok)
        else:
            y = swiglu(h, W(f + "w1.weight"), W(f + "w3.weight"), W(f + "w2.weight"))
        x = x + y
        if debug is not None:
            debug.hidden.append(x)
    return x


def lm_head(x_last: torch.Tensor, W, cfg: ModelConfig) -> torch.Tensor:
    """Final norm (named embedding_norm) and the tied LM head: [..., H] -> [..., V]."""
    return rmsnorm(x_last, W("embedding_norm.weight"), cfg.norm_eps) @ W("embed_tokens.weight").T


def _whole_prompt_mixer(W, cfg: ModelConfig):
    def mix(i: int, h: torch.Tensor) -> torch.Tensor:
        p = f"layers.{i}."
        if cfg.is_attention(i):
            a = p + "self_attn."
            return attention(h, W(a + "q_proj.weight"), W(a + "k_proj.weight"), W(a + "v_proj.weight"),
                             W(a + "out_proj.weight"), W(a + "q_layernorm.weight"), W(a + "k_layernorm.weight"), cfg)
        c = p + "conv."
        return short_conv(h, W(c + "in_proj.weight"), W(c + "conv.weight"), W(c + "out_proj.weight"))
    return mix


def check_tokens(tokens: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Shape [B, S] int, every id in [0, vocab): raise ValueError saying what is wrong."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be [batch, seq_len>=1], got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
        raise ValueError(f"token ids must be in the vocabulary [0, {cfg.vocab_size}); got min {tokens.min()}, max {tokens.max()}")
    return tokens.astype(np.int64)


def check_prompts(prompts, cfg) -> list[np.ndarray]:
    """Prompts to generate from: an int [batch, prompt_len] array, or a list of 1-D int arrays of
    any lengths >= 1 (a ragged batch). Checked like check_tokens; -> one int64 row per prompt."""
    if isinstance(prompts, np.ndarray):
        return list(check_tokens(prompts, cfg))
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be an int [batch, prompt_len] array or a non-empty list of 1-D int arrays, "
                         f"got {type(prompts).__name__}")
    rows = []
    for i, p in enumerate(prompts):
        p = np.asarray(p)
        if p.ndim != 1 or p.size < 1:
            raise ValueError(f"prompt {i} must be a 1-D array of at least one token id, got shape {p.shape}")
        rows.append(check_tokens(p[None], cfg)[0])
    return rows


@torch.no_grad()
def reference_forward(ckpt: Checkpoint, tokens, dtype=torch.float64, device="cpu", debug=False,
                      cache: WeightCache | None = None, tokens_per_chunk: int = 4096) -> ReferenceOutput:
    """Last-position logits of each prompt in `tokens` [B, S]; with debug, per-layer hidden states
    and router choices. Prompts go through in chunks of about `tokens_per_chunk` tokens (the
    attention scores of a chunk are [chunk, heads, S, S])."""
    cfg = ckpt.config
    tokens = check_tokens(tokens, cfg)
    W = _Weights(ckpt, dtype, device, cache)
    out = ReferenceOutput(logits=np.zeros((tokens.shape[0], cfg.vocab_size), np.float32))
    embed = W("embed_tokens.weight")
    step = max(1, tokens_per_chunk // tokens.shape[1])
    parts = []
    for lo in range(0, len(tokens), step):
        x = embed[torch.as_tensor(tokens[lo:lo + step], device=embed.device)]
        part = ReferenceOutput(logits=out.logits[lo:lo + step]) if debug else None
        x = decoder_layers(x, W, cfg, _whole_prompt_mixer(W, cfg), part)
        out.logits[lo:lo + step] = lm_head(x[:, -1], W, cfg).float().cpu().numpy()
        parts.append(part)
    if debug:
        out.hidden = [torch.cat([s.hidden[i] for s in parts]) for i in range(cfg.num_layers)]
        for layer in cfg.moe_layers:
            out.router_indices[layer] = torch.cat([s.router_indices[layer] for s in parts])
            out.router_weights[layer] = torch.cat([s.router_weights[layer] for s in parts])
            out.router_margins[layer] = torch.cat([s.router_margins[layer] for s in parts])
    return out


def reference_logits(ckpt: Checkpoint, tokens, dtype=torch.float64, device="cpu",
                     cache: WeightCache | None = None) -> np.ndarray:
    return reference_forward(ckpt, tokens, dtype=dtype, device=device, cache=cache).logits
