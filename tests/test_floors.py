"""The prefill floors against the full model's published figures (docs/optimized.md, the floors)."""
from __future__ import annotations

import pytest

from harness.config import get_preset
from harness.measure.floors import (HBM_BYTES_PER_S, expert_bytes, forward_bytes, non_expert_bytes,
                                    prefill_floor)

FULL = get_preset("lfm2-8b-a1b")


def test_compute_ceiling_is_performance_md_276k_tokens_per_s_in_bf16():
    # ~276,000 tokens/s bf16, ~23,500 fp32 (2.85 GFLOP per token, last-token logits)
    assert prefill_floor(FULL, "bf16", 16, 64).compute_tokens_per_s == pytest.approx(276_000, rel=0.01)
    assert prefill_floor(FULL, "fp32", 16, 64).compute_tokens_per_s == pytest.approx(23_500, rel=0.01)


def test_one_token_reads_the_active_weights_and_all_tokens_read_the_whole_model():
    # 1.558 B active parameters -> 3.1 GB bf16 per decode token; 16.68 GB all weights
    assert forward_bytes(FULL, "bf16", 1) == pytest.approx(2 * 1_557_740_288, rel=1e-3)
    assert forward_bytes(FULL, "bf16", 100_000) == pytest.approx(16.68e9, rel=1e-3)
    assert forward_bytes(FULL, "fp32", 100_000) == pytest.approx(2 * forward_bytes(FULL, "bf16", 100_000))
    one = prefill_floor(FULL, "bf16", 1, 1)
    assert one.bound == "weight streaming" and one.tokens_per_s == pytest.approx(960, rel=0.01)


def test_the_floor_switches_from_streaming_to_compute_near_1550_tokens():
    assert prefill_floor(FULL, "bf16", 16, 64).bound == "weight streaming"  # 1,024 tokens
    assert prefill_floor(FULL, "bf16", 16, 128).bound == "compute"  # 2,048 tokens
    f = prefill_floor(FULL, "bf16", 16, 64)
    assert f.tokens_per_s == f.streaming_tokens_per_s == pytest.approx(1024 * HBM_BYTES_PER_S / 16.68e9, rel=0.01)
    assert f.pct(f.tokens_per_s / 2) == pytest.approx(50.0)
    assert f.pct(None) is None


def test_routed_bytes_replace_the_uniform_estimate():
    two_experts_per_layer = 2 * expert_bytes(FULL, "bf16") * len(FULL.moe_layers)
    assert forward_bytes(FULL, "bf16", 1024, routed_bytes=two_experts_per_layer) == pytest.approx(
        non_expert_bytes(FULL, "bf16") + two_experts_per_layer)
    skewed = prefill_floor(FULL, "bf16", 16, 64, routed_bytes=two_experts_per_layer)
    assert skewed.streaming_tokens_per_s > 5 * prefill_floor(FULL, "bf16", 16, 64).streaming_tokens_per_s


def test_two_gpus_double_both_ceilings():
    one, two = prefill_floor(FULL, "bf16", 16, 4), prefill_floor(FULL, "bf16", 16, 4, gpus=2)
    assert two.compute_tokens_per_s == pytest.approx(2 * one.compute_tokens_per_s)
    assert two.streaming_tokens_per_s == pytest.approx(2 * one.streaming_tokens_per_s)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="fp64"):
        prefill_floor(FULL, "fp64", 16, 1)
