"""Parameter counts, FLOPs and bytes per token (model.md section 4), from any ModelConfig."""
from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


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
