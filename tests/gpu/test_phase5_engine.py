"""Phase 5 on a real GPU (tiny presets), one process: many prompts in one model forward give the
same logits as one at a time and as the float64 reference; mixed-length prompts padded on the
right are exact (any padding ids give bit-identical logits); a timed forward moves only ids up
and logits down, once per model forward, not per prompt."""
from __future__ import annotations

import numpy as np
import pytest

from harness.config import get_preset
from harness.jobs.files import synthetic_prompts, validate
from harness.engines.reference import reference_logits
from harness.checkpoints.synthetic import synthetic_checkpoint
from phases.phase5.engine import Phase5Engine

pytestmark = pytest.mark.gpu

RAGGED_LENGTHS = [1, 2, 3, 17, 40]


@pytest.fixture(scope="module", params=["tiny", "tiny-top3"])
def ckpt(request):
    return synthetic_checkpoint(get_preset(request.param), seed=3)


@pytest.fixture(scope="module")
def engine(gpu, ckpt):
    eng = Phase5Engine(ckpt, device=gpu.index, progress=False, max_batch=64)
    yield eng
    eng.close()


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("seq_len", [1, 2, 3, 17])
def test_logits_match_reference(engine, ckpt, seq_len):
    tokens = synthetic_prompts(ckpt.config.vocab_size, 5, seq_len, seed=seq_len)
    got = engine.forward(tokens)
    want = reference_logits(ckpt, tokens)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    v = validate(got, want)
    assert v.valid and v.top1_agreement == 1.0


def test_batched_equals_one_at_a_time(engine, ckpt):
    tokens = synthetic_prompts(ckpt.config.vocab_size, 12, 9, seed=11)
    together = engine.forward(tokens)
    alone = np.concatenate([engine.forward(tokens[i:i + 1]) for i in range(len(tokens))])
    print(f"\n{ckpt.config.name}: 12 prompts in one forward vs one at a time: max |diff| {max_diff(together, alone):.3g}")
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)


def test_chunked_forward_equals_one_model_forward(gpu, ckpt, engine):
    """max_tokens=20 at seq_len 9: 2 prompts per model forward, 6 pipelined chunks. Every step is
    per row or per sequence, so the split changes nothing, bit for bit."""
    tokens = synthetic_prompts(ckpt.config.vocab_size, 11, 9, seed=12)
    small = Phase5Engine(ckpt, device=gpu.index, progress=False, max_batch=64, max_tokens=20)
    try:
        assert small.sequences_per_chunk(9) == 2
        np.testing.assert_array_equal(small.forward(tokens), engine.forward(tokens))
    finally:
        small.close()


def test_ragged_batch_equals_one_at_a_time_and_reference(engine, ckpt):
    rng = np.random.default_rng(7)
    prompts = [rng.integers(8, ckpt.config.vocab_size, size=n).astype(np.int32) for n in RAGGED_LENGTHS]
    together = engine.forward_ragged(prompts)
    alone = np.concatenate([engine.forward(p[None, :]) for p in prompts])
    want = np.concatenate([reference_logits(ckpt, p[None, :]) for p in prompts])
    print(f"\n{ckpt.config.name}: ragged lengths {RAGGED_LENGTHS} padded to 40 vs alone: max |diff| "
          f"{max_diff(together, alone):.3g}; vs float64 reference {max_diff(together, want):.3g}")
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)
    np.testing.assert_allclose(together, want, atol=1e-4, rtol=0)
    assert validate(together, want).top1_agreement == 1.0


def test_padding_ids_never_change_logits_bit_for_bit(engine, ckpt):
    V = ckpt.config.vocab_size
    rng = np.random.default_rng(9)
    lengths = np.array(RAGGED_LENGTHS)
    tokens = rng.integers(8, V, size=(len(lengths), lengths.max())).astype(np.int32)
    garbage = rng.integers(0, V, size=tokens.shape).astype(np.int32)  # different ids in every padded slot
    other = np.where(np.arange(tokens.shape[1])[None, :] < lengths[:, None], tokens, garbage)
    assert (other != tokens).any()
    a = engine.forward_padded(tokens, lengths)
    b = engine.forward_padded(other, lengths)
    c = engine.forward_ragged([t[:n] for t, n in zip(tokens, lengths)], pad_id=V - 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_timed_forward_moves_only_ids_and_logits_once_per_model_forward(engine, ckpt):
    cfg = ckpt.config
    tokens = synthetic_prompts(cfg.vocab_size, 32, 16, seed=5)
    engine.forward(tokens)  # warm-up: sizes the workspace and the pinned buffers
    engine.synchronize()
    engine.counters.reset()
    engine.forward(tokens)
    c = engine.counters
    assert c.weight_h2d_bytes == 0
    assert c.device_allocs == 0
    assert c.h2d_bytes == tokens.size * 4 and c.h2d_pinned_bytes == c.h2d_bytes
    assert c.d2h_bytes == len(tokens) * cfg.vocab_size * 4  # logits only: phase 4 sizes the experts on the device
    assert c.extra["load_mode"] == "bcast" and c.extra["load_bytes_read"] > 0  # kept across the reset
    assert c.extra["load_bytes_received"] == 0  # one process: it read everything itself


def test_empty_call_and_bad_input(engine, ckpt):
    assert engine.forward(np.zeros((0, 4), np.int32)).shape == (0, ckpt.config.vocab_size)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        engine.forward_ragged([np.array([5, 6]), np.array([], np.int32)])
    with pytest.raises(ValueError, match="max_batch=64"):
        engine.forward(np.ones((65, 2), np.int32))
    with pytest.raises(ValueError, match="vocabulary"):
        engine.forward_ragged([np.array([5, ckpt.config.vocab_size])])


def test_expert_parallel_alone_is_phase_2s_path(gpu, ckpt, engine):
    """One process is a group of one: expert_parallel=True keeps every expert and the same logits."""
    ep = Phase5Engine(ckpt, device=gpu.index, progress=False, max_batch=8, expert_parallel=True)
    try:
        assert ep.ep_size == 1 and not ep.collective_forward
        tokens = synthetic_prompts(ckpt.config.vocab_size, 4, 6, seed=8)
        np.testing.assert_array_equal(ep.forward(tokens), engine.forward(tokens))
        ep.calibrate(tokens, 2)  # the harness's hook: nothing to place in a group of one
        assert "ep_balance" not in ep.counters.extra and ep.record_fields([]) == {"expert_shards": 1}
        assert engine.counters.extra["ep_mode"].startswith("auto: the node's ranks use 1 GPU")
    finally:
        ep.close()
