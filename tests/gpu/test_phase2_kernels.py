"""Phase 2's kernels and device functions on a real GPU: routing against harness.engines.reference.route
(ties included), the grouping permutation against numpy's stable sort, gather / SwiGLU /
combine against numpy, and moe_dev against the per-pair path and a float64 MoE, with skewed
routing, an expert that gets no tokens and 16K rows. Every intermediate the device functions
allocate is poisoned (all bits set: NaN as float32, -1 as int32) so unwritten values show.

The kernels use nothing of phase 1, so they are exercised on the baseline's device pattern
(ExpertBatching over BaselineEngine); test_phase2_engine.py tests Phase2Engine itself."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from baseline.engine import BaselineEngine
from harness.config import get_preset
from harness.gpu import launch
from harness.engines.reference import route as reference_route
from harness.engines.reference import swiglu
from harness.checkpoints.synthetic import synthetic_checkpoint
from phases.phase2.expert_batching import ROW_BLOCK, ExpertBatching

pytestmark = pytest.mark.gpu

# E=32, k=4 as the real model, at tiny widths; and the tiny presets (E=8, k=2 and k=3).
WIDE = get_preset("tiny").replace(num_experts=32, num_experts_per_tok=4, name="tiny-e32k4")
CONFIGS = {"tiny": get_preset("tiny"), "tiny-top3": get_preset("tiny-top3"), "e32k4": WIDE}


class KernelHost(ExpertBatching, BaselineEngine):
    """Phase 2's device functions on the baseline's device API."""
    name = "phase2-kernels"


@pytest.fixture(scope="module", params=list(CONFIGS))
def engine(request, gpu):
    eng = KernelHost(synthetic_checkpoint(CONFIGS[request.param], seed=3), device=gpu.index, progress=False)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def wide(gpu):
    eng = KernelHost(synthetic_checkpoint(WIDE, seed=5), device=gpu.index, progress=False)
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def poisoned_allocs(request, monkeypatch):
    """Every dalloc of the engine under test returns a buffer with all bits set."""
    for name in ("engine", "wide"):
        if name in request.fixturenames:
            eng = request.getfixturevalue(name)
            real = eng.dalloc

            def dalloc(nbytes, what, _real=real, _eng=eng):
                ptr = _real(nbytes, what)
                _eng.transfers.cuda.memset_d8(ptr, 0xFF, nbytes)
                return ptr
            monkeypatch.setattr(eng, "dalloc", dalloc)


def upload(eng, array):
    return eng.transfers.to_device(np.ascontiguousarray(array))


def download(eng, d, shape, dtype=np.float32):
    return eng.transfers.from_device(d, shape, dtype)


def free(eng, *bufs):
    for d in bufs:
        eng.transfers.free(d)


def random_routing(rng, rows, E, k) -> np.ndarray:
    """k distinct experts per row, int32 [rows, k]."""
    return np.argsort(rng.random((rows, E)), axis=1)[:, :k].astype(np.int32)


def run_route_kernel(eng, logits: np.ndarray, bias: np.ndarray | None):
    cfg = eng.config
    rows, E = logits.shape
    k = cfg.num_experts_per_tok
    d_logits = upload(eng, logits.astype(np.float32))
    d_bias = upload(eng, bias.astype(np.float32)) if bias is not None else np.intp(0)
    d_idx = eng.dalloc(rows * k * 4, "idx")
    d_wts = eng.dalloc(rows * k * 4, "wts")
    launch(eng.k_route_topk, ((rows + 127) // 128,), (128,),
           (d_logits, d_bias, d_idx, d_wts, np.int32(rows), np.int32(E), np.int32(k),
            np.int32(cfg.norm_topk_prob), np.float32(cfg.routed_scaling_factor)), sync=True)
    idx, wts = download(eng, d_idx, (rows, k), np.int32), download(eng, d_wts, (rows, k))
    free(eng, d_logits, d_idx, d_wts, *([d_bias] if bias is not None else []))
    return idx, wts


def reference_routing(cfg, logits, bias):
    """harness.engines.reference.route in float64 on logits (identity gate: h @ I.T = logits exactly)."""
    E = cfg.num_experts
    lg = torch.from_numpy(logits.astype(np.float64))
    b = torch.zeros(E, dtype=torch.float64) if bias is None else torch.from_numpy(bias.astype(np.float64))
    idx, w = reference_route(lg, torch.eye(E, dtype=torch.float64), b, cfg.num_experts_per_tok,
                             cfg.norm_topk_prob, cfg.routed_scaling_factor)
    return idx.numpy(), w.numpy()


# ----- routing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 17, 129, 512, 1000])
@pytest.mark.parametrize("skew", [0.0, 1.0])
def test_route_kernel_matches_reference(engine, rng, rows, skew):
    cfg = engine.config
    E = cfg.num_experts
    logits = rng.normal(0, 1.0, size=(rows, E)).astype(np.float32)
    bias = rng.normal(0, 0.05, size=E).astype(np.float32) + skew * np.linspace(1, 0, E, dtype=np.float32)
    idx, wts = run_route_kernel(engine, logits, bias)
    want_idx, want_w = reference_routing(cfg, logits, bias)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(wts, want_w, rtol=1e-6, atol=1e-7)
    if skew:  # the skew profile's top experts win most slots
        assert np.bincount(idx.ravel(), minlength=E)[0] >= rows // 2


def test_route_without_bias(engine, rng):
    cfg = engine.config
    logits = rng.normal(size=(33, cfg.num_experts)).astype(np.float32)
    idx, wts = run_route_kernel(engine, logits, None)
    want_idx, want_w = reference_routing(cfg, logits, None)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(wts, want_w, rtol=1e-6, atol=1e-7)


def test_route_ties_go_to_the_lower_index(engine, rng):
    """Exact ties (equal logit and bias) are chosen lower index first, the order of a stable
    descending sort (the baseline's numpy routing); torch.topk's own tie order is unspecified
    (its CPU version prefers the higher index), so against torch only the chosen scores are
    compared, and whether the orders agree is printed."""
    cfg = engine.config
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    # Few distinct values, far apart after the sigmoid: ties are exact, non-ties are clear.
    logits = rng.choice(np.float32([-1.0, 0.0, 0.5, 1.0]), size=(300, E))
    logits[0] = 0.0  # all logits equal: only the bias separates experts
    bias = rng.choice(np.float32([0.0, 0.25]), size=E)
    idx, wts = run_route_kernel(engine, logits, bias)
    score = 1 / (1 + np.exp(-logits.astype(np.float64))) + bias
    stable = np.argsort(-score, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, stable)
    ties = sum(len(np.unique(r)) < len(r) for r in score)
    assert ties > 250, "the test should be full of ties"
    row0, _ = run_route_kernel(engine, np.zeros((1, E), np.float32), None)
    np.testing.assert_array_equal(row0[0], np.arange(k))  # all E equal: the first k
    torch_top = torch.topk(torch.from_numpy(score), k, dim=-1)
    torch_vals = torch_top.values.numpy()
    print(f"torch.topk (CPU, float64) tie order equals the lower-index rule: "
          f"{np.array_equal(torch_top.indices.numpy(), stable)}")
    np.testing.assert_array_equal(np.take_along_axis(score, idx.astype(np.int64), 1), torch_vals)
    _, want_w = reference_routing(cfg, logits, bias)  # tied experts have equal weights
    np.testing.assert_allclose(wts, want_w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rows", [1, 17, 512])
def test_route_dev_matches_reference_on_h(engine, rng, rows):
    """Router logits by gemm, then the routing kernel, against reference.route on h."""
    cfg = engine.config
    layer = cfg.moe_layers[-1]
    f = f"layers.{layer}.feed_forward."
    h = rng.normal(size=(rows, cfg.hidden_size)).astype(np.float32)
    d_h = upload(engine, h)
    d_idx, d_wts = engine.route_dev(layer, d_h, rows)
    k = cfg.num_experts_per_tok
    idx, wts = download(engine, d_idx, (rows, k), np.int32), download(engine, d_wts, (rows, k))
    free(engine, d_h, d_idx, d_wts)
    w64 = {n: torch.from_numpy(engine.weights[f + n].astype(np.float64)) for n in ("gate.weight", "expert_bias")}
    want_idx, want_w = reference_route(torch.from_numpy(h.astype(np.float64)), w64["gate.weight"],
                                       w64["expert_bias"], k, cfg.norm_topk_prob, cfg.routed_scaling_factor)
    np.testing.assert_array_equal(idx, want_idx.numpy())
    np.testing.assert_allclose(wts, want_w.numpy(), rtol=1e-5, atol=1e-6)
    # the host wrapper returns the baseline's route() types
    hi, hw = engine.route(layer, h)
    assert hi.dtype == np.int64 and hw.dtype == np.float32
    np.testing.assert_array_equal(hi, idx)


# ----- grouping ---------------------------------------------------------------------------------------
def grouped_expected(idx: np.ndarray, E: int):
    """(row_pair, pair_row, counts): pairs ordered by (expert, token, slot)."""
    flat = idx.ravel()
    row_pair = np.argsort(flat, kind="stable").astype(np.int32)
    pair_row = np.empty_like(row_pair)
    pair_row[row_pair] = np.arange(len(flat), dtype=np.int32)
    return row_pair, pair_row, np.bincount(flat, minlength=E).astype(np.int32)


def check_grouping(eng, idx):
    rows, k = idx.shape
    d_idx = upload(eng, idx.astype(np.int32))
    d_row_pair, d_pair_row, counts = eng.group_dev(d_idx, rows)
    row_pair = download(eng, d_row_pair, rows * k, np.int32)
    pair_row = download(eng, d_pair_row, rows * k, np.int32)
    free(eng, d_idx, d_row_pair, d_pair_row)
    want_rp, want_pr, want_counts = grouped_expected(idx, eng.config.num_experts)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(row_pair, want_rp)
    np.testing.assert_array_equal(pair_row, want_pr)
    return counts


@pytest.mark.parametrize("rows", [1, 2, 17, 257, 512, 16 * 1024])
def test_grouping_matches_stable_sort(engine, rng, rows):
    cfg = engine.config
    counts = check_grouping(engine, random_routing(rng, rows, cfg.num_experts, cfg.num_experts_per_tok))
    assert counts.sum() == rows * cfg.num_experts_per_tok


def test_grouping_skewed_and_empty_experts(wide, rng):
    """Expert 7 in every token's first slot, experts 0 and 31 in none."""
    cfg = wide.config
    E, k, rows = cfg.num_experts, cfg.num_experts_per_tok, 1000
    idx = np.empty((rows, k), np.int32)
    idx[:, 0] = 7
    others = np.array([e for e in range(E) if e not in (0, 7, 31)])
    for t in range(rows):
        idx[t, 1:] = rng.choice(others, size=k - 1, replace=False)
    counts = check_grouping(wide, idx)
    assert counts[7] == rows and counts[0] == 0 and counts[31] == 0


def test_grouping_is_deterministic(wide, rng):
    cfg = wide.config
    idx = random_routing(rng, 4096, cfg.num_experts, cfg.num_experts_per_tok)
    d_idx = upload(wide, idx)
    runs = []
    for _ in range(3):
        d_rp, d_pr, _ = wide.group_dev(d_idx, 4096)
        runs.append(download(wide, d_rp, idx.size, np.int32))
        free(wide, d_rp, d_pr)
    free(wide, d_idx)
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


# ----- gather, SwiGLU activation, combine ---------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 17, 300])
def test_gather_and_combine_match_numpy(engine, rng, rows):
    cfg = engine.config
    E, k, H = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
    pairs = rows * k
    idx = random_routing(rng, rows, E, k)
    row_pair, pair_row, _ = grouped_expected(idx, E)
    h = rng.normal(size=(rows, H)).astype(np.float32)
    y = rng.normal(size=(pairs, H)).astype(np.float32)
    w = rng.random((rows, k)).astype(np.float32)
    d_h, d_rp, d_pr, d_y, d_w = (upload(engine, a) for a in (h, row_pair, pair_row, y, w))
    d_x, d_out = engine.dalloc(pairs * H * 4, "x"), engine.dalloc(rows * H * 4, "out")
    cols = (H + ROW_BLOCK - 1) // ROW_BLOCK
    launch(engine.k_gather_rows, (pairs, cols), (ROW_BLOCK,), (d_h, d_rp, d_x, np.int32(pairs), np.int32(H),
                                                            np.int32(k)), sync=True)
    launch(engine.k_combine_slots, (rows, cols), (ROW_BLOCK,), (d_y, d_pr, d_w, d_out, np.int32(rows),
                                                             np.int32(H), np.int32(k)), sync=True)
    x, out = download(engine, d_x, (pairs, H)), download(engine, d_out, (rows, H))
    free(engine, d_h, d_rp, d_pr, d_y, d_w, d_x, d_out)
    np.testing.assert_array_equal(x, h[row_pair // k])
    want = np.zeros((rows, H), np.float32)
    for j in range(k):  # slot order, each product and sum rounded to float32: bitwise equal
        want += w[:, j:j + 1] * y[pair_row.reshape(rows, k)[:, j]]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("n", [1, 255, 257, 100_000])
def test_silu_mul_equals_the_baseline_kernels(engine, rng, n):
    g = (3 * rng.normal(size=n)).astype(np.float32)
    u = rng.normal(size=n).astype(np.float32)
    d_g, d_u = upload(engine, g), upload(engine, u)
    d_act, d_prod = engine.dalloc(n * 4, "act"), engine.dalloc(n * 4, "prod")
    engine.elementwise(engine.k_silu, (d_g, d_act), n)
    engine.elementwise(engine.k_mul, (d_act, d_u, d_prod), n)
    engine.elementwise(engine.k_silu_mul, (d_g, d_u), n)
    fused, separate = download(engine, d_g, n), download(engine, d_prod, n)
    free(engine, d_g, d_u, d_act, d_prod)
    np.testing.assert_array_equal(fused, separate)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(fused, g64 / (1 + np.exp(-g64)) * u, rtol=1e-6, atol=1e-30)


# ----- the whole MoE block --------------------------------------------------------------------------------
def moe_float64(eng, layer, h):
    """The MoE (LFM2-MoE's) in float64 from the engine's (fp32) weights."""
    cfg, f = eng.config, f"layers.{layer}.feed_forward."
    W = lambda n: torch.from_numpy(eng.weights[f + n].astype(np.float64))  # noqa: E731
    x = torch.from_numpy(h.astype(np.float64))
    idx, wts = reference_route(x, W("gate.weight"), W("expert_bias"), cfg.num_experts_per_tok,
                               cfg.norm_topk_prob, cfg.routed_scaling_factor)
    out = torch.zeros_like(x)
    for e in torch.unique(idx).tolist():
        tok, slot = (idx == e).nonzero(as_tuple=True)
        p = f"experts.{e}."
        y = swiglu(x[tok], W(p + "w1.weight"), W(p + "w3.weight"), W(p + "w2.weight"))
        out.index_add_(0, tok, y * wts[tok, slot, None])
    return out.numpy(), idx.numpy()


def run_moe_dev(eng, layer, h):
    rows, H = h.shape
    live = eng.transfers.live_bytes
    d_h = upload(eng, h)
    eng.counters.reset()
    d_out = eng.moe_dev(layer, d_h, rows)
    counters = eng.counters.as_dict()
    out = download(eng, d_out, (rows, H))
    free(eng, d_h, d_out)
    assert eng.transfers.live_bytes == live, "moe_dev frees every intermediate it allocates"
    return out, counters


def expert_bytes(cfg) -> int:
    return 3 * cfg.moe_intermediate_size * cfg.hidden_size * 4


@pytest.mark.parametrize("rows", [1, 17, 51])  # 51 = a batch of 3 sequences of 17
def test_moe_dev_matches_the_per_pair_path(engine, rng, rows):
    cfg = engine.config
    layer = cfg.moe_layers[0]
    h = rng.normal(size=(rows, cfg.hidden_size)).astype(np.float32)
    grouped, counters = run_moe_dev(engine, layer, h)
    per_pair = BaselineEngine.moe_block(engine, layer, h)  # one (token, expert) pair at a time
    want, idx = moe_float64(engine, layer, h)
    scale = np.abs(want).max()
    print(f"{cfg.name} rows={rows}: max |grouped - per-pair| {np.abs(grouped - per_pair).max():.1e}, "
          f"max |grouped - float64| / max|out| {np.abs(grouped - want).max() / scale:.1e}")
    assert np.abs(grouped - per_pair).max() <= 1e-6 * scale
    assert np.abs(grouped - want).max() <= 1e-5 * scale
    distinct = len(np.unique(idx))
    assert counters["expert_h2d_bytes"] == distinct * expert_bytes(cfg)
    assert counters["d2h_bytes"] == cfg.num_experts * 4, "only the per-expert counts come back"


def set_bias(monkeypatch, eng, layer, bias):
    monkeypatch.setitem(eng.weights, f"layers.{layer}.feed_forward.expert_bias", bias.astype(np.float32))


@pytest.mark.parametrize("rows", [1, 40, 600])
def test_moe_dev_skewed_routing(wide, rng, monkeypatch, rows):
    """Expert 3 in every token's routing, experts 0 and 30 in none; the rest as routed."""
    cfg = wide.config
    layer = cfg.moe_layers[0]
    bias = np.zeros(cfg.num_experts, np.float32)
    bias[3], bias[0], bias[30] = 10.0, -10.0, -10.0
    set_bias(monkeypatch, wide, layer, bias)
    h = rng.normal(size=(rows, cfg.hidden_size)).astype(np.float32)
    grouped, counters = run_moe_dev(wide, layer, h)
    want, idx = moe_float64(wide, layer, h)
    assert (idx[:, 0] == 3).all() and not np.isin(idx, [0, 30]).any()
    scale = np.abs(want).max()
    assert np.abs(grouped - want).max() <= 1e-5 * scale
    assert counters["expert_h2d_bytes"] == len(np.unique(idx)) * expert_bytes(cfg)
    if rows <= 40:
        per_pair = BaselineEngine.moe_block(wide, layer, h)
        assert np.abs(grouped - per_pair).max() <= 1e-6 * scale


def test_moe_dev_every_token_to_the_same_experts(wide, rng, monkeypatch):
    """Only k experts used at all: k weight uploads, everything else gets no tokens."""
    cfg = wide.config
    layer, k = cfg.moe_layers[-1], cfg.num_experts_per_tok
    bias = np.full(cfg.num_experts, -10.0, np.float32)
    chosen = [5, 9, 20, 31][:k]
    bias[chosen] = 10.0
    set_bias(monkeypatch, wide, layer, bias)
    h = rng.normal(size=(257, cfg.hidden_size)).astype(np.float32)
    grouped, counters = run_moe_dev(wide, layer, h)
    want, idx = moe_float64(wide, layer, h)
    assert set(np.unique(idx)) == set(chosen)
    assert np.abs(grouped - want).max() <= 1e-5 * np.abs(want).max()
    assert counters["expert_h2d_bytes"] == k * expert_bytes(cfg)


def test_moe_dev_16k_rows(wide, rng):
    """Phase 5's largest batch: 16 x 1024 tokens, 65,536 pairs in one grouped pass."""
    cfg = wide.config
    layer = cfg.moe_layers[0]
    h = rng.normal(size=(16 * 1024, cfg.hidden_size)).astype(np.float32)
    grouped, counters = run_moe_dev(wide, layer, h)
    want, idx = moe_float64(wide, layer, h)
    assert np.abs(grouped - want).max() <= 1e-5 * np.abs(want).max()
    assert counters["expert_h2d_bytes"] == len(np.unique(idx)) * expert_bytes(cfg)
