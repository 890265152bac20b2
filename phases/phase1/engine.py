"""Phase 1: attention and RMSNorm on the GPU (optimization plan 1.2 and 3.1).

Changes from phase 0 (baseline/engine.py), nothing else:
| method          | phase 0                                  | phase 1                                        |
|-----------------|------------------------------------------|------------------------------------------------|
| norm            | CPU (host_ops.rmsnorm)                   | rmsnorm kernel (norm_dev), one upload + one download |
| attention_block | 4 GPU matmuls, each a host round trip;   | upload h once; q/k/v projections, per-head q/k |
|                 | q/k norm, RoPE, GQA, scores, softmax,    | RMSNorm, RoPE, scores, causal softmax, P.V and |
|                 | P.V on the CPU                           | out_proj all on the GPU (attention_dev); one download |
Weights are still uploaded on every use (device_weight, as phase 0, now also the norm weights),
and the experts still run one (token, expert) pair at a time, so the phase's own effect shows.

`norm_dev` and `attention_dev` are device-in/device-out and take `batch` sequences of `seq_len`
tokens each (rows [batch * seq_len, features]); the host wrappers `norm` and `attention_block`
are what the baseline's `layer` calls. Later phases reuse the device functions as they are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from baseline.engine import F32, BaselineEngine
from harness.gpu import load_module
from harness.gpu import nvtx

KERNELS = Path(__file__).with_name("kernels.cu")
ATT_TILE = 16  # = kernels.cu ATT_TILE
OUT_DIMS, OUT_ROWS = 32, 8  # = kernels.cu attention_output block
ROPE_BLOCK = 256
SOFTMAX_BLOCK = 128


def row_block(width: int, cap: int = 256) -> int:
    """Threads for a one-block-per-row kernel: a multiple of 32 (the reductions need whole warps),
    no more than the row has elements (rounded up), at most `cap`."""
    return max(32, min(cap, (width + 31) // 32 * 32))


class Phase1Engine(BaselineEngine):
    name = "phase1"
    phase = 1

    def setup_device(self, device) -> None:
        super().setup_device(device)
        module = load_module(KERNELS, self.gpu)
        self.k_rmsnorm = module.kernel("rmsnorm")
        self.k_rope = module.kernel("rope")
        self.k_scores = module.kernel("attention_scores")
        self.k_softmax = module.kernel("causal_softmax")
        self.k_attn_out = module.kernel("attention_output")

    # ----- kernel launches on device buffers (the tests drive these one by one) ------------------
    def rmsnorm_rows(self, d_x, d_w, d_y, rows: int, dim: int) -> None:
        """y[r] = rmsnorm(x[r]) * w for `rows` rows of `dim` values; d_y may be d_x."""
        self._launch(self.k_rmsnorm, (rows,), (row_block(dim),),
                     (d_x, d_w, d_y, np.int32(rows), np.int32(dim), np.float32(self.config.norm_eps)),
                     {"x": (rows, dim)})

    def rope_rows(self, d_x, d_y, tokens: int, heads: int, seq_len: int) -> None:
        """RoPE on [tokens, heads * head_dim]; token t sits at position t % seq_len. d_y may be d_x."""
        hd = self.config.head_dim
        pairs = tokens * heads * (hd // 2)
        self._launch(self.k_rope, ((pairs + ROPE_BLOCK - 1) // ROPE_BLOCK,), (ROPE_BLOCK,),
                     (d_x, d_y, np.int32(tokens), np.int32(heads), np.int32(hd), np.int32(seq_len),
                      np.float32(self.config.rope_theta)),
                     {"x": (tokens, heads, hd), "seq_len": seq_len})

    def attention_scores(self, d_q, d_k, d_scores, batch: int, seq_len: int) -> None:
        """[batch*S, nh*hd] x [batch*S, nkv*hd] -> scaled causal scores [batch, nh, S, S]."""
        cfg = self.config
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        tiles = (seq_len + ATT_TILE - 1) // ATT_TILE
        self._launch(self.k_scores, (tiles, tiles, batch * nh), (ATT_TILE, ATT_TILE),
                     (d_q, d_k, d_scores, np.int32(seq_len), np.int32(nh), np.int32(nkv), np.int32(hd),
                      np.float32(hd ** -0.5)),
                     {"q": (batch * seq_len, nh * hd), "k": (batch * seq_len, nkv * hd),
                      "scores": (batch, nh, seq_len, seq_len)})

    def causal_softmax(self, d_scores, d_probs, batch: int, seq_len: int) -> None:
        """Row-wise causal softmax of [batch, nh, S, S]; d_probs may be d_scores."""
        rows = batch * self.config.num_attention_heads * seq_len
        self._launch(self.k_softmax, (rows,), (row_block(seq_len, SOFTMAX_BLOCK),),
                     (d_scores, d_probs, np.int32(rows), np.int32(seq_len)), {"scores": (rows, seq_len)})

    def attention_output(self, d_probs, d_v, d_out, batch: int, seq_len: int) -> None:
        """P [batch, nh, S, S] @ V [batch*S, nkv*hd] -> [batch*S, nh*hd]."""
        cfg = self.config
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        grid = ((hd + OUT_DIMS - 1) // OUT_DIMS, (seq_len + OUT_ROWS - 1) // OUT_ROWS, batch * nh)
        self._launch(self.k_attn_out, grid, (OUT_DIMS, OUT_ROWS),
                     (d_probs, d_v, d_out, np.int32(seq_len), np.int32(nh), np.int32(nkv), np.int32(hd)),
                     {"probs": (batch, nh, seq_len, seq_len), "v": (batch * seq_len, nkv * hd)})

    # ----- device functions (device in, device out) ------------------------------------------------
    def norm_dev(self, d_x, rows: int, name: str, d_out=None):
        """RMSNorm of `rows` rows with weight `name` (the row width is the weight's length). Into a
        new buffer, or into `d_out` (which may be d_x); returns the output buffer."""
        dim = self.weights[name].shape[-1]
        if d_out is None:
            d_out = self.dalloc(rows * dim * F32, "norm output")
        d_w, own = self.device_weight(name)
        self.rmsnorm_rows(d_x, d_w, d_out, rows, dim)
        if own:
            self.transfers.free(d_w)
        return d_out

    def project(self, d_x, rows: int, name: str, what: str):
        """A new device buffer holding x @ weights[name].T."""
        out_features, in_features = self.weights[name].shape
        d_y = self.dalloc(rows * out_features * F32, what)
        d_w, own = self.device_weight(name)
        self.gemm(d_x, d_w, d_y, rows, out_features, in_features)
        if own:
            self.transfers.free(d_w)
        return d_y

    def attention_dev(self, layer: int, d_h, batch: int, seq_len: int):
        """Causal GQA attention of `batch` sequences, positions 0..seq_len-1 each:
        h [batch*S, H] on the device -> a new device buffer [batch*S, H]."""
        cfg, a = self.config, f"layers.{layer}.self_attn."
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        T = batch * seq_len
        d_q = self.project(d_h, T, a + "q_proj.weight", "q")
        d_k = self.project(d_h, T, a + "k_proj.weight", "k")
        d_v = self.project(d_h, T, a + "v_proj.weight", "v")
        self.norm_dev(d_q, T * nh, a + "q_layernorm.weight", d_out=d_q)  # per head, in place
        self.norm_dev(d_k, T * nkv, a + "k_layernorm.weight", d_out=d_k)
        self.rope_rows(d_q, d_q, T, nh, seq_len)
        self.rope_rows(d_k, d_k, T, nkv, seq_len)
        d_p = self.dalloc(batch * nh * seq_len * seq_len * F32, "attention scores")
        self.attention_scores(d_q, d_k, d_p, batch, seq_len)
        self.causal_softmax(d_p, d_p, batch, seq_len)  # in place: scores become probabilities
        d_o = self.dalloc(T * nh * cfg.head_dim * F32, "attention heads output")
        self.attention_output(d_p, d_v, d_o, batch, seq_len)
        for buf in (d_q, d_k, d_v, d_p):
            self.dfree(buf)
        d_out = self.project(d_o, T, a + "out_proj.weight", "attention output")
        self.dfree(d_o)
        return d_out

    # ----- host wrappers (what the baseline's layer() calls) ------------------------------------------
    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        d_x = self.transfers.to_device(x, what="norm input")
        d_y = self.norm_dev(d_x, x.shape[0], name)
        y = self.transfers.from_device(d_y, x.shape)
        self.dfree(d_x)
        self.dfree(d_y)
        return y

    def attention_block(self, layer: int, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
        T = h.shape[0]
        if not np.array_equal(positions, np.arange(T)):
            raise ValueError("phase 1 attention runs a whole prompt from position 0 (positions 0..T-1); "
                             f"got positions {positions[:4]}... for {T} tokens")
        with nvtx.range("attention"):
            d_h = self.transfers.to_device(np.ascontiguousarray(h, dtype=np.float32), what="attention input")
            d_out = self.attention_dev(layer, d_h, 1, T)
            out = self.transfers.from_device(d_out, (T, self.config.hidden_size))
            self.dfree(d_h)
            self.dfree(d_out)
            return out
