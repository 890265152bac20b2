"""The two floors a prefill forward cannot beat on one GPU, as tokens/s ceilings (docs/optimized.md, the floors).

  * compute: the model's useful FLOPs per token (model_stats.job_flops: last-position LM head,
    causal attention) at the math mode's peak, 788 TFLOP/s bf16 or 67 TFLOP/s fp32 per H100;
  * weight streaming: the bytes one forward of T tokens must read from HBM at 3.0 TB/s, every
    non-expert weight once (the tied embedding is read whole as the LM head) plus the experts the
    forward's T tokens touch. Under uniform routing each token picks top_k of E experts, so a layer
    touches E(1 - (1 - k/E)^T) of them (model_stats.expected_distinct_experts); a record that
    counted what its routing actually touched (`routed_bytes`, the expert bytes of one forward
    call) replaces the estimate, which matters for skewed routing (fewer experts touched).
The floor at T tokens per forward is the lower of the two ceilings: in bf16 on the full model,
streaming below ~1,550 tokens per forward (from ~64 tokens nearly every expert is touched, and
16.7 GB take 5.6 ms, in which 788 TFLOP/s computes ~1,550 tokens of 2.85 GFLOP), compute above.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.config import ModelConfig
from harness.measure.model_stats import expected_distinct_experts, expert_params, model_stats, non_expert_params

HBM_BYTES_PER_S = 3.0e12  # H100 device-to-device copy, measured
# Arithmetic ceilings of one H100 per dtype: bf16 as measured with cuBLAS on the project's H100, fp32 CUDA
# cores from NVIDIA's datasheet; fp16 tensor cores run at the bf16 rate on Hopper.
PEAK_FLOPS = {"bf16": 788e12, "fp16": 788e12, "fp32": 67e12}
WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def _dtype(dtype: str) -> str:
    if dtype not in PEAK_FLOPS:
        raise ValueError(f"no floor for dtype {dtype!r}; floors are defined for {', '.join(PEAK_FLOPS)}")
    return dtype


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Useful FLOPs per prompt token of the job's forward (model_stats.job_flops)."""
    return model_stats(cfg).job_flops(seq_len) / seq_len


def compute_ceiling_tokens_per_s(cfg: ModelConfig, dtype: str, seq_len: int, gpus: int = 1) -> float:
    return PEAK_FLOPS[_dtype(dtype)] * max(1, gpus) / flops_per_token(cfg, seq_len)


def expert_bytes(cfg: ModelConfig, dtype: str) -> float:
    """One expert's three matrices."""
    return float(expert_params(cfg) * WEIGHT_BYTES[_dtype(dtype)])


def non_expert_bytes(cfg: ModelConfig, dtype: str) -> float:
    return float(non_expert_params(cfg) * WEIGHT_BYTES[_dtype(dtype)])


def forward_bytes(cfg: ModelConfig, dtype: str, tokens: int, routed_bytes: float | None = None) -> float:
    """HBM bytes one forward of `tokens` tokens must read: non-expert weights + touched experts."""
    if routed_bytes is not None:
        return non_expert_bytes(cfg, dtype) + float(routed_bytes)
    touched = len(cfg.moe_layers) * expected_distinct_experts(cfg, tokens) * expert_bytes(cfg, dtype)
    return non_expert_bytes(cfg, dtype) + touched


def streaming_ceiling_tokens_per_s(cfg: ModelConfig, dtype: str, tokens: int, routed_bytes: float | None = None,
                                   gpus: int = 1) -> float:
    return tokens * HBM_BYTES_PER_S * max(1, gpus) / forward_bytes(cfg, dtype, tokens, routed_bytes)


@dataclass(frozen=True)
class Floor:
    compute_tokens_per_s: float
    streaming_tokens_per_s: float

    @property
    def tokens_per_s(self) -> float:
        return min(self.compute_tokens_per_s, self.streaming_tokens_per_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_tokens_per_s <= self.streaming_tokens_per_s else "weight streaming"

    def pct(self, achieved_tokens_per_s: float | None) -> float | None:
        """Achieved throughput as a share of the ceiling (100 = at the floor)."""
        if achieved_tokens_per_s is None or achieved_tokens_per_s != achieved_tokens_per_s:
            return None
        return 100.0 * achieved_tokens_per_s / self.tokens_per_s


def prefill_floor(cfg: ModelConfig, dtype: str, seq_len: int, batch: int, routed_bytes: float | None = None,
                  gpus: int = 1) -> Floor:
    """The floor of a forward of `batch` prompts of `seq_len` tokens (tokens per forward = the product)."""
    tokens = max(1, batch) * max(1, seq_len)
    return Floor(compute_ceiling_tokens_per_s(cfg, dtype, seq_len, gpus),
                 streaming_ceiling_tokens_per_s(cfg, dtype, tokens, routed_bytes, gpus))
