"""attention_mma.cu, the tensor-core causal GQA attention for bf16 with head_dim 64, against the
float64 causal softmax (test_optimized_kernels.naive_attention) and against attention.cu's SIMT
kernel on the same inputs: sequence lengths below, at and past one 64-row tile (tails masked and
zero-filled), batch 1-3, GQA groups 4 and 1, outputs poisoned with NaN first and the rows past the
output left poisoned (nothing written past B*S rows)."""
from __future__ import annotations

import pytest
import torch

from test_optimized_kernels import naive_attention, poisoned, rand, run  # tests/gpu is on sys.path (no __init__.py)

pytestmark = pytest.mark.gpu

# Of the reference output's max |value|. bf16 output rounding alone is 2^-9 of a value; P rounded
# to bf16 for the P.V product adds about as much again, so a few 1e-3 is expected.
TOL_REF = 1e-2
TOL_SIMT = 1e-2  # the two kernels round P differently (SIMT keeps fp32 P), same output rounding

SHAPES = [  # B, S, nh, nkv
    (1, 1, 32, 8), (2, 7, 32, 8), (1, 64, 32, 8), (3, 65, 32, 8), (2, 200, 8, 2), (1, 512, 32, 8),
    (2, 1, 4, 4), (1, 63, 4, 4), (3, 129, 8, 8), (2, 512, 4, 4),
]


@pytest.fixture(scope="module")
def KB(gpu):
    from optimized.kernels import Kernels
    return Kernels(gpu, torch.bfloat16, stream=None)


def attend(K, variant, q, k, v, extra_rows=5):
    """Run `variant` into a poisoned buffer `extra_rows` rows longer than the output; check those
    rows stay NaN and return the output [B, S, nh*hd]."""
    B, nh, S, hd = q.shape
    buf = poisoned(B * S + extra_rows, nh * hd, dtype=torch.bfloat16)
    o = buf[:B * S]
    K.attn_variant = variant
    try:
        run(lambda: K.attention(q, k, v, o, B, S, nh, k.shape[1], hd))
    finally:
        K.attn_variant = "mma"
    assert buf[B * S:].isnan().all(), f"{variant}: wrote past the last output row"
    return o.view(B, S, nh * hd)


def rel_err(got, want):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), "non-finite (unwritten?) outputs"
    return ((got - want).abs().max() / (want.abs().max() + 1e-12)).item()


@pytest.mark.parametrize("B,S,nh,nkv", SHAPES)
def test_attention_mma_matches_float64(KB, B, S, nh, nkv):
    hd = 64
    q, k, v = rand(B, nh, S, hd, dtype=torch.bfloat16), rand(B, nkv, S, hd, dtype=torch.bfloat16), \
        rand(B, nkv, S, hd, dtype=torch.bfloat16)
    got = attend(KB, "mma", q, k, v)
    err = rel_err(got, naive_attention(q, k, v))
    assert err <= TOL_REF, f"B={B} S={S}: max error {err:.3g} of the output scale > {TOL_REF}"


@pytest.mark.parametrize("B,S,nh,nkv,qscale", [(2, 200, 32, 8, 1.0), (1, 512, 32, 8, 4.0), (3, 65, 8, 8, 4.0)])
def test_attention_mma_agrees_with_simt(KB, B, S, nh, nkv, qscale):
    """Same inputs through both kernels; qscale 4 makes the softmax peaked (large running-max
    rescales across key tiles)."""
    hd = 64
    q = rand(B, nh, S, hd, dtype=torch.bfloat16, scale=qscale)
    k, v = rand(B, nkv, S, hd, dtype=torch.bfloat16), rand(B, nkv, S, hd, dtype=torch.bfloat16)
    mma, simt = attend(KB, "mma", q, k, v), attend(KB, "simt", q, k, v)
    want = naive_attention(q, k, v)
    e_mma, e_simt, e_pair = rel_err(mma, want), rel_err(simt, want), rel_err(mma, simt)
    assert e_pair <= TOL_SIMT, f"mma vs simt {e_pair:.3g} (mma vs float64 {e_mma:.3g}, simt {e_simt:.3g})"
    assert e_mma <= max(2 * e_simt, TOL_REF / 2), f"mma error {e_mma:.3g} well above simt's {e_simt:.3g}"


def test_other_head_dims_and_fp32_keep_the_simt_kernel(KB, gpu):
    """head_dim 32 under the "mma" default must still be right (attention.cu serves it); an unknown
    variant is refused with the choices."""
    from optimized.kernels import Kernels
    B, S, nh, nkv, hd = 2, 33, 4, 2, 32
    q, k, v = rand(B, nh, S, hd, dtype=torch.bfloat16), rand(B, nkv, S, hd, dtype=torch.bfloat16), \
        rand(B, nkv, S, hd, dtype=torch.bfloat16)
    assert rel_err(attend(KB, "mma", q, k, v), naive_attention(q, k, v)) <= TOL_REF
    assert Kernels(gpu, torch.float32).k_attn_mma == {}
    KB.attn_variant = "flash"
    try:
        with pytest.raises(ValueError, match="attn_variant"):
            KB.attention(q, k, v, poisoned(B * S, nh * hd, dtype=torch.bfloat16), B, S, nh, nkv, hd)
    finally:
        KB.attn_variant = "mma"
