"""The baseline's CPU side (baseline/host_ops.py and the engine's wiring) against harness.engines.reference.

float32 numpy vs float64 torch on the tiny preset, fresh random inputs, sequence lengths 1, 2, 3, 17.
The last tests run the whole BaselineEngine with its GPU matrix products swapped for numpy, so the
layer wiring, the MoE pair loop and the LM head are checked on machines without a GPU.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from baseline import host_ops
from baseline.engine import BaselineEngine
from harness.engines import reference as ref

SEQ_LENS = [1, 2, 3, 17]
TOL = 1e-5  # relative to the largest magnitude of the reference output


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def assert_close(got: np.ndarray, want, tol: float = TOL):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    assert np.all(np.isfinite(got))
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got.astype(np.float64) - want).max() / scale
    assert err < tol, f"max error {err:.2e} of the output's scale {scale:.3g}"


def w32(ckpt, name) -> np.ndarray:
    return ckpt.get(name, torch.float32).numpy()


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # fresh per test, reproducible


@pytest.mark.parametrize("T", SEQ_LENS)
def test_rmsnorm(rng, T):
    x = rng.normal(size=(T, 64)).astype(np.float32)
    w = (1 + 0.1 * rng.normal(size=64)).astype(np.float32)
    assert_close(host_ops.rmsnorm(x, w, 1e-5), ref.rmsnorm(t64(x), t64(w), 1e-5))
    heads = x.reshape(T, 4, 16)  # per-head norm over the last dim
    assert_close(host_ops.rmsnorm(heads, w[:16], 1e-5), ref.rmsnorm(t64(heads), t64(w[:16]), 1e-5))


def test_embedding(rng, tiny_ckpt):
    table = w32(tiny_ckpt, "embed_tokens.weight")
    ids = rng.integers(0, table.shape[0], size=17)
    got = host_ops.embedding(table, ids)
    np.testing.assert_array_equal(got, table[ids])
    got[0] += 1  # a copy, not a view into the table
    assert not np.array_equal(got[0], table[ids[0]])


@pytest.mark.parametrize("T", SEQ_LENS)
def test_rope(rng, T):
    pos = np.arange(T)
    cos, sin = host_ops.rope_cos_sin(pos, 16, 1e6)
    rcos, rsin = ref.rope_cos_sin(torch.arange(T), 16, 1e6, torch.float64)
    x = rng.normal(size=(T, 4, 16)).astype(np.float32)
    assert_close(host_ops.apply_rope(x, cos, sin), ref.apply_rope(t64(x), rcos, rsin))


def attention_weights(ckpt, layer):
    a = f"layers.{layer}.self_attn."
    return [w32(ckpt, a + n + ".weight") for n in ("q_proj", "k_proj", "v_proj", "out_proj", "q_layernorm",
                                                    "k_layernorm")]


@pytest.mark.parametrize("T", SEQ_LENS)
def test_attention(rng, tiny_ckpt, T):
    cfg = tiny_ckpt.config
    layer = cfg.attention_layers[0]
    wq, wk, wv, wo, qn, kn = attention_weights(tiny_ckpt, layer)
    h = rng.normal(size=(T, cfg.hidden_size)).astype(np.float32)
    o = host_ops.attention_core(h @ wq.T, h @ wk.T, h @ wv.T, qn, kn, np.arange(T), cfg.num_attention_heads,
                                cfg.num_key_value_heads, cfg.head_dim, cfg.norm_eps, cfg.rope_theta)
    want = ref.attention(t64(h), *(t64(w) for w in (wq, wk, wv, wo, qn, kn)), cfg)
    assert_close(o @ wo.T, want)


def test_attention_is_causal(rng, tiny_ckpt):
    """Changing the last token must not change any earlier position's output."""
    cfg = tiny_ckpt.config
    wq, wk, wv, wo, qn, kn = attention_weights(tiny_ckpt, cfg.attention_layers[0])
    h = rng.normal(size=(5, cfg.hidden_size)).astype(np.float32)
    h2 = h.copy()
    h2[-1] = rng.normal(size=cfg.hidden_size)

    def run(x):
        return host_ops.attention_core(x @ wq.T, x @ wk.T, x @ wv.T, qn, kn, np.arange(5), cfg.num_attention_heads,
                                       cfg.num_key_value_heads, cfg.head_dim, cfg.norm_eps, cfg.rope_theta)
    a, b = run(h), run(h2)
    np.testing.assert_array_equal(a[:-1], b[:-1])
    assert not np.allclose(a[-1], b[-1])


@pytest.mark.parametrize("T", SEQ_LENS)
def test_shortconv(rng, tiny_ckpt, T):
    cfg = tiny_ckpt.config
    c = f"layers.{cfg.conv_layers[0]}.conv."
    in_w, conv_w, out_w = (w32(tiny_ckpt, c + n) for n in ("in_proj.weight", "conv.weight", "out_proj.weight"))
    h = rng.normal(size=(T, cfg.hidden_size)).astype(np.float32)
    got = host_ops.shortconv_core(h @ in_w.T, conv_w) @ out_w.T
    assert_close(got, ref.short_conv(t64(h), t64(in_w), t64(conv_w), t64(out_w)))


@pytest.mark.parametrize("T", SEQ_LENS)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_route(rng, tiny_ckpt, T, scale):
    cfg = tiny_ckpt.config
    f = f"layers.{cfg.moe_layers[0]}.feed_forward."
    gate = w32(tiny_ckpt, f + "gate.weight")
    bias = (0.5 * rng.normal(size=cfg.num_experts)).astype(np.float32)  # big enough to change choices
    h = rng.normal(size=(T, cfg.hidden_size)).astype(np.float32) * 20
    idx, w = host_ops.route(h @ gate.T, bias, cfg.num_experts_per_tok, True, scale)
    ridx, rw = ref.route(t64(h), t64(gate), t64(bias), cfg.num_experts_per_tok, True, scale)
    np.testing.assert_array_equal(idx, ridx.numpy())
    assert_close(w, rw)
    np.testing.assert_allclose(w.sum(-1), scale, rtol=1e-5)


def test_route_bias_only_chooses(rng):
    """A huge bias on expert 0 makes it chosen everywhere, yet its weight is its unbiased sigmoid."""
    logits = rng.normal(size=(6, 8)).astype(np.float32)
    logits[:, 0] = -3.0  # sigmoid ~0.047: never chosen on merit
    bias = np.zeros(8, np.float32)
    bias[0] = 100.0
    idx, w = host_ops.route(logits, bias, 2, norm_topk=False)
    assert (idx[:, 0] == 0).all()
    np.testing.assert_allclose(w[:, 0], 1 / (1 + np.exp(3.0)), rtol=1e-6)


def test_expert_pairs_order(rng):
    idx = rng.integers(0, 8, size=(5, 3))
    pairs = host_ops.expert_pairs(idx)
    assert pairs.shape == (15, 3)
    # token by token, each token's experts in slot order, every routing entry exactly once
    np.testing.assert_array_equal(pairs[:, 0], np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(pairs[:, 1], np.tile(np.arange(3), 5))
    np.testing.assert_array_equal(pairs[:, 2], idx[pairs[:, 0], pairs[:, 1]])


# ----- the whole engine, with numpy in place of the GPU ------------------------------------------
class HostOnlyBaseline(BaselineEngine):
    """BaselineEngine with its two GPU entry points done in numpy; everything else is the real code."""

    def setup_device(self, device):
        self.expert_calls = 0

    def matmul(self, x, name):
        return x @ self.weights[name].T

    def mlp(self, h, prefix, tag=None):
        self.expert_calls += tag == "expert"
        W = self.weights
        gate = h @ W[prefix + "w1.weight"].T
        return (gate / (1 + np.exp(-gate)) * (h @ W[prefix + "w3.weight"].T)) @ W[prefix + "w2.weight"].T


@pytest.fixture(scope="module")
def host_engine(tiny_ckpt):
    return HostOnlyBaseline(tiny_ckpt, progress=False, max_batch=4)


@pytest.mark.parametrize("T", SEQ_LENS)
def test_engine_logits_match_reference(rng, tiny_ckpt, host_engine, T):
    cfg = tiny_ckpt.config
    tokens = rng.integers(0, cfg.vocab_size, size=(2, T), dtype=np.int32)
    host_engine.expert_calls = 0
    got = host_engine.forward(tokens)
    want = ref.reference_logits(tiny_ckpt, tokens, dtype=torch.float64)
    assert got.shape == (2, cfg.vocab_size)
    assert_close(got, want)
    # one expert MLP call per (token, expert) pair, per MoE layer, per sample
    assert host_engine.expert_calls == 2 * T * cfg.num_experts_per_tok * len(cfg.moe_layers)


def test_engine_rejects_bad_input(host_engine):
    with pytest.raises(ValueError, match="token ids"):
        host_engine.forward(np.array([[0, 10**6]], dtype=np.int32))
    with pytest.raises(ValueError, match="max_batch"):
        host_engine.forward(np.zeros((5, 3), dtype=np.int32))
