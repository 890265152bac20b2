"""Phase 1's kernels one by one against the reference ops (harness.engines.reference, float64) on random
inputs: RMSNorm, RoPE, attention scores, causal softmax, attention output. Shapes include
sequence lengths 1, 17 and 512, widths that are not multiples of the block or tile sizes, and
batches of 1 and 3. Every output buffer is filled with NaN before the launch, so an element the
kernel never writes fails the test. Skipped without a GPU."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.config import get_preset
from harness.engines.reference import apply_rope, rmsnorm, rope_cos_sin
from harness.checkpoints.synthetic import synthetic_checkpoint
from harness.checkpoints.base import DictCheckpoint
from phases.phase1.engine import Phase1Engine

pytestmark = pytest.mark.gpu


def attention_ckpt(nh: int, nkv: int, hd: int) -> DictCheckpoint:
    """A one-layer checkpoint whose attention has nh / nkv heads of width hd (the engine reads the
    head shape from its config)."""
    base = get_preset("tiny")
    cfg = dataclasses.replace(base, hidden_size=nh * hd, num_attention_heads=nh, num_key_value_heads=nkv,
                              head_dim=hd, num_dense_layers=1, layer_types=("full_attention",),
                              intermediate_size=8, vocab_size=16, name=f"att-{nh}-{nkv}-{hd}")
    return synthetic_checkpoint(cfg, seed=1)


_engines: dict = {}


@pytest.fixture(scope="module")
def engine_for(gpu):
    def get(nh=4, nkv=2, hd=16):
        key = (nh, nkv, hd)
        if key not in _engines:
            _engines[key] = Phase1Engine(attention_ckpt(nh, nkv, hd), device=gpu.index, progress=False)
        return _engines[key]
    yield get
    for eng in _engines.values():
        eng.close()
    _engines.clear()


def upload(engine, a: np.ndarray):
    return engine.transfers.to_device(np.ascontiguousarray(a, dtype=np.float32))


def poisoned(engine, shape):
    return upload(engine, np.full(shape, np.nan, np.float32))


def download_and_free(engine, d_out, shape, *others) -> np.ndarray:
    out = engine.transfers.from_device(d_out, shape)
    for d in (d_out, *others):
        engine.transfers.free(d)
    return out


def assert_close(got: np.ndarray, want: np.ndarray, tol: float):
    assert np.isfinite(got).all(), f"{np.count_nonzero(~np.isfinite(got))} outputs never written (or not finite)"
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    print(f"max relative error {err:.3g} (tolerance {tol:.3g})")  # shown with pytest -rA
    assert err < tol, f"relative error {err:.3g} >= {tol}"


# ----- RMSNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,dim", [(1, 64), (17, 96), (512, 2048), (3 * 17 * 4, 16), (5, 1000), (2, 2049),
                                      (7, 1)])
def test_rmsnorm_kernel(engine_for, rng, rows, dim):
    engine = engine_for()
    x = (2 * rng.normal(size=(rows, dim))).astype(np.float32)
    w = (1 + 0.1 * rng.normal(size=dim)).astype(np.float32)
    d_x, d_w, d_y = upload(engine, x), upload(engine, w), poisoned(engine, (rows, dim))
    engine.rmsnorm_rows(d_x, d_w, d_y, rows, dim)
    y = download_and_free(engine, d_y, (rows, dim), d_x, d_w)
    want = rmsnorm(torch.from_numpy(x).double(), torch.from_numpy(w).double(), engine.config.norm_eps).numpy()
    assert_close(y, want, 1e-6)


def test_rmsnorm_in_place_and_norm_dev(engine_for, rng):
    """The engine normalises q and k in place; norm_dev reads the weight by name."""
    engine = engine_for()
    name = "layers.0.self_attn.q_layernorm.weight"
    rows, dim = 17 * engine.config.num_attention_heads, engine.config.head_dim
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    d_x = upload(engine, x)
    assert engine.norm_dev(d_x, rows, name, d_out=d_x) is d_x
    y = download_and_free(engine, d_x, (rows, dim))
    w = torch.from_numpy(engine.weights[name]).double()
    assert_close(y, rmsnorm(torch.from_numpy(x).double(), w, engine.config.norm_eps).numpy(), 1e-6)


# ----- RoPE ---------------------------------------------------------------------------------------
ROPE_SHAPES = [(1, 1, 4, 16), (1, 17, 32, 64), (3, 17, 2, 16), (1, 512, 8, 64), (2, 5, 3, 6), (3, 512, 2, 64)]


@pytest.mark.parametrize("batch,seq_len,heads,hd", ROPE_SHAPES)
def test_rope_kernel(engine_for, rng, batch, seq_len, heads, hd):
    engine = engine_for(nh=heads, nkv=1, hd=hd)
    T = batch * seq_len
    x = rng.normal(size=(T, heads * hd)).astype(np.float32)
    d_x, d_y = upload(engine, x), poisoned(engine, x.shape)
    engine.rope_rows(d_x, d_y, T, heads, seq_len)
    y = download_and_free(engine, d_y, x.shape, d_x)
    cos, sin = rope_cos_sin(torch.arange(seq_len), hd, engine.config.rope_theta, torch.float64)
    xs = torch.from_numpy(x).double().view(batch, seq_len, heads, hd)
    want = apply_rope(xs, cos, sin).reshape(T, heads * hd).numpy()  # positions restart per sequence
    # Angles are float32 on both sides (as HF): a last-bit difference in inv_freq moves the angle
    # at position p by ~p * 2^-24, so the allowed error grows with the length.
    assert_close(y, want, max(1e-6, seq_len * 2.0 ** -23))


def test_rope_in_place(engine_for, rng):
    engine = engine_for(nh=4, nkv=2, hd=16)
    x = rng.normal(size=(40, 4 * 16)).astype(np.float32)
    d_x, d_y = upload(engine, x), poisoned(engine, x.shape)
    engine.rope_rows(d_x, d_y, 40, 4, 20)
    engine.rope_rows(d_x, d_x, 40, 4, 20)
    out_of_place = download_and_free(engine, d_y, x.shape)
    in_place = download_and_free(engine, d_x, x.shape)
    np.testing.assert_array_equal(in_place, out_of_place)


# ----- attention: scores, causal softmax, output ------------------------------------------------------
# (batch, seq_len, nh, nkv, hd): lengths 1, 17, 33, 512; head dims 16, 24 (not a tile multiple), 64;
# GQA groups 1, 2, 3, 4.
ATTENTION_SHAPES = [(1, 1, 4, 2, 16), (1, 17, 4, 2, 16), (3, 17, 6, 2, 16), (2, 33, 4, 4, 24),
                    (1, 512, 32, 8, 64), (3, 5, 6, 3, 64)]


def qkv(rng, batch, seq_len, nh, nkv, hd):
    q = rng.normal(size=(batch * seq_len, nh * hd)).astype(np.float32)
    k = rng.normal(size=(batch * seq_len, nkv * hd)).astype(np.float32)
    v = rng.normal(size=(batch * seq_len, nkv * hd)).astype(np.float32)
    return q, k, v


def heads_view(a: np.ndarray, batch, seq_len, heads, hd, group=1) -> np.ndarray:
    """[batch*S, heads*hd] -> float64 [batch, heads*group, S, hd] (kv heads repeated for GQA)."""
    a = a.astype(np.float64).reshape(batch, seq_len, heads, hd).transpose(0, 2, 1, 3)
    return np.repeat(a, group, axis=1)


def causal(seq_len) -> np.ndarray:
    return np.tril(np.ones((seq_len, seq_len), dtype=bool))


@pytest.mark.parametrize("batch,seq_len,nh,nkv,hd", ATTENTION_SHAPES)
def test_attention_scores_kernel(engine_for, rng, batch, seq_len, nh, nkv, hd):
    engine = engine_for(nh, nkv, hd)
    q, k, _ = qkv(rng, batch, seq_len, nh, nkv, hd)
    shape = (batch, nh, seq_len, seq_len)
    d_q, d_k, d_s = upload(engine, q), upload(engine, k), poisoned(engine, shape)
    engine.attention_scores(d_q, d_k, d_s, batch, seq_len)
    s = download_and_free(engine, d_s, shape, d_q, d_k)
    qh = heads_view(q, batch, seq_len, nh, hd)
    kh = heads_view(k, batch, seq_len, nkv, hd, group=nh // nkv)  # query head j reads kv head j // group
    want = qh @ kh.transpose(0, 1, 3, 2) * hd ** -0.5
    mask = causal(seq_len)
    assert (s[..., ~mask] == -np.inf).all(), "keys after the query must be masked to -inf"
    assert_close(s[..., mask], want[..., mask], 1e-5)


@pytest.mark.parametrize("batch,seq_len,nh", [(1, 1, 4), (1, 17, 4), (3, 17, 6), (1, 512, 32), (2, 129, 2),
                                              (1, 300, 1)])
@pytest.mark.parametrize("spread", [1.0, 60.0])  # 60: exp would overflow without subtracting the max
def test_causal_softmax_kernel(engine_for, rng, batch, seq_len, nh, spread):
    engine = engine_for(nh=nh, nkv=1, hd=16)
    shape = (batch, nh, seq_len, seq_len)
    s = (spread * rng.normal(size=shape)).astype(np.float32)
    mask = causal(seq_len)
    s[..., ~mask] = 1e30  # must never be read: would win the max and the sum
    d_s, d_p = upload(engine, s), poisoned(engine, shape)
    engine.causal_softmax(d_s, d_p, batch, seq_len)
    p = download_and_free(engine, d_p, shape, d_s)
    want = np.where(mask, s.astype(np.float64), -np.inf)
    want = np.exp(want - want.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert (p[..., ~mask] == 0).all()
    assert_close(p, want, 1e-5)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_causal_softmax_in_place(engine_for, rng):
    engine = engine_for(nh=4, nkv=2, hd=16)
    shape = (2, 4, 17, 17)
    s = rng.normal(size=shape).astype(np.float32)
    d_a, d_b, d_p = upload(engine, s), upload(engine, s), poisoned(engine, shape)
    engine.causal_softmax(d_a, d_p, 2, 17)
    engine.causal_softmax(d_b, d_b, 2, 17)
    out_of_place = download_and_free(engine, d_p, shape, d_a)
    np.testing.assert_array_equal(download_and_free(engine, d_b, shape), out_of_place)


@pytest.mark.parametrize("batch,seq_len,nh,nkv,hd", ATTENTION_SHAPES)
def test_attention_output_kernel(engine_for, rng, batch, seq_len, nh, nkv, hd):
    engine = engine_for(nh, nkv, hd)
    _, _, v = qkv(rng, batch, seq_len, nh, nkv, hd)
    mask = causal(seq_len)
    p = rng.random(size=(batch, nh, seq_len, seq_len)).astype(np.float32)
    p[..., ~mask] = np.nan  # above the diagonal: must never be read
    d_p, d_v, d_o = upload(engine, p), upload(engine, v), poisoned(engine, (batch * seq_len, nh * hd))
    engine.attention_output(d_p, d_v, d_o, batch, seq_len)
    o = download_and_free(engine, d_o, (batch * seq_len, nh * hd), d_p, d_v)
    vh = heads_view(v, batch, seq_len, nkv, hd, group=nh // nkv)
    want = np.where(mask, p.astype(np.float64), 0.0) @ vh  # [batch, nh, S, hd]
    want = want.transpose(0, 2, 1, 3).reshape(batch * seq_len, nh * hd)
    assert_close(o, want, 1e-5)

