"""The routing-imbalance measure behind the suite's prefill-skew part."""
from __future__ import annotations

import numpy as np
import pytest

from harness.measure.routing import busiest_quarter_share, layer_shares


def test_uniform_and_concentrated_routing():
    assert busiest_quarter_share(np.arange(32).repeat(10), 32) == pytest.approx(0.25)
    # 8 experts get 70 slots each, 24 get 10: 560 of 800
    idx = np.concatenate([np.arange(8).repeat(70), np.arange(8, 32).repeat(10)])
    assert busiest_quarter_share(idx.reshape(-1, 4), 32) == pytest.approx(0.7)


def test_skew_concentrates_the_reference_routing_on_a_tiny_model():
    from harness.checkpoints.synthetic import synthetic_checkpoint
    from harness.config import get_preset
    from harness.jobs.files import synthetic_prompts
    cfg = get_preset("tiny")
    tokens = synthetic_prompts(cfg.vocab_size, 8, 32, 0, cfg.bos_token_id)
    even = layer_shares(synthetic_checkpoint(cfg, seed=0, skew=0.0), tokens)
    skewed = layer_shares(synthetic_checkpoint(cfg, seed=0, skew=2.0), tokens)
    assert sorted(even) == cfg.moe_layers
    assert np.mean(list(skewed.values())) > np.mean(list(even.values())) + 0.2
