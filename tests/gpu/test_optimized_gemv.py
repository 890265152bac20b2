"""The small-batch GEMV kernels (optimized/gemv.cu) against float64 torch on random inputs, outputs
poisoned with NaN first, both storage dtypes: dense GEMV for 1-4 rows (strided rows as the LM
head's last positions, fp32 output), the per-pair MoE gate/up and down, the dense FFN's gate/up
(no idx), and the fused router + top-k; then the engine with and without them."""
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


def check_routing(idx, wts, s, bias, k: int, scale: float) -> None:
    """idx / wts against float64 sigmoid scores s [T, E]: the top k of s + bias on the tokens whose
    k-th choice is not a near tie, and the chosen experts' weights renormalised and scaled."""
    score = s + bias.double()
    top = torch.topk(score, k + 1, dim=-1).values
    clear = (top[:, k - 1] - top[:, k]) > 1e-5
    assert clear.any()
    want_idx = torch.topk(score, k, dim=-1).indices
    assert torch.equal(idx.long().sort(1).values[clear], want_idx.sort(1).values[clear])
    wsel = torch.gather(s, 1, idx.long())
    close(wts, scale * wsel / (wsel.sum(-1, keepdim=True) + 1e-6), torch.float32, "routing weights")


@pytest.mark.parametrize("T,E,k,H", [(1, 32, 4, 2048), (4, 32, 4, 2048), (64, 32, 4, 2048), (5, 64, 8, 64),
                                     (2, 8, 2, 24)])
def test_router_topk(G, T, E, k, H):
    h32 = rand(T, H, dtype=torch.float32)
    gate = rand(E, H, dtype=torch.float32, scale=H ** -0.5)
    bias = rand(E, dtype=torch.float32, scale=0.05)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    run(lambda: G.router_topk(h32, gate, bias, k, True, 2.5, idx, wts))
    check_routing(idx, wts, torch.sigmoid(h32.double() @ gate.double().T), bias, k, 2.5)


@pytest.fixture(params=[True, False], ids=["split", "block_per_token"])
def split(G, request):
    G.norm_route_split = request.param
    yield request.param
    G.norm_route_split = True


# 1-2 tokens with H % 256 == 0 and a warp per token take norm_route_split when `split` (8, 4, 2 and 1
# warps per block; E not always a multiple of them; 3 experts in one block, 20 with a block partly
# idle), the others the block per token: among them 2 tokens at H = 256, one warp for two tokens
@pytest.mark.parametrize("T,E,k,H", [(1, 32, 4, 2048), (2, 32, 4, 2048), (3, 32, 4, 2048), (64, 32, 4, 2048),
                                     (2, 8, 2, 64), (5, 64, 8, 1024), (1, 64, 8, 256), (2, 41, 4, 512),
                                     (2, 20, 4, 2048), (1, 3, 2, 1024), (2, 16, 12, 1024), (2, 8, 2, 256)])
def test_norm_route(G, T, E, k, H, split):
    """ffn_norm (x += y; h = rmsnorm(x) * w) and the router in one launch, against float64; twice,
    so that norm_route_split's arrival count is shown to start again from 0."""
    x = rand(T, H, dtype=torch.float32)
    y = rand(T, H, dtype=G.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(G.dtype)
    gate = rand(E, H, dtype=torch.float32, scale=H ** -0.5)
    bias = rand(E, dtype=torch.float32, scale=0.05)
    h = poisoned(T, H, dtype=G.dtype)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    x0 = x.double() + y.double()
    x_in = x.clone()
    run(lambda: G.norm_route(x, y, w, h, 1e-5, gate, bias, k, True, 1.5, idx, wts))
    first = (x.clone(), h.clone(), idx.clone(), wts.clone())
    x.copy_(x_in)
    h.fill_(float("nan"))
    run(lambda: G.norm_route(x, y, w, h, 1e-5, gate, bias, k, True, 1.5, idx, wts))
    for a, b in zip(first, (x, h, idx, wts)):
        assert torch.equal(a, b), "a second launch on the same inputs gave other outputs"
    close(x, x0, torch.float32, "residual")
    normed = x0 * torch.rsqrt((x0 * x0).mean(-1, keepdim=True) + 1e-5) * w.double()
    close(h, normed, G.dtype, "h")
    s = torch.sigmoid(normed @ gate.double().T)
    check_routing(idx, wts, s, bias, k, 1.5)


@pytest.mark.parametrize("T,N,K,E", [(1, 2048, 2048, 32), (2, 2048, 2048, 32), (2, 100, 256, 5), (1, 64, 4096, 8)])
def test_out_router(G, T, N, K, E):
    """out_proj with the router folded through it: y as gemv gives it (bit for bit), and the
    partial logits r = [a @ M^T, x @ Gw^T], each over FOLDED_ROUTER_PARTS slices of K, against
    float64 (K 4096: two passes per slice)."""
    a, w = rand(T, K, dtype=G.dtype), rand(N, K, dtype=G.dtype, scale=K ** -0.5)
    from optimized.gemv import FOLDED_ROUTER_PARTS as P
    M, Gw, x = rand(E, K, dtype=torch.float32), rand(E, K, dtype=torch.float32), rand(T, K, dtype=torch.float32)
    y, y_gemv = poisoned(T, N, dtype=G.dtype), poisoned(T, N, dtype=G.dtype)
    r = poisoned(T, 2 * E, P, dtype=torch.float32)
    run(lambda: G.out_router(a, w, y, M, Gw, x, r))
    run(lambda: G.gemv(a, w, y_gemv))
    assert torch.equal(y, y_gemv)
    sl = lambda u, v: torch.einsum("tpk,epk->tep", u.double().view(T, P, -1), v.double().view(E, P, -1))  # noqa: E731
    close(r, torch.cat([sl(a, M), sl(x, Gw)], dim=1), torch.float32, "r")


@pytest.mark.parametrize("T,E,k,H", [(1, 32, 4, 2048), (2, 32, 4, 2048), (2, 8, 2, 512), (1, 20, 6, 256)])
def test_norm_route_folded(G, T, E, k, H):
    """ffn_norm and the routing from out_router's partial logits: x, h as norm_route computes them,
    idx / wts of logits rstd * (the slices of r[:, :E] + those of r[:, E:]) against float64 (tokens
    without a near tie)."""
    x, y = rand(T, H, dtype=torch.float32), rand(T, H, dtype=G.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(G.dtype)
    from optimized.gemv import FOLDED_ROUTER_PARTS as P
    # logits of order 1 (larger ones saturate the sigmoid into near ties), fixed seeds
    r = rand(T, 2 * E, P, dtype=torch.float32, scale=0.2, seed=T * 100 + E)
    bias = rand(E, dtype=torch.float32, scale=0.05, seed=E)
    h = poisoned(T, H, dtype=G.dtype)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    x0 = x.double() + y.double()
    run(lambda: G.norm_route_folded(x, y, w, h, 1e-5, r, bias, k, True, 1.5, idx, wts))
    close(x, x0, torch.float32, "residual")
    rstd = torch.rsqrt((x0 * x0).mean(-1, keepdim=True) + 1e-5)
    close(h, x0 * rstd * w.double(), G.dtype, "h")
    rs = r.double().sum(-1)
    s = torch.sigmoid(rstd * (rs[:, :E] + rs[:, E:]))
    check_routing(idx, wts, s, bias, k, 1.5)


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


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_engine_gemv_path_matches_cublas_path(gpu, small_ckpt, dtype):
    """1x3 and 4x1 forwards and a batch-2 decode take the GEMV kernels; their logits equal the
    cuBLAS / grouped-GEMM engine's (the same math, other summation orders). Both engines are fed
    the same tokens (the first one's greedy choices)."""
    from optimized.engine import OptimizedEngine
    tol = 2e-4 if dtype == "fp32" else 0.15
    V = small_ckpt.config.vocab_size
    prompts = [synthetic_prompts(V, B, S, seed=B + S) for B, S in ((1, 3), (4, 1))]
    outs, fed = {}, []
    for gemv in (True, False):
        eng = OptimizedEngine(small_ckpt, gpu.index, dtype=dtype, gemv=gemv, progress=False, max_len=64)
        try:
            got = [eng.forward(p) for p in prompts]
            got.append(eng.prefill(synthetic_prompts(V, 2, 5, seed=9), max_new_tokens=4))
            for step in range(3):
                if gemv:
                    fed.append(got[-1].argmax(1))
                got.append(eng.decode(fed[step]))
            outs[gemv] = got
        finally:
            eng.close()
    assert_close_outputs(outs[True], outs[False], tol)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_folded_router_matches_norm_route(gpu, small_ckpt, dtype):
    """Batch-1 and batch-2 decode steps (and 1x2 forwards) with the router folded through out_proj
    and with norm_route: the same routing up to fp32 summation order, so logits within the GEMV
    path's tolerance of each other, both engines fed the same tokens."""
    from optimized.engine import OptimizedEngine
    tol = 2e-4 if dtype == "fp32" else 0.15
    V = small_ckpt.config.vocab_size
    outs, fed = {}, []
    for fold in (True, False):
        eng = OptimizedEngine(small_ckpt, gpu.index, dtype=dtype, progress=False, max_len=64)
        eng.fold_router = fold
        try:
            got = [eng.forward(synthetic_prompts(V, 1, 2, seed=5))]
            n = 0
            for B in (1, 2):
                got.append(eng.prefill(synthetic_prompts(V, B, 4, seed=B), max_new_tokens=6))
                for _ in range(5):
                    if fold:
                        fed.append(got[-1].argmax(1))
                    got.append(eng.decode(fed[n]))
                    n += 1
            outs[fold] = got
        finally:
            eng.close()
    assert_close_outputs(outs[True], outs[False], tol)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_pdl_launches_change_nothing(gpu, small_ckpt, dtype):
    """Programmatic dependent launch only lets kernels start early; every kernel waits before it
    touches activations, so forwards and graph-replayed decode steps at batch 1 and 3 give the same
    logits bit for bit with and without it (a missing wait would show up as a race here)."""
    from optimized.engine import OptimizedEngine
    V = small_ckpt.config.vocab_size
    outs = {}
    for pdl in (True, False):
        eng = OptimizedEngine(small_ckpt, gpu.index, dtype=dtype, pdl=pdl, progress=False, max_len=64)
        assert eng.use_pdl == pdl
        try:
            got = [eng.forward(synthetic_prompts(V, B, S, seed=S)) for B, S in ((1, 2), (2, 9))]
            for B in (1, 3):
                nxt = eng.prefill(synthetic_prompts(V, B, 4, seed=B), max_new_tokens=9).argmax(1)
                for _ in range(8):  # the first step runs eagerly, the rest replay its graph
                    logits = eng.decode(nxt)
                    got.append(logits)
                    nxt = logits.argmax(1)
            outs[pdl] = got
        finally:
            eng.close()
    for i, (a, b) in enumerate(zip(outs[True], outs[False])):
        assert np.array_equal(a, b), f"output {i} differs with PDL: max {np.abs(a - b).max():.3g}"
