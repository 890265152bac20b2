"""The bytes a forward must read, judged by its own routing: an engine's touched_experts (here the
reference's, from its router choices) and measure.model_stats.forward_weight_bytes."""
from __future__ import annotations

import pytest

from harness.checkpoints.synthetic import synthetic_checkpoint
from harness.config import get_preset
from harness.engines.reference import reference_forward
from harness.engines.reference_engine import ReferenceEngine
from harness.jobs.files import synthetic_prompts
from harness.measure.model_stats import expert_params, forward_weight_bytes, model_stats


@pytest.fixture(scope="module")
def ckpt():
    return synthetic_checkpoint(get_preset("tiny"))


def test_reference_counts_the_distinct_experts_its_router_picked(ckpt):
    cfg = ckpt.config
    tokens = synthetic_prompts(cfg.vocab_size, 2, 5, seed=1)
    got = ReferenceEngine(ckpt, "cpu").touched_experts(tokens)
    idx = reference_forward(ckpt, tokens, debug=True).router_indices
    assert got == [len(set(idx[i].flatten().tolist())) for i in cfg.moe_layers]
    one = ReferenceEngine(ckpt, "cpu").touched_experts(tokens[:1, :1])
    assert one == [cfg.num_experts_per_tok] * len(cfg.moe_layers)  # one token: exactly its top-k


def test_forward_weight_bytes(ckpt):
    cfg = ckpt.config
    n = len(cfg.moe_layers)
    everything = forward_weight_bytes(cfg, [cfg.num_experts] * n, weight_bytes=2)
    assert everything == 2 * model_stats(cfg).total_params  # every expert touched: the whole model
    fewer = forward_weight_bytes(cfg, [cfg.num_experts - 1] + [cfg.num_experts] * (n - 1), weight_bytes=4)
    assert fewer == 4 * (model_stats(cfg).total_params - expert_params(cfg))
    with pytest.raises(ValueError, match="MoE layers"):
        forward_weight_bytes(cfg, [1])


def test_full_model_at_one_token_reads_about_a_fifth_of_its_experts():
    cfg = get_preset("lfm2-8b-a1b")
    k = cfg.num_experts_per_tok
    one = forward_weight_bytes(cfg, [k] * len(cfg.moe_layers))
    full = forward_weight_bytes(cfg, [cfg.num_experts] * len(cfg.moe_layers))
    assert 2.5e9 < one < 3.5e9 and 16e9 < full < 17.5e9  # model.md: 3.1 GB per decode token, 16.7 GB in all
    assert one / full < 0.2
