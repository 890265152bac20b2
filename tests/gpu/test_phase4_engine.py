"""Phase 4 on a real GPU (tiny presets): same logits as the reference, and in the timed pattern
(a forward after the warm-up) no weight upload, no device allocation, only ids up and logits down."""
from __future__ import annotations

import numpy as np
import pytest

from harness.config import get_preset
from harness.jobs.files import synthetic_prompts, validate
from harness.engines.reference import reference_logits
from harness.checkpoints.synthetic import synthetic_checkpoint
from phases.phase4.engine import Phase4Engine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["tiny", "tiny-top3"])
def ckpt(request):
    return synthetic_checkpoint(get_preset(request.param), seed=3)


@pytest.fixture(scope="module")
def engine(gpu, ckpt):
    eng = Phase4Engine(ckpt, device=gpu.index, progress=False, max_batch=4)
    yield eng
    eng.close()


@pytest.mark.parametrize("seq_len", [1, 2, 3, 17])
def test_logits_match_reference(engine, ckpt, seq_len):
    tokens = synthetic_prompts(ckpt.config.vocab_size, 3, seq_len, seed=seq_len)
    got = engine.forward(tokens)
    want = reference_logits(ckpt, tokens)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    v = validate(got, want)
    assert v.valid and v.top1_agreement == 1.0


def test_pipelined_batch_equals_one_at_a_time(engine, ckpt):
    tokens = synthetic_prompts(ckpt.config.vocab_size, 4, 9, seed=11)
    together = engine.forward(tokens)
    alone = np.concatenate([engine.forward(tokens[i:i + 1]) for i in range(4)])
    np.testing.assert_array_equal(together, alone)


def test_timed_forward_moves_only_ids_and_logits(engine, ckpt):
    cfg = ckpt.config
    tokens = synthetic_prompts(cfg.vocab_size, 4, 16, seed=5)
    engine.forward(tokens)  # warm-up: sizes the workspace and the pinned buffers
    engine.synchronize()
    engine.counters.reset()
    engine.forward(tokens)
    c = engine.counters
    assert c.weight_h2d_bytes == 0
    assert c.device_allocs == 0
    assert c.h2d_bytes == tokens.size * 4
    assert c.h2d_pinned_bytes == c.h2d_bytes
    assert c.d2h_bytes == len(tokens) * cfg.vocab_size * 4  # the expert counts stay on the device now


@pytest.mark.parametrize("seq_len", [1, 70])  # 1: most experts idle; 70: experts with > 32 rows (two row tiles)
def test_device_sized_experts_give_phase_3s_bits(gpu, engine, ckpt, seq_len):
    """Same GEMM and SwiGLU arithmetic as phase 2's host-sized experts, so the same logits, bit for bit."""
    from phases.phase3.engine import Phase3Engine
    tokens = synthetic_prompts(ckpt.config.vocab_size, 2, seq_len, seed=70 + seq_len)
    p3 = Phase3Engine(ckpt, device=gpu.index, progress=False, max_batch=2)
    try:
        np.testing.assert_array_equal(engine.forward(tokens), p3.forward(tokens))
    finally:
        p3.close()


def test_weights_that_do_not_fit_are_streamed_and_still_correct(gpu, ckpt, monkeypatch):
    import phases.phase4.engine as p4
    free, _ = gpu.mem_info()
    # Leave room for the dense weights only: every expert is uploaded per use.
    monkeypatch.setattr(p4, "HEADROOM", free - 200_000)
    eng = Phase4Engine(ckpt, device=gpu.index, progress=False, max_batch=2)
    try:
        assert eng.resident.host, "expected some weights to be streamed"
        tokens = synthetic_prompts(ckpt.config.vocab_size, 2, 5, seed=2)
        np.testing.assert_allclose(eng.forward(tokens), reference_logits(ckpt, tokens), atol=1e-4, rtol=0)
    finally:
        eng.close()


def test_timeline_records_copies_beside_compute(gpu, ckpt):
    eng = Phase4Engine(ckpt, device=gpu.index, progress=False, max_batch=4, timeline=True)
    try:
        tokens = synthetic_prompts(ckpt.config.vocab_size, 4, 16, seed=6)
        eng.forward(tokens)
        spans = eng.counters.extra["timeline"]
        by = {s["name"]: s for s in spans}
        assert sorted(s["lane"] for s in spans) == ["compute"] * 4 + ["d2h"] * 4 + ["h2d"] * 4
        for b in range(4):
            assert by[f"logits {b}"]["start_ms"] >= by[f"sample {b}"]["end_ms"] - 1e-3  # after its compute
            assert by[f"sample {b}"]["start_ms"] >= by[f"ids {b}"]["end_ms"] - 1e-3  # after its ids
        assert 0.0 <= eng.counters.extra["d2h_overlap_with_compute"] <= 1.0
    finally:
        eng.close()
