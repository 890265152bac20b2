"""Parameter counts, FLOPs and bytes per token, from any ModelConfig."""
from __future__ import annotations

from dataclasses import dataclass

from harness.config import ModelConfig


@dataclass(frozen=True)
class ModelStats:
    total_params: int
    active_params: int  # per token: embedding/LM head once, 4 experts + router per MoE layer
    matmul_params_job: int  # weights multiplied per token in the job's forward (LM head excluded)
    lm_head_params: int
    attn_flops_per_key: int  # attention scores + AV FLOPs per (token, attended key)

    def job_flops(self, seq_len: int) -> float:
        """Useful FLOPs of one sample of the job: every position through every layer, the LM
        head on the last position only, causal attention over T(T+1)/2 (query, key) pairs."""
        T = seq_len
        return 2.0 * self.matmul_params_job * T + 2.0 * self.lm_head_params + self.attn_flops_per_key * T * (T + 1) / 2


def model_stats(cfg: ModelConfig) -> ModelStats:
    H, V = cfg.hidden_size, cfg.vocab_size
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    embed = V * H
    conv_mm = 3 * H * H + H * H
    conv = conv_mm + H * cfg.conv_L_cache
    attn_mm = H * nh * hd + 2 * H * nkv * hd + nh * hd * H
    attn = attn_mm + 2 * hd
    dense = 3 * H * cfg.intermediate_size
    expert = 3 * H * cfg.moe_intermediate_size
    router = cfg.num_experts * H
    norms = 2 * cfg.num_layers * H + H

    total = embed + norms
    active = embed + norms
    mm_job = 0
    for i in range(cfg.num_layers):
        mixer, mixer_mm = (attn, attn_mm) if cfg.is_attention(i) else (conv, conv_mm)
        total += mixer
        active += mixer
        mm_job += mixer_mm
        if cfg.is_moe(i):
            total += cfg.num_experts * expert + router
            act = cfg.num_experts_per_tok * expert + router
            active += act
            mm_job += act
        else:
            total += dense
            active += dense
            mm_job += dense
    n_attn = len(cfg.attention_layers)
    return ModelStats(
        total_params=total,
        active_params=active,
        matmul_params_job=mm_job,
        lm_head_params=embed,
        attn_flops_per_key=n_attn * 4 * nh * hd,
    )


def expected_distinct_experts(cfg: ModelConfig, tokens: int) -> float:
    """Experts one MoE layer touches for `tokens` tokens under uniform routing: E(1 - (1-k/E)^T)."""
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    return E * (1.0 - (1.0 - k / E) ** tokens)


def expert_params(cfg: ModelConfig) -> int:
    """Weights of one expert (w1, w3, w2)."""
    return 3 * cfg.hidden_size * cfg.moe_intermediate_size


def non_expert_params(cfg: ModelConfig) -> int:
    """Every weight but the routed experts' (read once per forward whatever the routing)."""
    return model_stats(cfg).total_params - len(cfg.moe_layers) * cfg.num_experts * expert_params(cfg)


def decode_bytes_per_step(cfg: ModelConfig, batch: int, context: int, weight_bytes: int = 2,
                          cache_bytes: int = 2) -> float:
    """HBM bytes one decode step must read: every non-expert weight, the experts the batch's
    tokens touch (uniform-routing estimate), each sequence's KV cache over `context` positions and
    its conv state. The decode floor is this over the GPU's memory bandwidth (3.0 TB/s measured
    device-to-device on the H100)."""
    H = cfg.hidden_size
    touched = len(cfg.moe_layers) * expected_distinct_experts(cfg, batch) * expert_params(cfg)
    kv = len(cfg.attention_layers) * 2 * cfg.num_key_value_heads * cfg.head_dim * context
    conv = len(cfg.conv_layers) * (cfg.conv_L_cache - 1) * H
    return (non_expert_params(cfg) + touched) * weight_bytes + batch * (kv + conv) * cache_bytes
