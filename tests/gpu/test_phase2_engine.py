"""Phase2Engine on a real GPU: whole tiny models against the float64 reference and against
phase 1 (its parent), the routing of every MoE layer against the reference's, and the promise
of plan 1.1 in the counters: expert weights cross PCIe once per distinct expert per layer
instead of once per (token, expert) pair."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from harness.config import get_preset
from harness.engines.base import engine_class
from harness.jobs.files import validate
from harness.engines.reference import reference_forward
from harness.checkpoints.synthetic import synthetic_checkpoint
from phases.phase1.engine import Phase1Engine as Parent
from phases.phase2.engine import Phase2Engine

pytestmark = pytest.mark.gpu
PRESETS = ["tiny", "tiny-top3"]


@pytest.fixture(scope="module")
def ckpts():
    return {p: synthetic_checkpoint(get_preset(p), seed=0) for p in PRESETS}


@pytest.fixture(scope="module")
def engines(gpu, ckpts):
    """(phase 2, its parent) per preset."""
    built = {p: (Phase2Engine(c, device=gpu.index, progress=False, max_batch=3),
                 Parent(c, device=gpu.index, progress=False, max_batch=3)) for p, c in ckpts.items()}
    yield built
    for pair in built.values():
        for eng in pair:
            eng.close()


@pytest.fixture(scope="module")
def small_ckpt():
    """The small preset's synthetic checkpoint (about 2 GB in bf16)."""
    return synthetic_checkpoint(get_preset("small"), seed=0)


def expert_bytes(cfg) -> int:
    """One expert's w1, w3, w2 in float32 (44,040,192 bytes at the real size)."""
    return 3 * cfg.moe_intermediate_size * cfg.hidden_size * 4


def test_registered_and_built_on_phase1():
    assert engine_class("phase2") is Phase2Engine
    assert issubclass(Phase2Engine, Parent) and Phase2Engine.phase == 2 and Phase2Engine.name == "phase2"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("S", [1, 2, 3, 17])
def test_logits_match_reference_and_parent(engines, ckpts, rng, preset, S):
    eng, parent = engines[preset]
    cfg = ckpts[preset].config
    tokens = rng.integers(0, cfg.vocab_size, size=(3, S), dtype=np.int32)
    got = eng.forward(tokens)
    want = reference_forward(ckpts[preset], tokens, dtype=torch.float64).logits
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got.astype(np.float64) - want).max() < 1e-4
    v = validate(got, want, tol=1e-3)
    assert v.valid and v.top1_agreement == 1.0
    vs_parent = np.abs(got - parent.forward(tokens)).max()
    print(f"{preset} S={S}: max |logit - ref| {v.max_abs_err:.2e}, max |logit - {parent.name}| {vs_parent:.2e}")
    assert vs_parent < 1e-5


@pytest.mark.parametrize("preset", PRESETS)
def test_routing_matches_reference(engines, ckpts, rng, monkeypatch, preset):
    """Every MoE layer's expert ids (and weights) on the GPU equal the float64 reference's."""
    eng, _ = engines[preset]
    cfg = ckpts[preset].config
    B, S, k = 2, 17, cfg.num_experts_per_tok
    seen = []
    real = eng.route_dev

    def recording(layer, d_h, rows):
        d_idx, d_wts = real(layer, d_h, rows)
        seen.append((layer, eng.transfers.from_device(d_idx, (rows, k), np.int32),
                     eng.transfers.from_device(d_wts, (rows, k))))
        return d_idx, d_wts
    monkeypatch.setattr(eng, "route_dev", recording)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, S), dtype=np.int32)
    eng.forward(tokens)
    ref = reference_forward(ckpts[preset], tokens, dtype=torch.float64, debug=True)
    assert [layer for layer, _, _ in seen] == cfg.moe_layers * B  # samples one at a time, layers in order
    for n, (layer, idx, wts) in enumerate(seen):
        b = n // len(cfg.moe_layers)
        np.testing.assert_array_equal(idx, ref.router_indices[layer][b].numpy())
        np.testing.assert_allclose(wts, ref.router_weights[layer][b].numpy(), rtol=1e-5, atol=1e-6)


def distinct_experts(ref, cfg, b: int = 0) -> int:
    """Sum over MoE layers of the experts sample b's tokens were routed to."""
    return sum(len(np.unique(ref.router_indices[layer][b].numpy())) for layer in cfg.moe_layers)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("S", [1, 5, 17])
def test_counters_one_sample(engines, ckpts, rng, preset, S):
    """Expert bytes = distinct experts x 3 x Im x H x 4 exactly; everything else as the parent,
    plus the E-float expert_bias per MoE layer (routing moved to the GPU)."""
    eng, parent = engines[preset]
    cfg = ckpts[preset].config
    tokens = rng.integers(0, cfg.vocab_size, size=(1, S), dtype=np.int32)
    ref = reference_forward(ckpts[preset], tokens, dtype=torch.float64, debug=True)
    for e in (eng, parent):
        e.counters.reset()
        e.forward(tokens)
    c, p = eng.counters, parent.counters
    distinct, pairs = distinct_experts(ref, cfg), S * cfg.num_experts_per_tok * len(cfg.moe_layers)
    assert c.extra["expert_h2d_bytes"] == distinct * expert_bytes(cfg)
    assert p.extra["expert_h2d_bytes"] == pairs * expert_bytes(cfg)
    n_moe = len(cfg.moe_layers)
    assert (c.weight_h2d_bytes - c.extra["expert_h2d_bytes"]
            == p.weight_h2d_bytes - p.extra["expert_h2d_bytes"] + n_moe * cfg.num_experts * 4)
    assert eng.transfers.live_bytes == 0, "phase 2 frees everything it allocates"


@pytest.mark.slow
@pytest.mark.parametrize("S,at_least", [(16, 2), (128, 10)])
def test_small_preset_expert_bytes_drop(gpu, small_ckpt, S, at_least):
    """Real hidden size and expert count (small: 3 MoE layers, E=32, k=4, 44 MB per expert):
    expert bytes per sample fall from pairs x 44 MB to distinct experts x 44 MB."""
    cfg = get_preset("small")
    ckpt = small_ckpt
    tokens = np.random.default_rng(S).integers(0, cfg.vocab_size, size=(1, S), dtype=np.int32)
    eng = Phase2Engine(ckpt, device=gpu.index, progress=False)
    try:
        eng.counters.reset()
        got = eng.forward(tokens)
        c = eng.counters
    finally:
        eng.close()
    ref = reference_forward(ckpt, tokens, dtype=torch.float64, debug=True)
    distinct, pairs = distinct_experts(ref, cfg), S * cfg.num_experts_per_tok * len(cfg.moe_layers)
    assert c.extra["expert_h2d_bytes"] == distinct * expert_bytes(cfg)
    ratio = pairs / distinct
    print(f"small S={S}: pairs={pairs} distinct={distinct} expert bytes/sample phase<=1 "
          f"{pairs * expert_bytes(cfg):,} -> phase 2 {c.extra['expert_h2d_bytes']:,} ({ratio:.1f}x fewer); "
          f"max |logit - ref| {np.abs(got - ref.logits).max():.2e}")
    assert ratio >= at_least
    v = validate(got, ref.logits, tol=1e-3)
    assert v.valid and v.top1_agreement == 1.0

