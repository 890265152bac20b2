"""The MoE router's kernels (optimized/router.cu) against float64 torch on random inputs, outputs
poisoned with NaN first, both storage dtypes: the fused router + top-k, ffn_norm + router in one
launch (one block per token and the 1-2 token split), the same with the grouped GEMM's sort in its
last block and sliced over H, the out_proj with the router folded through it and the ffn_norm +
routing after it; then the engine with the folded router against norm_route, with the sort in the router against
the sort's own launch, and with the sliced router against norm_route_sort."""
from __future__ import annotations

import pytest
import torch

from test_optimized_gemv import (G, assert_close_outputs, assert_equal_outputs, engine_outputs,  # noqa: F401 (fixtures;
                                 small_ckpt)  # tests/gpu is on sys.path)
from test_optimized_kernels import check_sort, close, poisoned, rand, run

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def R(gpu, G):
    """The router launchers in G's storage dtype (so both dtypes, as G's)."""
    from optimized.router import RouterKernels
    return RouterKernels(gpu, G.dtype, stream=None)


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
def test_router_topk(R, T, E, k, H):
    h32 = rand(T, H, dtype=torch.float32)
    gate = rand(E, H, dtype=torch.float32, scale=H ** -0.5)
    bias = rand(E, dtype=torch.float32, scale=0.05)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    run(lambda: R.router_topk(h32, gate, bias, k, True, 2.5, idx, wts))
    check_routing(idx, wts, torch.sigmoid(h32.double() @ gate.double().T), bias, k, 2.5)


@pytest.fixture(params=[True, False], ids=["split", "block_per_token"])
def split(R, request):
    R.norm_route_split = request.param
    yield request.param
    R.norm_route_split = True


# 1-2 tokens with H % 256 == 0 and a warp per token take norm_route_split when `split` (8, 4, 2 and 1
# warps per block; E not always a multiple of them; 3 experts in one block, 20 with a block partly
# idle), the others the block per token: among them 2 tokens at H = 256, one warp for two tokens
@pytest.mark.parametrize("T,E,k,H", [(1, 32, 4, 2048), (2, 32, 4, 2048), (3, 32, 4, 2048), (64, 32, 4, 2048),
                                     (2, 8, 2, 64), (5, 64, 8, 1024), (1, 64, 8, 256), (2, 41, 4, 512),
                                     (2, 20, 4, 2048), (1, 3, 2, 1024), (2, 16, 12, 1024), (2, 8, 2, 256)])
def test_norm_route(R, T, E, k, H, split):
    """ffn_norm (x += y; h = rmsnorm(x) * w) and the router in one launch, against float64; twice,
    so that norm_route_split's arrival count is shown to start again from 0."""
    x = rand(T, H, dtype=torch.float32)
    y = rand(T, H, dtype=R.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(R.dtype)
    gate = rand(E, H, dtype=torch.float32, scale=H ** -0.5)
    bias = rand(E, dtype=torch.float32, scale=0.05)
    h = poisoned(T, H, dtype=R.dtype)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    x0 = x.double() + y.double()
    x_in = x.clone()
    run(lambda: R.norm_route(x, y, w, h, 1e-5, gate, bias, k, True, 1.5, idx, wts))
    first = (x.clone(), h.clone(), idx.clone(), wts.clone())
    x.copy_(x_in)
    h.fill_(float("nan"))
    run(lambda: R.norm_route(x, y, w, h, 1e-5, gate, bias, k, True, 1.5, idx, wts))
    for a, b in zip(first, (x, h, idx, wts)):
        assert torch.equal(a, b), "a second launch on the same inputs gave other outputs"
    close(x, x0, torch.float32, "residual")
    normed = x0 * torch.rsqrt((x0 * x0).mean(-1, keepdim=True) + 1e-5) * w.double()
    close(h, normed, R.dtype, "h")
    s = torch.sigmoid(normed @ gate.double().T)
    check_routing(idx, wts, s, bias, k, 1.5)


# the engine's shapes (3-64 tokens of the real model, 16-row tiles) and odd ones: 64 experts, top-8,
# one token, 64-row tiles holding several experts' worth of pairs
@pytest.mark.parametrize("T,E,k,H,BM", [(3, 32, 4, 2048, 16), (16, 32, 4, 2048, 16), (64, 32, 4, 2048, 16),
                                        (64, 32, 4, 2048, 64), (5, 64, 8, 1024, 16), (1, 8, 2, 64, 16),
                                        (40, 16, 12, 512, 64)])
def test_norm_route_sort(R, T, E, k, H, BM):
    """norm_route with the sort in its last block: x, h, idx and wts bit for bit as norm_route's, and
    the sort as moe_sort's (check_sort); twice, so that the arrival count is shown to start again from 0."""
    from optimized.kernels import max_gemm_tiles
    x_in, y = rand(T, H, dtype=torch.float32), rand(T, H, dtype=R.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(R.dtype)
    gate = rand(E, H, dtype=torch.float32, scale=H ** -0.5)
    bias = rand(E, dtype=torch.float32, scale=0.05)
    npairs = T * k
    outs = []
    for sorting in (False, True, True):
        x, h = x_in.clone(), poisoned(T, H, dtype=R.dtype)
        idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
        sp, offs = poisoned(npairs, dtype=torch.int32), poisoned(E + 1, dtype=torch.int32)
        tiles, nt = poisoned(3 * max_gemm_tiles(npairs, E, R.dtype, BM), dtype=torch.int32), poisoned(1, dtype=torch.int32)
        sort = (BM, sp, offs, tiles, nt) if sorting else None
        run(lambda: R.norm_route(x, y, w, h, 1e-5, gate, bias, k, True, 1.5, idx, wts, sort=sort))
        outs.append((x, h, idx, wts))
        if sorting:
            check_sort(idx, sp, offs, tiles, nt, E, BM)
    for a, b in zip(outs[0], outs[1]):
        assert torch.equal(a, b), "norm_route_sort routed otherwise than norm_route"
    for a, b in zip(outs[1], outs[2]):
        assert torch.equal(a, b), "a second launch on the same inputs gave other outputs"


# the engine's shapes (1-64 tokens of the real model, 16- and 64-row tiles) and odd ones: a partial
# token group (3, 9, 61 tokens), one slice (H = 256), 20 and 8 experts (warps with experts past E), top-6
@pytest.mark.parametrize("T,E,k,H,BM", [(64, 32, 4, 2048, 16), (16, 32, 4, 2048, 16), (3, 32, 4, 2048, 16),
                                        (64, 32, 4, 2048, 64), (9, 20, 6, 512, 16), (61, 8, 2, 256, 16),
                                        (1, 32, 4, 1024, 16)])
def test_norm_route_sliced(R, T, E, k, H, BM):
    """norm_route with the sort, sliced over H (the folded router Gw given): x bit for bit as
    norm_route_sort's (the same fp32 add), h and the routing against float64, the sort as moe_sort's
    (check_sort); three times, so that the arrival counts are shown to start again from 0."""
    from optimized.kernels import max_gemm_tiles
    assert R.sliced_takes(T, H, E)
    x_in, y = rand(T, H, dtype=torch.float32), rand(T, H, dtype=R.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(R.dtype)
    gate = rand(E, H, dtype=torch.float32, scale=H ** -0.5)
    Gw = (gate.double() * w.double()[None, :]).float()
    bias = rand(E, dtype=torch.float32, scale=0.05)
    npairs = T * k
    outs = []
    for sliced in (False, True, True, True):
        x, h = x_in.clone(), poisoned(T, H, dtype=R.dtype)
        idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
        sp, offs = poisoned(npairs, dtype=torch.int32), poisoned(E + 1, dtype=torch.int32)
        tiles, nt = poisoned(3 * max_gemm_tiles(npairs, E, R.dtype, BM), dtype=torch.int32), poisoned(1, dtype=torch.int32)
        sort = (BM, sp, offs, tiles, nt)
        run(lambda: R.norm_route(x, y, w, h, 1e-5, gate, bias, k, True, 1.5, idx, wts, sort=sort,
                                 Gw=Gw if sliced else None))
        check_sort(idx, sp, offs, tiles, nt, E, BM)
        outs.append((x, h, idx, wts))
    x, h, idx, wts = outs[1]
    assert torch.equal(x, outs[0][0]), "the residual differs from norm_route_sort's"
    x0 = x_in.double() + y.double()
    normed = x0 * torch.rsqrt((x0 * x0).mean(-1, keepdim=True) + 1e-5) * w.double()
    close(h, normed, R.dtype, "h")
    check_routing(idx, wts, torch.sigmoid(normed @ gate.double().T), bias, k, 1.5)
    for again in outs[2:]:
        for a, b in zip(outs[1], again):
            assert torch.equal(a, b), "another launch on the same inputs gave other outputs"


@pytest.mark.parametrize("T,N,K,E", [(1, 2048, 2048, 32), (2, 2048, 2048, 32), (2, 100, 256, 5), (1, 64, 4096, 8)])
def test_out_router(G, R, T, N, K, E):
    """out_proj with the router folded through it: y as gemv gives it (bit for bit), and the
    partial logits r = [a @ M^T, x @ Gw^T], each over FOLDED_ROUTER_PARTS slices of K, against
    float64 (K 4096: two passes per slice)."""
    a, w = rand(T, K, dtype=R.dtype), rand(N, K, dtype=R.dtype, scale=K ** -0.5)
    from optimized.router import FOLDED_ROUTER_PARTS as P
    M, Gw, x = rand(E, K, dtype=torch.float32), rand(E, K, dtype=torch.float32), rand(T, K, dtype=torch.float32)
    y, y_gemv = poisoned(T, N, dtype=R.dtype), poisoned(T, N, dtype=R.dtype)
    r = poisoned(T, 2 * E, P, dtype=torch.float32)
    run(lambda: R.out_router(a, w, y, M, Gw, x, r))
    run(lambda: G.gemv(a, w, y_gemv))
    assert torch.equal(y, y_gemv)
    sl = lambda u, v: torch.einsum("tpk,epk->tep", u.double().view(T, P, -1), v.double().view(E, P, -1))  # noqa: E731
    close(r, torch.cat([sl(a, M), sl(x, Gw)], dim=1), torch.float32, "r")


@pytest.mark.parametrize("T,E,k,H", [(1, 32, 4, 2048), (2, 32, 4, 2048), (2, 8, 2, 512), (1, 20, 6, 256)])
def test_norm_route_folded(R, T, E, k, H):
    """ffn_norm and the routing from out_router's partial logits: x, h as norm_route computes them,
    idx / wts of logits rstd * (the slices of r[:, :E] + those of r[:, E:]) against float64 (tokens
    without a near tie)."""
    x, y = rand(T, H, dtype=torch.float32), rand(T, H, dtype=R.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(R.dtype)
    from optimized.router import FOLDED_ROUTER_PARTS as P
    # logits of order 1 (larger ones saturate the sigmoid into near ties), fixed seeds
    r = rand(T, 2 * E, P, dtype=torch.float32, scale=0.2, seed=T * 100 + E)
    bias = rand(E, dtype=torch.float32, scale=0.05, seed=E)
    h = poisoned(T, H, dtype=R.dtype)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    x0 = x.double() + y.double()
    run(lambda: R.norm_route_folded(x, y, w, h, 1e-5, r, bias, k, True, 1.5, idx, wts))
    close(x, x0, torch.float32, "residual")
    rstd = torch.rsqrt((x0 * x0).mean(-1, keepdim=True) + 1e-5)
    close(h, x0 * rstd * w.double(), R.dtype, "h")
    rs = r.double().sum(-1)
    s = torch.sigmoid(rstd * (rs[:, :E] + rs[:, E:]))
    check_routing(idx, wts, s, bias, k, 1.5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_folded_router_matches_norm_route(gpu, small_ckpt, dtype):
    """Batch-1 and batch-2 decode steps (and 1x2 forwards) with the router folded through out_proj
    and with norm_route: the same routing up to fp32 summation order, so logits within the GEMV
    path's tolerance of each other."""
    outs = engine_outputs(gpu, small_ckpt, dtype, {"folded": ({}, {"fold_router": True}),
                                                   "norm_route": ({}, {"fold_router": False})},
                          forwards=((1, 2),), decodes=(1, 2), steps=5)
    assert_close_outputs(outs["folded"], outs["norm_route"], 2e-4 if dtype == "fp32" else 0.15)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sort_in_router_matches_the_sorts_own_launch(gpu, small_ckpt, dtype):
    """Forwards of 3-64 tokens and decode steps at batch 4 and 16 (the grouped GEMM after
    norm_route) with the sort in norm_route's last block and with its own launch: the same logits
    bit for bit (the order of rows inside an expert does not change any sum)."""
    in_router = {"R.sort_in_router": True, "R.route_sliced": False}  # norm_route_sort: bit-equal to the own launch
    outs = engine_outputs(gpu, small_ckpt, dtype, {"in_router": ({}, in_router),
                                                   "own_launch": ({}, {"R.sort_in_router": False})},
                          forwards=((1, 3), (4, 4), (2, 32), (4, 16), (4, 16)), decodes=(4, 16))
    assert_equal_outputs(outs["in_router"], outs["own_launch"], "with the sort in norm_route")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sliced_router_matches_norm_route_sort(gpu, small_ckpt, dtype):
    """The same forwards and decode steps with norm_route_sliced and with norm_route_sort: the same
    routing up to fp32 summation order, so logits within the GEMV path's tolerance of each other."""
    outs = engine_outputs(gpu, small_ckpt, dtype, {"sliced": ({}, {"R.route_sliced": True}),
                                                   "sort": ({}, {"R.route_sliced": False})},
                          forwards=((1, 3), (4, 4), (2, 32), (4, 16)), decodes=(4, 16))
    assert_close_outputs(outs["sliced"], outs["sort"], 2e-4 if dtype == "fp32" else 0.15)
