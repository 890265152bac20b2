"""Phase 1 as a whole on a real GPU: the attention block and the norm against the float64
reference, full tiny-model logits VALID at 1e-3 with top-1 100%, and counters that show what the
phase promises (no CPU attention or norm, one activation round trip per attention block,
everything else exactly phase 0's traffic). Skipped without a GPU."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from baseline import host_ops
from baseline.engine import BaselineEngine
from harness.config import get_preset
from harness.jobs.files import validate
from harness.engines.reference import attention, reference_logits, rmsnorm
from harness.checkpoints.synthetic import synthetic_checkpoint
from phases.phase1.engine import Phase1Engine

pytestmark = pytest.mark.gpu
F32 = 4


@pytest.fixture(scope="module")
def checkpoints():
    return {p: synthetic_checkpoint(get_preset(p), seed=3) for p in ("tiny", "tiny-top3")}


@pytest.fixture(scope="module")
def engines(gpu, checkpoints):
    built = {p: Phase1Engine(c, device=gpu.index, progress=False, max_batch=3) for p, c in checkpoints.items()}
    yield built
    for eng in built.values():
        eng.close()


def weight64(engine, name) -> torch.Tensor:
    return torch.from_numpy(engine.weights[name]).double()


def reference_attention(engine, layer: int, h: np.ndarray) -> np.ndarray:
    a = f"layers.{layer}.self_attn."
    w = [weight64(engine, a + n + ".weight") for n in ("q_proj", "k_proj", "v_proj", "out_proj",
                                                         "q_layernorm", "k_layernorm")]
    return attention(torch.from_numpy(h).double(), *w, engine.config).numpy()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq_len", [1, 17, 512])
def test_attention_dev_matches_reference(engines, rng, batch, seq_len):
    """Device in, device out, `batch` sequences each causal from position 0 (phase 5 uses batch > 1)."""
    engine = engines["tiny-top3"]
    cfg = engine.config
    layer = cfg.attention_layers[-1]
    h = rng.normal(size=(batch * seq_len, cfg.hidden_size)).astype(np.float32)
    t = engine.transfers
    d_h = t.to_device(h)
    d_out = engine.attention_dev(layer, d_h, batch, seq_len)
    got = t.from_device(d_out, h.shape).reshape(batch, seq_len, -1)
    t.free(d_h)
    t.free(d_out)
    want = np.stack([reference_attention(engine, layer, h[b * seq_len:(b + 1) * seq_len]) for b in range(batch)])
    assert np.isfinite(got).all()
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"max relative error {rel:.3g}")  # shown with pytest -rA
    assert rel < (1e-4 if seq_len >= 512 else 1e-5), rel  # fp32 RoPE angles at long lengths (see kernels test)


def test_attention_block_matches_baseline_cpu_core(engines, rng):
    """The host wrapper gives what phase 0's CPU attention gives, and rejects positions it cannot do."""
    engine = engines["tiny"]
    cfg = engine.config
    layer = cfg.attention_layers[0]
    h = rng.normal(size=(17, cfg.hidden_size)).astype(np.float32)
    got = engine.attention_block(layer, h, np.arange(17))
    want = reference_attention(engine, layer, h)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    with pytest.raises(ValueError, match="position 0"):
        engine.attention_block(layer, h, np.arange(17) + 5)


@pytest.mark.parametrize("rows", [1, 17, 512])
def test_norm_matches_reference(engines, rng, rows):
    engine = engines["tiny-top3"]
    x = (3 * rng.normal(size=(rows, engine.config.hidden_size))).astype(np.float32)
    for name in ("layers.0.operator_norm.weight", "layers.2.ffn_norm.weight", "embedding_norm.weight"):
        got = engine.norm(x, name)
        want = rmsnorm(torch.from_numpy(x).double(), weight64(engine, name), engine.config.norm_eps).numpy()
        rel = np.abs(got - want).max() / np.abs(want).max()
        print(f"{name}: max relative error {rel:.3g}")
        assert rel < 1e-6


@pytest.mark.parametrize("preset", ["tiny", "tiny-top3"])
@pytest.mark.parametrize("seq_len", [1, 2, 3, 17])
def test_logits_match_reference(engines, checkpoints, rng, preset, seq_len):
    engine, ckpt = engines[preset], checkpoints[preset]
    tokens = rng.integers(0, ckpt.config.vocab_size, size=(3, seq_len), dtype=np.int32)
    got = engine.forward(tokens)
    want = reference_logits(ckpt, tokens, dtype=torch.float64)
    assert got.dtype == np.float32 and got.shape == want.shape
    v = validate(got, want, tol=1e-3)
    print(v)  # shown with pytest -rA
    assert np.abs(got.astype(np.float64) - want).max() < 1e-4
    assert v.valid and v.top1_agreement == 1.0, str(v)


def norm_weight_bytes(cfg) -> int:
    """Weight bytes phase 1 uploads that phase 0 did not: every norm weight, once per use."""
    per_forward = (2 * cfg.num_layers + 1) * cfg.hidden_size  # operator_norm, ffn_norm, final norm
    per_forward += len(cfg.attention_layers) * 2 * cfg.head_dim  # q_layernorm, k_layernorm
    return per_forward * F32


@pytest.mark.parametrize("seq_len", [1, 5])
def test_counters_show_the_phase(engines, checkpoints, rng, monkeypatch, gpu, seq_len):
    engine, ckpt = engines["tiny"], checkpoints["tiny"]
    cfg = engine.config
    tokens = rng.integers(0, cfg.vocab_size, size=(1, seq_len), dtype=np.int32)
    baseline = BaselineEngine(ckpt, device=gpu.index, progress=False)
    try:
        baseline.forward(tokens)
        base = baseline.counters
    finally:
        baseline.close()

    def cpu_path_used(*args, **kwargs):
        raise AssertionError("phase 1 must not run attention or RMSNorm on the CPU")
    monkeypatch.setattr(host_ops, "rmsnorm", cpu_path_used)
    monkeypatch.setattr(host_ops, "attention_core", cpu_path_used)
    engine.counters.reset()
    engine.forward(tokens)
    c = engine.counters
    # Everything but the norms moves the same weights as phase 0 (weights still uploaded per use,
    # experts still one pair at a time).
    assert c.extra["expert_h2d_bytes"] == base.extra["expert_h2d_bytes"]
    assert c.weight_h2d_bytes == base.weight_h2d_bytes + norm_weight_bytes(cfg)
    assert engine.transfers.live_bytes == 0, "phase 1 frees everything it allocates"

    # One attention block: h up once, the block output down once, nothing else but its 6 weights.
    layer = cfg.attention_layers[0]
    h = rng.normal(size=(seq_len, cfg.hidden_size)).astype(np.float32)
    engine.counters.reset()
    engine.attention_block(layer, h, np.arange(seq_len))
    c = engine.counters
    a = f"layers.{layer}.self_attn."
    weights = sum(engine.weights[a + n].nbytes for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                         "out_proj.weight", "q_layernorm.weight",
                                                         "k_layernorm.weight"))
    assert c.weight_h2d_bytes == weights
    assert c.h2d_copies == 6 + 1 and c.h2d_bytes - c.weight_h2d_bytes == h.nbytes
    assert c.d2h_copies == 1 and c.d2h_bytes == h.nbytes
