"""Phase 0: a faithful PyCUDA port of the original C++/CUDA program (docs/roadmap.md, phase 0).

float32 everywhere; it keeps what makes the original slow. Method -> the original's step:

| method            | table row                                  | where                                 |
|-------------------|--------------------------------------------|---------------------------------------|
| embed             | embedding lookup                           | CPU (host_ops.embedding)              |
| norm              | RMSNorm (2 per layer + final)              | CPU (host_ops.rmsnorm)                |
| matmul            | every matrix product x @ W.T               | GPU tiled kernel; per call: cudaMalloc, synchronous pageable upload of the activation AND the weight, kernel, download, cudaFree |
| mlp               | dense MLP / expert MLP                     | GPU per call: 9 cudaMallocs (input, w1, w3, w2, output, 4 intermediates), kernels matmul, silu, matmul, mul, matmul, download, cudaFree all |
| attention_block   | attention (6 layers)                       | 4 projections via matmul; the rest on the CPU (host_ops.attention_core) |
| conv_block        | ShortConv (18 layers)                      | in_proj/out_proj via matmul; the rest on the CPU (host_ops.shortconv_core) |
| moe_block         | MoE router + MoE experts                   | router via matmul, routing on the CPU; experts one (token, expert) pair at a time through mlp, weighted add on the CPU |
| lm_head           | final norm + LM head                       | CPU norm, GPU matmul, last position only |
| forward           | MPI/main loop                              | the samples of a batch one at a time  |

Later phases subclass this and override one concern each: phase 1 attention_block + norm,
phase 2 moe_block (the expert loop), phase 3 conv_block + embed, phase 4 the upload/allocation
pattern (matmul, mlp, device_weight), phase 5 forward (batching).

Weights are named, not passed: `matmul(x, "layers.0.conv.in_proj.weight")`. `device_weight(name)`
is the one place that turns a weight name into a device buffer (here: a fresh allocation and
upload on every call), so a resident-weights phase overrides it and everything else follows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.engines.base import Engine
from harness.gpu import Transfers, get_context, launch, load_module, release_context
from harness.gpu import nvtx
from harness.engines.reference import check_tokens

from . import host_ops

KERNELS = Path(__file__).with_name("kernels.cu")
TILE = 32  # matmul tile, = kernels.cu TILE
ELEMENTWISE_BLOCK = 256
F32 = 4  # bytes


class BaselineEngine(Engine):
    name = "baseline"
    phase = 0
    dtype = "fp32"
    # Launch checks synchronise after every kernel: the original's next step was a synchronous
    # copy anyway, and an error is then reported against the kernel that caused it.
    sync_launches = True
    output_collective = "reduce"  # the harness combines outputs as the original: MPI Reduce(SUM) of the full array

    def __init__(self, checkpoint, device=0, **options):
        super().__init__(checkpoint, device, **options)
        self.max_batch = int(options.get("max_batch", 1))
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        self._closed = False
        self.setup_device(device)
        self.weights = self.load_weights(options.get("progress", True))

    # ----- setup -------------------------------------------------------------------------------
    def setup_device(self, device) -> None:
        """One CUDA context (shared with torch), the kernels, and the counted transfer layer."""
        self.gpu = get_context(device)
        self.transfers = Transfers(self.counters, self.gpu)
        self.stream = None  # every launch goes on this stream; phase 4 gives the engine its own
        module = load_module(KERNELS, self.gpu)
        self.k_matmul = module.kernel("matmul")
        self.k_silu = module.kernel("silu")
        self.k_mul = module.kernel("mul")

    def load_weights(self, progress: bool = True) -> dict[str, np.ndarray]:
        """Every tensor as a host float32 numpy array in ordinary (pageable) memory, owned by the
        engine, as the original read model.bin into malloc'd buffers. Experts stay one array each."""
        names = self.checkpoint.names()
        weights = {}
        for name in tqdm(names, desc="baseline: loading fp32 weights", unit="tensor", disable=not progress,
                         leave=False):
            t = self.checkpoint.get(name, torch.float32)
            weights[name] = np.array(t.numpy(), dtype=np.float32, copy=True, order="C")
        return weights

    # ----- the device pattern (phase 4 replaces these) ---------------------------------------------
    def device_weight(self, name: str, tag: str | None = None):
        """A device buffer holding weight `name`, and whether the caller must free it. Baseline:
        a new allocation and a synchronous pageable upload, every call."""
        return self.transfers.to_device(self.weights[name], weight=True, tag=tag, what=name), True

    def dalloc(self, nbytes: int, what: str):
        """A device buffer for an intermediate. Baseline: cudaMalloc every time (phase 4: workspace)."""
        return self.transfers.alloc(nbytes, what)

    def dfree(self, ptr) -> None:
        self.transfers.free(ptr)

    def _launch(self, kernel, grid, block, args, shapes) -> None:
        """Every kernel of every phase goes through here: on the engine's stream, checked, and
        synchronised after the launch when sync_launches says so."""
        launch(kernel, grid, block, args, shapes=shapes, stream=self.stream, sync=self.sync_launches)

    def gemm(self, d_x, d_w, d_y, M: int, N: int, K: int) -> None:
        """y[M,N] = x[M,K] @ w[N,K]^T on device buffers, with the tiled kernel."""
        grid = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
        self._launch(self.k_matmul, grid, (TILE, TILE), (d_x, d_w, d_y, np.int32(M), np.int32(N), np.int32(K)),
                     {"x": (M, K), "w": (N, K), "y": (M, N)})

    def elementwise(self, kernel, args, n: int) -> None:
        self._launch(kernel, ((n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK,), (ELEMENTWISE_BLOCK,),
                     (*args, np.int32(n)), {"n": n})

    def matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        """x [M, K] @ weights[name].T on the GPU. Nothing stays on the device between calls."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        N, K = self.weights[name].shape
        M = x.shape[0]
        t = self.transfers
        d_x = t.to_device(x, what="matmul input")
        d_w, own_w = self.device_weight(name)
        d_y = t.alloc(M * N * F32, "matmul output")
        self.gemm(d_x, d_w, d_y, M, N, K)
        y = t.from_device(d_y, (M, N))
        t.free(d_x)
        t.free(d_y)
        if own_w:
            t.free(d_w)
        return y

    def mlp(self, h: np.ndarray, prefix: str, tag: str | None = None) -> np.ndarray:
        """SwiGLU w2(silu(w1 h) * w3 h) on the GPU, for `prefix` + {w1,w3,w2}.weight (a dense
        layer's feed_forward or one expert). Allocates and frees everything per call."""
        h = np.ascontiguousarray(h, dtype=np.float32)
        T, H = h.shape
        inter = self.weights[prefix + "w1.weight"].shape[0]
        t = self.transfers
        d_h = t.to_device(h, what="mlp input")
        (d_w1, own1), (d_w3, own3), (d_w2, own2) = (self.device_weight(prefix + w, tag) for w in
                                                     ("w1.weight", "w3.weight", "w2.weight"))
        d_out = t.alloc(T * H * F32, "mlp output")
        d_gate, d_act, d_up, d_prod = (t.alloc(T * inter * F32, "mlp intermediate") for _ in range(4))
        n = T * inter
        self.gemm(d_h, d_w1, d_gate, T, inter, H)
        self.elementwise(self.k_silu, (d_gate, d_act), n)
        self.gemm(d_h, d_w3, d_up, T, inter, H)
        self.elementwise(self.k_mul, (d_act, d_up, d_prod), n)
        self.gemm(d_prod, d_w2, d_out, T, H, inter)
        out = t.from_device(d_out, (T, H))
        for buf, own in ((d_h, True), (d_w1, own1), (d_w3, own3), (d_w2, own2), (d_out, True),
                         (d_gate, True), (d_act, True), (d_up, True), (d_prod, True)):
            if own:
                t.free(buf)
        return out

    # ----- the model's steps ----------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        with nvtx.range("embedding"):
            return host_ops.embedding(self.weights["embed_tokens.weight"], ids)

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return host_ops.rmsnorm(x, self.weights[name], self.config.norm_eps)

    def attention_block(self, layer: int, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
        cfg, a = self.config, f"layers.{layer}.self_attn."
        with nvtx.range("attention"):
            q = self.matmul(h, a + "q_proj.weight")
            k = self.matmul(h, a + "k_proj.weight")
            v = self.matmul(h, a + "v_proj.weight")
            o = host_ops.attention_core(q, k, v, self.weights[a + "q_layernorm.weight"],
                                        self.weights[a + "k_layernorm.weight"], positions,
                                        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                        cfg.norm_eps, cfg.rope_theta)
            return self.matmul(o, a + "out_proj.weight")

    def conv_block(self, layer: int, h: np.ndarray) -> np.ndarray:
        c = f"layers.{layer}.conv."
        with nvtx.range("conv"):
            bcx = self.matmul(h, c + "in_proj.weight")
            y = host_ops.shortconv_core(bcx, self.weights[c + "conv.weight"])
            return self.matmul(y, c + "out_proj.weight")

    def route(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Router logits on the GPU, routing on the CPU -> (expert ids [T, k], weights [T, k])."""
        cfg, f = self.config, f"layers.{layer}.feed_forward."
        logits = self.matmul(h, f + "gate.weight")
        bias = self.weights[f + "expert_bias"] if cfg.use_expert_bias else None
        return host_ops.route(logits, bias, cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor)

    def moe_block(self, layer: int, h: np.ndarray) -> np.ndarray:
        f = f"layers.{layer}.feed_forward."
        with nvtx.range("moe"):
            idx, wts = self.route(layer, h)
            out = np.zeros_like(h)
            for tok, slot, expert in host_ops.expert_pairs(idx):  # one (token, expert) pair at a time
                y = self.mlp(h[tok:tok + 1], f"{f}experts.{expert}.", tag="expert")
                out[tok] += wts[tok, slot] * y[0]
            return out

    def dense_block(self, layer: int, h: np.ndarray) -> np.ndarray:
        with nvtx.range("mlp"):
            return self.mlp(h, f"layers.{layer}.feed_forward.")

    def lm_head(self, x_last: np.ndarray) -> np.ndarray:
        """Final norm (CPU) and the tied LM head (GPU) on the last position: [1, H] -> [V]."""
        with nvtx.range("head"):
            h = self.norm(x_last, "embedding_norm.weight")
            return self.matmul(h, "embed_tokens.weight")[0]

    def layer(self, i: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        p = f"layers.{i}."
        with nvtx.range(f"layer {i}"):
            h = self.norm(x, p + "operator_norm.weight")
            if self.config.is_attention(i):
                x = x + self.attention_block(i, h, positions)
            else:
                x = x + self.conv_block(i, h)
            h = self.norm(x, p + "ffn_norm.weight")
            x = x + (self.moe_block(i, h) if self.config.is_moe(i) else self.dense_block(i, h))
            return x

    def forward_sample(self, ids: np.ndarray) -> np.ndarray:
        """One prompt [S] -> last-position logits [V]."""
        positions = np.arange(len(ids))
        x = self.embed(ids)
        for i in range(self.config.num_layers):
            x = self.layer(i, x, positions)
        return self.lm_head(x[-1:])

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("this engine was closed; build a new one")
        tokens = check_tokens(tokens, self.config)
        if tokens.shape[0] > self.max_batch:
            raise ValueError(f"batch of {tokens.shape[0]} prompts exceeds max_batch={self.max_batch}; "
                             "split it or build the engine with max_batch=N")
        logits = np.empty((tokens.shape[0], self.config.vocab_size), np.float32)
        for b, ids in enumerate(tokens):  # samples one at a time, as the original
            logits[b] = self.forward_sample(ids)
        return logits

    def synchronize(self) -> None:
        self.gpu.synchronize()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.weights = {}
            release_context(self.gpu)
