"""CPU tests of the 3xTF32 split (optimized/split_tf32.py): hi is a TF32 value (low 13 mantissa
bits zero), the nearest one (ties away from zero), hi + lo == a exactly, special values as the
kernel treats them; the [wl | wh] / [ah | al] layouts, the big product in K chunks, give a @ w^T
to ~fp32 accuracy where plain TF32 is ~1e-3 off; the fp32 weights keep their split for the dense
projections only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from optimized.split_tf32 import chunk_bounds, split_tf32, split_weight, x3_gemms

LOW13 = (1 << 13) - 1


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def from_bits(values) -> torch.Tensor:
    return torch.tensor(np.array(values, dtype=np.uint32).view(np.int32)).view(torch.float32)


def nearest_tf32(a: np.ndarray) -> np.ndarray:
    """An independent rounding for normal numbers: 11 significant bits (frexp's mantissa in
    [0.5, 1) times 2^11), halves away from zero, in float64."""
    m, e = np.frexp(a.astype(np.float64))
    return (np.sign(m) * np.floor(np.abs(m) * 2048 + 0.5) / 2048 * np.exp2(e)).astype(np.float32)


def test_hi_is_the_nearest_tf32_value_and_lo_the_exact_rest(rng):
    a = torch.from_numpy((rng.standard_normal(20000) * np.exp2(rng.integers(-60, 60, 20000))).astype(np.float32))
    hi, lo = split_tf32(a)
    assert (bits(hi) & LOW13).eq(0).all()
    assert torch.equal(hi.double() + lo.double(), a.double())  # exact: a - hi needs at most 13 bits
    np.testing.assert_array_equal(hi.numpy(), nearest_tf32(a.numpy()))
    assert (lo.abs() <= hi.abs() * 2.0 ** -11).all()  # at most half a TF32 ulp


def test_ties_round_away_from_zero_and_carry_into_the_exponent():
    a = from_bits([0x3F801000, 0xBF801000, 0x3F800FFF, 0x3F803000, 0x3FFFF000, 0x00001000, 0x80000000])
    hi, lo = split_tf32(a)
    want = from_bits([0x3F802000, 0xBF802000, 0x3F800000, 0x3F804000, 0x40000000, 0x00002000, 0x80000000])
    assert torch.equal(bits(hi), bits(want))
    assert torch.equal(hi.double() + lo.double(), a.double())
    assert bits(lo)[-1].item() == 0  # -0: hi keeps the sign, lo = -0 - -0 = +0


def test_special_values():
    a = from_bits([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC01234, 0x7F7FFFFF])
    hi, lo = split_tf32(a)
    assert bits(hi)[:2].tolist() == bits(a)[:2].tolist()  # infinities stay
    assert (bits(hi)[2:5] == 0x7FFFFFFF).all()  # every NaN, even one with only low payload bits, stays NaN
    assert (lo[:5] == 0).all()
    assert hi[5].item() == float("inf") and lo[5].item() == float("-inf")  # the largest float rounds up (as cvt.rna)


def test_split_keeps_shape_of_a_strided_input(rng):
    a = torch.from_numpy(rng.standard_normal((6, 10)).astype(np.float32))[:, 2:7]
    hi, lo = split_tf32(a)
    assert hi.shape == lo.shape == (6, 5)
    assert torch.equal(hi + lo, a)


def test_refuses_other_dtypes():
    with pytest.raises(ValueError, match="float32"):
        split_tf32(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="2-D float32"):
        split_weight(torch.zeros(3))


def tf32_trunc(t: torch.Tensor) -> torch.Tensor:
    """What a tensor core reads of an fp32 operand (truncation; a hi part is unchanged by it)."""
    return (bits(t) & ~LOW13).view(torch.float32)


@pytest.mark.parametrize("K,chunks", [(2048, 8), (7168, 8), (2048, 1), (22, 4), (64, 8), (3, 2), (2048, 3)])
def test_chunks_cover_k_on_16_byte_boundaries(K, chunks):
    bounds = chunk_bounds(K, chunks)
    assert 1 <= len(bounds) <= chunks
    assert bounds[0][0] == 0 and bounds[-1][1] == K
    assert all(k1 == n0 for (_, k1), (n0, _) in zip(bounds, bounds[1:]))
    assert all(k0 % 4 == 0 and k1 > k0 for k0, k1 in bounds)


@pytest.mark.parametrize("M,N,K,chunks", [(16, 96, 256, 1), (33, 40, 2048, 8), (7, 24, 22, 4)])
def test_three_products_give_fp32_accuracy(rng, M, N, K, chunks):
    a = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32))
    w = torch.from_numpy((0.02 * rng.standard_normal((N, K))).astype(np.float32))
    want = a.double() @ w.double().T
    scale = want.abs().max().item()
    ah, al = split_tf32(a)
    wx = split_weight(w)
    wl, wh = wx[:, :K], wx[:, K:]
    assert torch.equal(wh + wl, w)  # [wl | wh]
    # the layouts and chunk offsets, run as the engine runs them (fp32 GEMMs here: the CPU has no TF32)
    out = torch.empty(M, N)
    x3_gemms(torch.cat([ah, al], 1), wx, out, chunks)
    assert (out.double() - want).abs().max().item() < 2e-6 * scale
    # the tensor core's view, exact products in float64: ~2^-21 of the scale; one TF32 product ~2^-11
    t = lambda x: tf32_trunc(x).double()  # noqa: E731
    x3 = t(ah) @ t(wh).T + t(ah) @ t(wl).T + t(al) @ t(wh).T
    one = t(a) @ t(w).T
    err3, err1 = (x3 - want).abs().max().item() / scale, (one - want).abs().max().item() / scale
    assert err3 < 4e-6 and err1 > 50 * err3, (err3, err1)
    assert not torch.backends.cuda.matmul.allow_tf32  # the context restored the engine's setting


def test_packed_weights_keep_the_dense_projections_split(tiny_ckpt):
    from optimized.weights import PackedWeights
    cfg = tiny_ckpt.config
    W = PackedWeights(tiny_ckpt, torch.float32, torch.device("cpu"), progress=False, tf32x3=True)
    plain = PackedWeights(tiny_ckpt, torch.float32, torch.device("cpu"), progress=False)
    split = 0
    for i, L in enumerate(W.layers):
        keys = ["out", "qkv" if cfg.is_attention(i) else "in"] + ([] if cfg.is_moe(i) else ["w13", "w2"])
        for key in keys:
            assert torch.equal(W.split_of(L[key]), split_weight(L[key])), (i, key)
            split += 2 * L[key].numel() * 4
        if cfg.is_moe(i):
            assert W.split_of(L["gate"]) is None and W.split_of(L["w13"]) is None  # router and experts stay plain
    assert W.split_of(W.embed) is None and plain.split_of(plain.layers[0]["out"]) is None
    assert W.split_max_k == max(cfg.hidden_size, cfg.intermediate_size)
    assert W.nbytes() == plain.nbytes() + split
    with pytest.raises(ValueError, match="fp32"):
        PackedWeights(tiny_ckpt, torch.bfloat16, torch.device("cpu"), progress=False, tf32x3=True)


def test_bench_tool_refuses_a_malformed_option():
    from optimized.__main__ import main
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["--option", "tf32x3"])
