"""Each optimized kernel against the reference op (harness.engines.reference or plain torch in float64):
random inputs drawn fresh per case, several shapes including ones that are not multiples of the
tiles, outputs poisoned with NaN first so an unwritten element fails. Both storage dtypes: fp32
must match to ~1e-5 relative; bf16 to bf16 rounding."""
from __future__ import annotations

import pytest
import torch

from harness.engines import reference as R

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}  # relative to the output's scale


@pytest.fixture(scope="module", params=list(DTYPES))
def K(gpu, request):
    from optimized.kernels import Kernels
    return Kernels(gpu, DTYPES[request.param], stream=None)


def rand(*shape, dtype, scale=1.0, seed=None):
    g = torch.Generator(device="cuda")
    g.manual_seed(seed if seed is not None else torch.randint(0, 2**31, ()).item())
    return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype)


def poisoned(*shape, dtype):
    t = torch.empty(shape, dtype=dtype, device="cuda")
    t.fill_(float("nan")) if dtype.is_floating_point else t.fill_(-7)
    return t


def close(got, want, dtype, what):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite (unwritten?) outputs"
    scale = want.abs().max().item() + 1e-12
    err = (got - want).abs().max().item() / scale
    assert err <= TOL[dtype], f"{what}: max error {err:.3g} of scale {scale:.3g} > {TOL[dtype]}"


def run(fn):
    fn()
    torch.cuda.synchronize()


@pytest.mark.parametrize("n,V,H", [(1, 50, 64), (37, 1000, 96), (300, 4096, 2048)])
def test_embedding(K, n, V, H):
    table = rand(V, H, dtype=K.dtype)
    ids = torch.randint(0, V, (n,), device="cuda", dtype=torch.int32)
    x = poisoned(n, H, dtype=torch.float32)
    run(lambda: K.embedding(ids, table, x))
    assert torch.equal(x, table[ids.long()].float())


# H = 2048 and 4096 take the one-launch kernel, H = 96 the embedding and add_norm's general kernel
@pytest.mark.parametrize("n,V,H", [(1, 50, 2048), (5, 300, 2048), (3, 20, 4096), (4, 30, 96)])
def test_embedding_norm_equals_embedding_then_add_norm(K, n, V, H):
    table = rand(V, H, dtype=K.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(K.dtype)
    ids = torch.randint(0, V, (n,), device="cuda", dtype=torch.int32)
    x, h = poisoned(n, H, dtype=torch.float32), poisoned(n, H, dtype=K.dtype)
    run(lambda: K.embedding_norm(ids, table, x, w, h, 1e-5))
    x2, h2 = poisoned(n, H, dtype=torch.float32), poisoned(n, H, dtype=K.dtype)
    run(lambda: K.embedding(ids, table, x2))
    run(lambda: K.add_norm(x2, None, 0, w, h2, 1e-5))
    assert torch.equal(x, x2) and torch.equal(h, h2)
    close(h, R.rmsnorm(table[ids.long()].double(), w.double(), 1e-5), K.dtype, "norm")


# H = 64, 96 and nadd = 9 take the general kernel; H = 2048 with up to 8 addends the vector one
@pytest.mark.parametrize("rows,H,nadd", [(1, 64, 0), (7, 96, 1), (3, 2048, 9), (1, 2048, 0), (1, 2048, 1),
                                         (1, 2048, 4), (33, 2048, 4), (5, 2048, 3), (2, 4096, 8)])
def test_add_norm(K, rows, H, nadd):
    x = rand(rows, H, dtype=torch.float32)
    y = rand(rows * max(nadd, 1), H, dtype=K.dtype)
    w = (1 + 0.1 * rand(H, dtype=torch.float32)).to(K.dtype)
    h = poisoned(rows, H, dtype=K.dtype)
    h32 = poisoned(rows, H, dtype=torch.float32)
    x0 = x.clone()
    run(lambda: K.add_norm(x, y, nadd, w, h, 1e-5, h32=h32))
    want_x = x0.double() + (y.double().view(rows, nadd, H).sum(1) if nadd else 0)
    close(x, want_x, torch.float32, "residual")
    close(h, R.rmsnorm(want_x, w.double(), 1e-5), K.dtype, "norm")
    close(h32, R.rmsnorm(want_x, w.double(), 1e-5), torch.float32, "fp32 norm copy")


@pytest.mark.parametrize("rows,I", [(1, 32), (19, 160), (64, 7168)])
def test_silu_mul(K, rows, I):
    gu = rand(rows, 2 * I, dtype=K.dtype)
    act = poisoned(rows, I, dtype=K.dtype)
    run(lambda: K.silu_mul(gu, act))
    g, u = gu.double().split(I, dim=1)
    close(act, torch.nn.functional.silu(g) * u, K.dtype, "silu_mul")


# S = 9, 17: sequences across shortconv_tiled's 8-token chunks; H = 97: odd, the per-channel kernel
@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("B,S,H", [(1, 1, 64), (3, 2, 96), (2, 17, 2048), (4, 5, 64), (2, 9, 130), (2, 3, 97)])
def test_shortconv(K, B, S, H, tiled):
    bcx = rand(B * S, 3 * H, dtype=K.dtype)
    conv_w = rand(H, 3, dtype=K.dtype, scale=0.5)
    y = poisoned(B * S, H, dtype=K.dtype)
    default, K.conv_tiled = K.conv_tiled, tiled
    try:
        run(lambda: K.shortconv(bcx, conv_w, y, S))
        if tiled:  # the same arithmetic in the same order as the per-channel kernel: the same bits
            y1 = poisoned(B * S, H, dtype=K.dtype)
            K.conv_tiled = False
            run(lambda: K.shortconv(bcx, conv_w, y1, S))
            assert torch.equal(y, y1)
    finally:
        K.conv_tiled = default
    for b in range(B):  # HF's ShortConv: B, C, x chunks; causal cross-correlation over time, zero history
        Bm, C, xv = bcx[b * S:(b + 1) * S].double().split(H, dim=1)
        bx = torch.cat([torch.zeros(2, H, dtype=torch.float64, device="cuda"), Bm * xv])
        w = conv_w.double()
        want = C * sum(w[:, j] * bx[j:j + S] for j in range(3))
        close(y[b * S:(b + 1) * S], want, K.dtype, f"shortconv seq {b}")


@pytest.mark.parametrize("B,S,nh,nkv,hd", [(1, 1, 4, 2, 16), (2, 17, 6, 2, 16), (2, 40, 32, 8, 64), (1, 3, 4, 4, 32)])
def test_qk_norm_rope(K, B, S, nh, nkv, hd):
    T = B * S
    qkv = rand(T, (nh + 2 * nkv) * hd, dtype=K.dtype)
    qw = (1 + 0.1 * rand(hd, dtype=torch.float32)).to(K.dtype)
    kw = (1 + 0.1 * rand(hd, dtype=torch.float32)).to(K.dtype)
    q, k, v = poisoned(B, nh, S, hd, dtype=K.dtype), poisoned(B, nkv, S, hd, dtype=K.dtype), poisoned(B, nkv, S, hd, dtype=K.dtype)
    run(lambda: K.qk_norm_rope(qkv, qw, kw, q, k, v, S, nh, nkv, hd, 1e-5, 1e6))
    qkv64 = qkv.double().view(B, S, nh + 2 * nkv, hd)
    cos, sin = R.rope_cos_sin(torch.arange(S, device="cuda"), hd, 1e6, torch.float64)
    for b in range(B):
        wq = R.apply_rope(R.rmsnorm(qkv64[b, :, :nh], qw.double(), 1e-5), cos, sin)
        wk = R.apply_rope(R.rmsnorm(qkv64[b, :, nh:nh + nkv], kw.double(), 1e-5), cos, sin)
        close(q[b].transpose(0, 1), wq, K.dtype, "q")
        close(k[b].transpose(0, 1), wk, K.dtype, "k")
        assert torch.equal(v[b].transpose(0, 1), qkv.view(B, S, -1, hd)[b, :, nh + nkv:])


def naive_attention(q, k, v):
    """q [B, nh, S, hd], k/v [B, nkv, S, hd] -> [B, S, nh*hd], causal, GQA, float64."""
    B, nh, S, hd = q.shape
    g = nh // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k) * hd ** -0.5
    s = s.masked_fill(~torch.ones(S, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.einsum("bhqk,bhkd->bqhd", torch.softmax(s, -1), v).reshape(B, S, nh * hd)


@pytest.mark.parametrize("B,S,nh,nkv,hd", [(1, 1, 4, 2, 16), (2, 33, 6, 2, 16), (2, 100, 32, 8, 64),
                                           (1, 77, 4, 4, 32), (3, 64, 32, 8, 64)])
def test_attention(K, B, S, nh, nkv, hd):
    q, k, v = rand(B, nh, S, hd, dtype=K.dtype), rand(B, nkv, S, hd, dtype=K.dtype), rand(B, nkv, S, hd, dtype=K.dtype)
    o = poisoned(B * S, nh * hd, dtype=K.dtype)
    run(lambda: K.attention(q, k, v, o, B, S, nh, nkv, hd))
    close(o.view(B, S, -1), naive_attention(q, k, v), K.dtype, "attention")


def routed(K, T, E, k, H=64, seed=None, variant=None):
    """Router logits from a real GEMM (as the engine), then route + sort on the device, with the
    tile table of grouped GEMM `variant` (None: the dtype's large-batch one)."""
    from optimized.kernels import max_gemm_tiles
    rows = K.moe_variant(variant).tile_rows
    h, gw = rand(T, H, dtype=K.dtype, seed=seed), rand(E, H, dtype=K.dtype, scale=0.3, seed=seed)
    logits = (h.float() @ gw.float().T).to(K.dtype)
    bias = rand(E, dtype=torch.float32, scale=0.05)
    idx, wts = poisoned(T, k, dtype=torch.int32), poisoned(T, k, dtype=torch.float32)
    npairs = T * k
    sp, offs = poisoned(npairs, dtype=torch.int32), poisoned(E + 1, dtype=torch.int32)
    tiles = poisoned(3 * max_gemm_tiles(npairs, E, K.dtype, rows), dtype=torch.int32)
    nt = poisoned(1, dtype=torch.int32)
    run(lambda: K.route(logits, bias, k, True, 1.0, idx, wts))
    run(lambda: K.moe_sort(idx, E, sp, offs, tiles, nt, variant=variant))
    return logits, bias, idx, wts, sp, offs, tiles, nt


@pytest.mark.parametrize("tile_variant", [None, "mma16", "mma64"])
@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (37, 8, 3), (200, 32, 4), (5, 64, 8)])
def test_route_and_sort(K, T, E, k, tile_variant):
    logits, bias, idx, wts, sp, offs, tiles, nt = routed(K, T, E, k, variant=tile_variant)
    s = torch.sigmoid(logits.float()).to(K.dtype).double()  # bf16: HF takes the sigmoid in bf16
    want_idx = torch.topk(s + bias.double(), k, dim=-1).indices
    assert torch.equal(idx.long().sort(1).values, want_idx.sort(1).values)
    w = torch.gather(s, 1, idx.long())
    close(wts, w / (w.sum(-1, keepdim=True) + 1e-6), torch.float32, "routing weights")
    check_sort(idx, sp, offs, tiles, nt, E, K.moe_variant(tile_variant).tile_rows)


def check_sort(idx, sp, offs, tiles, nt, E: int, BM: int) -> None:
    """moe_sort's outputs for the routing idx [T, k]: sorted_pair sp a permutation of the pairs
    grouped by ascending expert, offsets the counts' prefix sums, the tile table of BM-row tiles."""
    assert torch.equal(sp.sort().values.long(), torch.arange(idx.numel(), device="cuda"))
    experts = idx.view(-1).long()[sp.long()]
    assert torch.all(experts[1:] >= experts[:-1])
    counts = torch.bincount(idx.view(-1).long(), minlength=E)
    assert torch.equal(offs.long(), torch.cat([counts.new_zeros(1), counts.cumsum(0)]))
    assert nt.item() == int(((counts + BM - 1) // BM).sum())
    # the table: per expert, consecutive tiles of BM rows from its offset, each ending at the expert's end
    want = [(e, int(offs[e]) + r, int(offs[e + 1])) for e in range(E) for r in range(0, int(counts[e]), BM)]
    assert tiles[:3 * nt.item()].view(-1, 3).tolist() == [list(t) for t in want]


def expert_reference(h, w13, w2, idx, wts):
    """Per (token, slot): wts * swiglu_e(h[t]), float64 -> [T*k, H] rows by pair id."""
    T, k = idx.shape
    Im = w13.shape[1] // 2
    out = torch.empty(T * k, w2.shape[1], dtype=torch.float64, device="cuda")
    for p in range(T * k):
        t, e = p // k, idx.view(-1)[p].item()
        out[p] = R.swiglu(h[t:t + 1].double(), w13[e, :Im].double(), w13[e, Im:].double(), w2[e].double())[0] * wts.view(-1)[p].double()
    return out


def _variant_names():
    from optimized.kernels import MOE_VARIANTS
    return list(MOE_VARIANTS)


# odd shapes (widths not multiples of the 32/64-column slabs or the K stages), experts with many
# tiles (E=1: all rows in one expert; E=2, 260 rows each: two full 128-row tiles and one of 4 rows,
# whose warps have 1 and 0 m16 tiles with rows), and the real model's 1x16 and 20-token shapes
@pytest.mark.parametrize("variant", _variant_names())
@pytest.mark.parametrize("T,E,k,H,Im", [(1, 8, 2, 64, 32), (37, 8, 3, 96, 48), (150, 32, 4, 256, 192),
                                        (9, 4, 2, 72, 40), (50, 1, 1, 96, 48), (300, 8, 2, 64, 24),
                                        (260, 2, 2, 520, 72),
                                        (16, 32, 4, 2048, 1792), (20, 32, 4, 2048, 1792)])
def test_moe_grouped_gemms(K, T, E, k, H, Im, variant):
    if variant not in K.moe:
        pytest.skip(f"{variant} is not built for {K.dtype}")
    _, _, idx, wts, sp, _, tiles, nt = routed(K, T, E, k, H=H, variant=variant)
    if variant == "simt64" and (H % 16 or Im % 16):  # its float4 K slices: refused with a clear message
        act, ys = poisoned(T * k, Im, dtype=K.dtype), poisoned(T * k, H, dtype=K.dtype)
        with pytest.raises(ValueError, match="multiple of 16"):
            if H % 16:
                K.moe_gateup(rand(T, H, dtype=K.dtype), rand(E, 2 * Im, H, dtype=K.dtype), act, sp, tiles, nt, T * k, k,
                             variant=variant)
            else:
                K.moe_down(act, rand(E, H, Im, dtype=K.dtype), ys, sp, tiles, nt, wts, T * k, variant=variant)
        return
    h = rand(T, H, dtype=K.dtype)
    w13 = rand(E, 2 * Im, H, dtype=K.dtype, scale=H ** -0.5)
    w2 = rand(E, H, Im, dtype=K.dtype, scale=Im ** -0.5)
    npairs = T * k
    act = poisoned(npairs, Im, dtype=K.dtype)
    ys = poisoned(npairs, H, dtype=K.dtype)
    run(lambda: K.moe_gateup(h, w13, act, sp, tiles, nt, npairs, k, variant=variant))
    # act rows are in sorted order: row r holds pair sp[r]
    pairs = sp.long()
    tok, ex = pairs // k, idx.view(-1).long()[pairs]
    hd = h.double()
    g = torch.einsum("rh,rih->ri", hd[tok], w13[ex, :Im].double())
    u = torch.einsum("rh,rih->ri", hd[tok], w13[ex, Im:].double())
    close(act, torch.nn.functional.silu(g) * u, K.dtype, "gate/up")
    run(lambda: K.moe_down(act, w2, ys, sp, tiles, nt, wts, npairs, variant=variant))
    want = torch.empty(npairs, H, dtype=torch.float64, device="cuda")
    want[pairs] = torch.einsum("ri,rhi->rh", act.double(), w2[ex].double()) * wts.view(-1).double()[pairs, None]
    close(ys, want, K.dtype, "down")
    if T <= 40:  # the whole expert MLP against the reference swiglu, pair by pair
        close(ys, expert_reference(h, w13, w2, idx, wts), K.dtype, "expert MLP")


def test_moe_variant_table_matches_the_kernels(K):
    """Every variant built for the dtype launches; an unknown one is refused with the choices."""
    from optimized.kernels import MOE_VARIANTS, moe_variant_for
    assert set(K.moe) == {n for n, v in MOE_VARIANTS.items() if K.dtype in v.dtypes and v.arch in (None, K.arch)}
    for tokens in (1, 16, 17, 64, 1024, 8192):
        assert moe_variant_for(K.dtype, tokens, K.arch) in K.moe
    with pytest.raises(ValueError, match="choose one of"):
        K.moe_variant("nope")
