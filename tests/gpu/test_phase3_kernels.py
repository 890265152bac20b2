"""Phase 3's kernels on a real GPU: the fused ShortConv middle and the whole conv block against
float64 references, the embedding gather, and ids rejected before anything reaches the device.
Every output (and every intermediate the engine allocates) starts as NaN, so an element a kernel
never writes fails the test. Skipped without a GPU."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from baseline import host_ops
from baseline.engine import BaselineEngine
from harness.engines.reference import short_conv

pytestmark = pytest.mark.gpu

NAN_BITS = 0x7FC00000  # a float32 quiet NaN, as a 32-bit word (memset_d32)
LENGTHS = [1, 2, 3, 16, 17, 512, 513]


@pytest.fixture(scope="module")
def engine(gpu, tiny_ckpt):
    from phases.phase3.engine import Phase3Engine
    eng = Phase3Engine(tiny_ckpt, device=gpu.index, progress=False, max_batch=3)
    yield eng
    eng.close()


@pytest.fixture
def poison(engine, monkeypatch):
    """Every buffer the engine takes from dalloc starts as NaN (int buffers: a huge id)."""
    real = engine.dalloc

    def dalloc(nbytes, what):
        ptr = real(nbytes, what)
        engine.transfers.cuda.memset_d32(ptr, NAN_BITS, nbytes // 4)
        return ptr

    monkeypatch.setattr(engine, "dalloc", dalloc)


def poisoned(engine, shape):
    return engine.transfers.to_device(np.full(shape, np.nan, np.float32), what="poisoned output")


def run_gate(engine, bcx, w, batch, seq_len):
    """The fused kernel on host inputs bcx [rows, 3H], w [H, L] -> y [rows, H]."""
    t = engine.transfers
    rows, H, L = bcx.shape[0], w.shape[0], w.shape[1]
    d_bcx, d_w, d_y = t.to_device(bcx), t.to_device(w), poisoned(engine, (rows, H))
    engine.shortconv_gate(d_bcx, d_w, d_y, batch, seq_len, H, L)
    y = t.from_device(d_y, (rows, H))
    for d in (d_bcx, d_w, d_y):
        t.free(d)
    return y


def gate_reference(bcx, w, batch, seq_len):
    """The baseline's CPU middle of ShortConv in float64, one sequence at a time."""
    H, L = w.shape
    parts = [host_ops.shortconv_core(s, w.astype(np.float64).reshape(H, 1, L))
             for s in bcx.astype(np.float64).reshape(batch, seq_len, 3 * H)]
    return np.concatenate(parts)


def assert_close(got, want, rtol=1e-5):
    assert np.isfinite(got).all(), f"{int((~np.isfinite(got)).sum())} outputs never written (still NaN)"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol} x max |want| {scale:.3g}"
    print(f"max abs err {err:.3g}, relative {err / scale:.3g}")


# ----- the fused ShortConv kernel -----------------------------------------------------------------
@pytest.mark.parametrize("H", [64, 2048])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq_len", LENGTHS)
def test_shortconv_gate_matches_cpu_core(engine, rng, H, batch, seq_len):
    rows = batch * seq_len
    bcx = rng.normal(size=(rows, 3 * H)).astype(np.float32)
    w = rng.uniform(-0.6, 0.6, size=(H, 3)).astype(np.float32)
    y = run_gate(engine, bcx, w, batch, seq_len)
    assert_close(y, gate_reference(bcx, w, batch, seq_len))


@pytest.mark.parametrize("L", [1, 2, 4])
def test_shortconv_gate_other_kernel_sizes(engine, rng, L):
    H, batch, seq_len = 33, 3, 7
    bcx = rng.normal(size=(batch * seq_len, 3 * H)).astype(np.float32)
    w = rng.uniform(-0.6, 0.6, size=(H, L)).astype(np.float32)
    assert_close(run_gate(engine, bcx, w, batch, seq_len), gate_reference(bcx, w, batch, seq_len))


def test_shortconv_gate_taps_exactly(engine):
    """One channel, weights (1, 10, 100), B = 1, C = 1, x = token number: y[t] = x[t-2] + 10 x[t-1]
    + 100 x[t] with zeros before each sequence's start. Pins the tap order (no flip) and the
    sequence boundaries exactly."""
    batch, seq_len = 2, 4
    x = np.arange(1, batch * seq_len + 1, dtype=np.float32)
    bcx = np.stack([np.ones_like(x), np.ones_like(x), x], axis=1)  # [rows, 3] = B | C | x
    y = run_gate(engine, bcx, np.array([[1, 10, 100]], np.float32), batch, seq_len)[:, 0]
    np.testing.assert_array_equal(y, [100, 210, 321, 432, 500, 650, 765, 876])


# ----- the whole conv block on the device -----------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq_len", LENGTHS)
def test_conv_dev_matches_reference_block(engine, tiny_ckpt, rng, poison, batch, seq_len):
    cfg = tiny_ckpt.config
    layer, H = cfg.conv_layers[-1], cfg.hidden_size
    h = rng.normal(size=(batch * seq_len, H)).astype(np.float32)
    t = engine.transfers
    d_h = t.to_device(h)
    d_out = engine.conv_dev(layer, d_h, batch, seq_len)
    got = t.from_device(d_out, (batch * seq_len, H))
    engine.dfree(d_out)
    t.free(d_h)
    c = f"layers.{layer}.conv."
    W = {n: tiny_ckpt.get(c + n, torch.float64) for n in ("in_proj.weight", "conv.weight", "out_proj.weight")}
    want = np.concatenate([short_conv(torch.from_numpy(s).double(), W["in_proj.weight"], W["conv.weight"],
                                      W["out_proj.weight"]).numpy()
                           for s in h.reshape(batch, seq_len, H)])
    assert_close(got, want)
    assert t.live_bytes == 0, "conv_dev leaves nothing allocated but its output"


@pytest.mark.parametrize("T", [1, 16, 513])
def test_conv_block_moves_only_its_input_and_output(engine, rng, T):
    """The counters show the promise: h up and out down, nothing in between, against the baseline's
    path on the same engine (BCx [T, 3H] down, y [T, H] up), with the same result."""
    cfg = engine.config
    layer, H, L = cfg.conv_layers[0], cfg.hidden_size, cfg.conv_L_cache
    h = rng.normal(size=(T, H)).astype(np.float32)
    c = engine.counters

    c.reset()
    fused = engine.conv_block(layer, h)
    weights = (3 * H * H + H * L + H * H) * 4
    assert c.weight_h2d_bytes == weights
    assert c.h2d_bytes - c.weight_h2d_bytes == T * H * 4 and c.d2h_bytes == T * H * 4
    assert c.d2h_copies == 1 and c.h2d_copies == 1 + 3
    assert engine.transfers.live_bytes == 0

    c.reset()
    cpu_path = BaselineEngine.conv_block(engine, layer, h)
    assert c.h2d_bytes - c.weight_h2d_bytes == 2 * T * H * 4 and c.d2h_bytes == 4 * T * H * 4
    np.testing.assert_allclose(fused, cpu_path, rtol=1e-4, atol=1e-5 * float(np.abs(cpu_path).max()))


# ----- the embedding gather -------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq_len", [1, 2, 3, 16, 513])
def test_embedding_gathers_rows(engine, rng, poison, batch, seq_len):
    V, H = engine.config.vocab_size, engine.config.hidden_size
    ids = rng.integers(0, V, size=(batch, seq_len), dtype=np.int32)
    ids.flat[0], ids.flat[-1] = V - 1, 0  # both ends of the table
    engine.counters.reset()
    d_x = engine.embed_dev(ids)
    x = engine.transfers.from_device(d_x, (batch * seq_len, H))
    engine.dfree(d_x)
    np.testing.assert_array_equal(x, engine.weights["embed_tokens.weight"][ids.ravel()])
    c = engine.counters
    assert c.h2d_bytes - c.weight_h2d_bytes == ids.size * 4, "only the int32 ids go up besides the table"
    assert c.weight_h2d_bytes == V * H * 4  # phases 0-3: the table comes through device_weight
    assert engine.transfers.live_bytes == 0


def test_embed_host_wrapper(engine, rng):
    ids = rng.integers(0, engine.config.vocab_size, size=17)
    np.testing.assert_array_equal(engine.embed(ids), engine.weights["embed_tokens.weight"][ids])


@pytest.mark.parametrize("bad,where", [(-1, 0), ("V", 5), ("V+1000", 16), (2**32 + 5, 3), (-(2**63), 9)])
def test_bad_ids_are_rejected_before_any_device_work(engine, bad, where):
    V = engine.config.vocab_size
    value = {"V": V, "V+1000": V + 1000}.get(bad, bad)
    ids = np.arange(17, dtype=np.int64)
    ids[where] = value
    engine.counters.reset()
    with pytest.raises(ValueError, match=rf"token id {value} at position {where} .*\[0, {V}\)"):
        engine.embed_dev(ids)
    c = engine.counters
    assert (c.h2d_copies, c.device_allocs) == (0, 0), "nothing may be uploaded or allocated for bad ids"


def test_gather_kernel_never_reads_out_of_bounds(engine, rng):
    """Past the host check (called here directly), an out-of-range id yields a NaN row, no fault."""
    V, H = engine.config.vocab_size, engine.config.hidden_size
    ids = np.array([3, -1, V, 2**31 - 1, V - 1], np.int32)
    table = engine.weights["embed_tokens.weight"]
    t = engine.transfers
    d_ids, d_table = t.to_device(ids), t.to_device(table)
    d_x = t.to_device(np.zeros((len(ids), H), np.float32))  # zeros, not NaN: the NaN rows must be written
    engine.embedding_gather(d_ids, d_table, d_x, len(ids), H, V)
    x = t.from_device(d_x, (len(ids), H))
    for d in (d_ids, d_table, d_x):
        t.free(d)
    np.testing.assert_array_equal(x[[0, 4]], table[[3, V - 1]])
    assert np.isnan(x[1:4]).all()
