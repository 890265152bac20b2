"""The small-batch GEMV kernels (optimized/gemv.cu) against float64 torch on random inputs, outputs
poisoned with NaN first, both storage dtypes: dense GEMV for 1-4 rows (strided rows as the LM
head's last positions, fp32 output), the per-pair MoE gate/up and down, the dense FFN's gate/up
(no idx) and the ShortConv in_proj + decode step; then the engine with and without them. The
router's kernels (optimized/router.cu) are test_optimized_router.py's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.jobs.files import synthetic_prompts
from test_optimized_kernels import DTYPES, close, poisoned, rand, run  # tests/gpu is on sys.path (no __init__.py)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=list(DTYPES))
def G(gpu, request):
    from optimized.gemv import GemvKernels
    return GemvKernels(gpu, DTYPES[request.param], stream=None)


# K = 2048 (one pass of 8 chunks per lane in bf16), 7168 (the dense FFN's w2: several passes, a
# partial last one), 40 / 24 (fewer chunks than lanes); N not a multiple of the 8 columns per block
@pytest.mark.parametrize("nb,N,K", [(1, 2048, 2048), (1, 6144, 2048), (2, 37, 7168), (3, 1000, 40), (4, 9, 24),
                                    (4, 2048, 1792)])
def test_gemv(G, nb, N, K):
    x, w = rand(nb, K, dtype=G.dtype), rand(N, K, dtype=G.dtype, scale=K ** -0.5)
    y = poisoned(nb, N, dtype=G.dtype)
    run(lambda: G.gemv(x, w, y))
    close(y, x.double() @ w.double().T, G.dtype, "gemv")


def test_gemv_strided_rows_fp32_out(G):
    """The LM head: the last position of each of 3 sequences of 5 tokens, fp32 logits."""
    H, V = 64, 300
    h = rand(3, 5, H, dtype=G.dtype)
    rows = h[:, 4, :]
    w = rand(V, H, dtype=G.dtype, scale=H ** -0.5)
    y = poisoned(3, V, dtype=torch.float32)
    assert G.takes(rows, w, y) and not rows.is_contiguous()
    run(lambda: G.gemv(rows, w, y))
    want = rows.double() @ w.double().T
    assert (y.double() - want).abs().max().item() < 1e-5 * want.abs().max().item() + 1e-6  # no bf16 rounding


def test_gemv_refuses_what_it_cannot_take(G):
    w = rand(16, 64, dtype=G.dtype)
    for x, why in ((rand(5, 64, dtype=G.dtype), "5 rows"), (rand(2, 64, dtype=G.dtype)[:, :60], "K mismatch"),
                   (rand(2, 130, dtype=G.dtype)[:, 1:65], "unaligned rows")):
        y = poisoned(x.shape[0], 16, dtype=G.dtype)
        assert not G.takes(x, w, y), why
        with pytest.raises(ValueError, match="gemv takes"):
            G.gemv(x, w, y)


def _routing(T, E, k, seed):
    """Distinct experts per token (as top-k makes) and positive weights."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32).cuda()
    wts = (torch.rand(T, k, generator=g) + 0.1).cuda()
    return idx, wts


@pytest.mark.parametrize("T,E,k,H,Im", [(1, 32, 4, 2048, 1792), (4, 32, 4, 2048, 1792), (3, 8, 2, 64, 40),
                                        (2, 4, 4, 24, 8)])
def test_moe_gemv(G, T, E, k, H, Im):
    h = rand(T, H, dtype=G.dtype)
    w13 = rand(E, 2 * Im, H, dtype=G.dtype, scale=H ** -0.5)
    w2 = rand(E, H, Im, dtype=G.dtype, scale=Im ** -0.5)
    idx, wts = _routing(T, E, k, seed=T * 100 + E)
    npairs = T * k
    act, ys = poisoned(npairs, Im, dtype=G.dtype), poisoned(npairs, H, dtype=G.dtype)
    run(lambda: G.moe_gateup(h, w13, act, idx, k))
    ex, tok = idx.view(-1).long(), torch.arange(npairs, device="cuda") // k
    hd = h.double()[tok]
    gate = torch.einsum("ph,pih->pi", hd, w13[ex, :Im].double())
    up = torch.einsum("ph,pih->pi", hd, w13[ex, Im:].double())
    close(act, torch.nn.functional.silu(gate) * up, G.dtype, "gate/up")
    run(lambda: G.moe_down(act, w2, ys, idx, wts.view(-1)))
    want = torch.einsum("pi,phi->ph", act.double(), w2[ex].double()) * wts.view(-1, 1).double()
    close(ys, want, G.dtype, "down")


def test_dense_gateup_without_idx(G):
    T, H, I = 3, 96, 56
    h, w13 = rand(T, H, dtype=G.dtype), rand(1, 2 * I, H, dtype=G.dtype, scale=H ** -0.5)
    act = poisoned(T, I, dtype=G.dtype)
    run(lambda: G.moe_gateup(h, w13, act, None, 1))
    g, u = (h.double() @ w13[0].double().T).split(I, dim=1)
    close(act, torch.nn.functional.silu(g) * u, G.dtype, "dense gate/up")


@pytest.mark.parametrize("B,H,L", [(1, 2048, 3), (2, 2048, 3), (1, 64, 3), (2, 96, 4), (1, 32, 2)])
def test_conv_in_step(G, B, H, L):
    """in_proj + the ShortConv decode step in one launch, against the same in float64 (the in_proj
    outputs rounded to the storage type as the engine's GEMM output is)."""
    h = rand(B, H, dtype=G.dtype)
    w_in = rand(3 * H, H, dtype=G.dtype, scale=H ** -0.5)
    conv_w = rand(H, L, dtype=G.dtype, scale=0.5)
    state = rand(B, L - 1, H, dtype=G.dtype)
    state0 = state.double().clone()
    y = poisoned(B, H, dtype=G.dtype)
    run(lambda: G.conv_in_step(h, w_in, conv_w, state, y))
    bcx = (h.double() @ w_in.double().T).to(G.dtype).double()
    Bv, Cv, xv = bcx[:, :H], bcx[:, H:2 * H], bcx[:, 2 * H:]
    bx = Bv * xv
    window = torch.cat([state0, bx[:, None, :]], dim=1)  # [B, L, H], oldest first
    conv = (window * conv_w.double().T[None]).sum(1)
    close(y, Cv * conv, G.dtype, "conv step output")
    close(state, window[:, 1:], G.dtype, "conv state")


# ----- the engine with and without them -----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ckpt(gpu):
    from optimized.gpu_synthetic import checkpoint_for
    return checkpoint_for("small", seed=3)


def assert_close_outputs(got, want, tol: float) -> None:
    """Two engines' outputs, pairwise: max and mean abs difference within tol (mean tol / 5) of the
    larger of 1 and the output's scale."""
    for i, (a, b) in enumerate(zip(got, want)):
        scale = max(1.0, float(np.abs(b).max()))
        err, mean = float(np.abs(a - b).max()) / scale, float(np.abs(a - b).mean()) / scale
        assert err <= tol and mean <= tol / 5, f"output {i}: max {err:.3g}, mean {mean:.3g} of scale {scale:.3g}"


def assert_equal_outputs(got, want, what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        assert np.array_equal(a, b), f"output {i} differs {what}: max {np.abs(a - b).max():.3g}"


def engine_outputs(gpu, ckpt, dtype: str, variants: dict, forwards=(), decodes=(), prompt_len: int = 4,
                   steps: int = 3, check=None) -> dict:
    """Each engine variant's outputs on the same inputs: forwards of the (B, S) shapes in `forwards`,
    then for each batch size in `decodes` a prefill of prompt_len-token prompts and `steps` decode steps
    (the first runs eagerly, the rest replay its graph), every engine fed the first one's greedy
    choices. variants: name -> (OptimizedEngine keyword arguments, attributes to set on it, dotted
    names allowed: "R.sort_in_router"). check(eng, name), when given, runs before each engine closes."""
    from optimized.engine import OptimizedEngine
    V = ckpt.config.vocab_size
    outs, fed = {}, []
    for first, (name, (kwargs, attrs)) in zip((True, *[False] * len(variants)), variants.items()):
        eng = OptimizedEngine(ckpt, gpu.index, dtype=dtype, progress=False, max_len=64, **kwargs)
        for dotted, value in attrs.items():
            *path, attr = dotted.split(".")
            obj = eng
            for part in path:
                obj = getattr(obj, part)
            setattr(obj, attr, value)
        try:
            got = [eng.forward(synthetic_prompts(V, B, S, seed=B + S)) for B, S in forwards]
            n = 0
            for B in decodes:
                got.append(eng.prefill(synthetic_prompts(V, B, prompt_len, seed=B), max_new_tokens=steps + 1))
                for _ in range(steps):
                    if first:
                        fed.append(got[-1].argmax(1))
                    got.append(eng.decode(fed[n]))
                    n += 1
            if check is not None:
                check(eng, name)
            outs[name] = got
        finally:
            eng.close()
    return outs


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_engine_gemv_path_matches_cublas_path(gpu, small_ckpt, dtype):
    """1x3 and 4x1 forwards and a batch-2 decode take the GEMV kernels; their logits equal the
    cuBLAS / grouped-GEMM engine's (the same math, other summation orders)."""
    outs = engine_outputs(gpu, small_ckpt, dtype, {"gemv": ({"gemv": True}, {}), "cublas": ({"gemv": False}, {})},
                          forwards=((1, 3), (4, 1)), decodes=(2,), prompt_len=5)
    assert_close_outputs(outs["gemv"], outs["cublas"], 2e-4 if dtype == "fp32" else 0.15)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_pdl_launches_change_nothing(gpu, small_ckpt, dtype):
    """Programmatic dependent launch only lets kernels start early; every kernel waits before it
    touches activations, so forwards and graph-replayed decode steps at batch 1, 3 and 16 (the
    GEMVs; the grouped GEMM's stream kernels after norm_route's sort) give the same
    logits bit for bit with and without it (a missing wait would show up as a race here)."""
    def check(eng, name):
        assert eng.use_pdl == (name == "pdl")
    outs = engine_outputs(gpu, small_ckpt, dtype, {"pdl": ({"pdl": True}, {}), "plain": ({"pdl": False}, {})},
                          forwards=((1, 2), (2, 9), (4, 16)), decodes=(1, 3, 16), steps=8, check=check)
    assert_equal_outputs(outs["pdl"], outs["plain"], "with PDL")
