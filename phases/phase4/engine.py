"""Phase 4: phase 3 plus persistent GPU buffers and asynchronous transfers (plan 2.2 and 3.3).

| what                | phases 0-3                                   | phase 4                                        |
|---------------------|----------------------------------------------|------------------------------------------------|
| weights             | uploaded from pageable memory on every use   | uploaded once at load, resident (resident.py)  |
| intermediates       | cudaMalloc/cudaFree per buffer               | one workspace, offset allocation (workspace.py)|
| activations         | back to the host between blocks              | on the GPU for the whole forward; residual add |
|                     |                                              | by a kernel (kernels.cu)                       |
| inputs / logits     | synchronous pageable copies                  | pinned buffers, a copy stream: the next sample's|
|                     |                                              | ids go up and the last one's logits come down  |
|                     |                                              | while the current sample computes              |
| expert row counts   | downloaded per MoE layer to size the GEMMs   | offsets on the device, every expert launched,  |
|                     |                                              | idle blocks return (device_moe.py)             |
The layer math is phases 1-3's device functions: norm_dev, attention_dev, conv_dev, moe_dev (its
expert GEMMs now sized on the device, same arithmetic), embedding_gather. Samples still run one per
model forward (batching is phase 5), so max_batch only sets how many samples one call pipelines.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from harness.gpu import load_module, nvtx
from harness.gpu.pointers import offset_ptr
from harness.engines.reference import check_tokens
from phases.phase3.engine import Phase3Engine

from harness.gpu.timeline import StreamTimeline, overlap_fraction

from .device_moe import DeviceSizedExperts
from .resident import ResidentWeights
from .workspace import Workspace

KERNELS = Path(__file__).with_name("kernels.cu")
# kernels.cu includes the baseline's GEMM tile and phase 2's silu_mul: their folders key the cubin cache too
KERNEL_INCLUDES = (Path(__file__).parents[2] / "baseline", Path(__file__).parents[1] / "phase2")
F32 = I32 = 4
BLOCK = 256
HEADROOM = 2 << 30  # bytes of device memory left free when deciding what stays resident


class ResidentShape:
    """Stands in for a host weight that lives only on the GPU: it has the shape the device
    functions ask for, and refuses to be read as data (that would be a hidden upload)."""

    def __init__(self, name: str, shape: tuple):
        self.name, self.shape, self.ndim = name, tuple(shape), len(shape)
        self.dtype = np.dtype(np.float32)

    def __array__(self, *args, **kwargs):
        raise RuntimeError(f"{self.name} is resident on the GPU; use device_weight(), not its host values")


class Phase4Engine(DeviceSizedExperts, Phase3Engine):
    name = "phase4"
    phase = 4
    sync_launches = False  # copies overlap compute now; LFM2_SYNC_LAUNCHES=1 still checks each launch

    def __init__(self, checkpoint, device=0, **options):
        options.setdefault("max_batch", 8)
        super().__init__(checkpoint, device, **options)

    # ----- setup: streams, resident weights, workspace ------------------------------------------
    def setup_device(self, device) -> None:
        super().setup_device(device)
        cuda = self.transfers.cuda
        self.stream = cuda.Stream()  # every kernel of the forward
        self.copy_stream = cuda.Stream()  # ids up, logits down
        module = load_module(KERNELS, self.gpu, include_dirs=KERNEL_INCLUDES)
        self.k_add_inplace = module.kernel("add_inplace")
        self.setup_device_sized_experts(module)
        self._io = None  # pinned host + device buffers for ids and logits, sized on first use
        # timeline=True: CUDA events around each upload, sample and download of the last forward
        # call (counters.extra["timeline"]), the evidence that copies overlap kernels.
        self.timeline = StreamTimeline(cuda) if self.options.get("timeline") else None

    def load_weights(self, progress: bool = True):
        free, _ = self.gpu.mem_info()
        self.resident = ResidentWeights(self.checkpoint, self.transfers, free - HEADROOM, progress)
        if self.resident.host:
            print(f"phase4: {self.resident.summary()}")
        self.counters.extra["resident_weight_bytes"] = self.resident.resident_bytes
        cfg = self.config
        # Sized for a 512-token prompt; the warm-up forward grows it if a run needs more.
        self.workspace = Workspace(self.transfers, 512 * (3 * cfg.hidden_size + 8 * cfg.intermediate_size) * F32)
        weights = {n: ResidentShape(n, self.resident.shapes[n]) for n in self.resident.device}
        weights.update(self.resident.host)
        return weights

    def device_weight(self, name: str, tag: str | None = None):
        ptr = self.resident.device.get(name)
        if ptr is not None:
            return ptr, False
        return super().device_weight(name, tag)  # did not fit: uploaded per use, as before

    def dalloc(self, nbytes: int, what: str):
        return self.workspace.alloc(nbytes, what)

    def dfree(self, ptr) -> None:
        self.workspace.free(ptr)

    # ----- the forward on the device ------------------------------------------------------------------
    def add_inplace(self, d_x, d_y, n: int) -> None:
        self._launch(self.k_add_inplace, ((n + BLOCK - 1) // BLOCK,), (BLOCK,), (d_x, d_y, np.int32(n)), {"n": n})

    def dense_dev(self, layer: int, d_h, rows: int):
        """SwiGLU of a dense layer on the device (the baseline's mlp without its uploads)."""
        f = f"layers.{layer}.feed_forward."
        d_gate = self.project(d_h, rows, f + "w1.weight", "dense gate")
        d_up = self.project(d_h, rows, f + "w3.weight", "dense up")
        self.elementwise(self.k_silu_mul, (d_gate, d_up), rows * self.weights[f + "w1.weight"].shape[0])
        self.dfree(d_up)
        d_out = self.project(d_gate, rows, f + "w2.weight", "dense output")
        self.dfree(d_gate)
        return d_out

    def layer_dev(self, i: int, d_x, batch: int, seq_len: int) -> None:
        """Layer i in place on the residual stream x [batch*seq_len, H]."""
        p, rows, n = f"layers.{i}.", batch * seq_len, batch * seq_len * self.config.hidden_size
        with nvtx.range(f"layer {i}"):
            d_h = self.norm_dev(d_x, rows, p + "operator_norm.weight")
            mixer = self.attention_dev if self.config.is_attention(i) else self.conv_dev
            d_y = mixer(i, d_h, batch, seq_len)
            self.dfree(d_h)
            self.add_inplace(d_x, d_y, n)
            self.dfree(d_y)
            d_h = self.norm_dev(d_x, rows, p + "ffn_norm.weight")
            with nvtx.range("moe" if self.config.is_moe(i) else "mlp"):
                d_y = self.moe_dev(i, d_h, rows) if self.config.is_moe(i) else self.dense_dev(i, d_h, rows)
            self.dfree(d_h)
            self.add_inplace(d_x, d_y, n)
            self.dfree(d_y)

    def head_dev(self, d_x, rows, d_logits) -> None:
        """Final norm and tied LM head on the given rows of x (one per sequence) into d_logits."""
        cfg = self.config
        with nvtx.range("head"):
            d_h = self.norm_dev(d_x, rows, "embedding_norm.weight")
            d_table, own = self.device_weight("embed_tokens.weight")
            self.gemm(d_h, d_table, d_logits, rows, cfg.vocab_size, cfg.hidden_size)
            if own:
                self.transfers.free(d_table)
            self.dfree(d_h)

    def residual_stream_dev(self, d_ids, batch: int, seq_len: int):
        """`batch` prompts of `seq_len` ids on the device -> a new buffer [batch*seq_len, H]: the
        residual stream after every layer (embedding gather, then each layer in place)."""
        cfg = self.config
        H, rows = cfg.hidden_size, batch * seq_len
        d_x = self.dalloc(rows * H * F32, "residual stream")
        d_table, own = self.device_weight("embed_tokens.weight")
        with nvtx.range("embedding"):
            self.embedding_gather(d_ids, d_table, d_x, rows, H, cfg.vocab_size)
        if own:
            self.transfers.free(d_table)
        for i in range(cfg.num_layers):
            self.layer_dev(i, d_x, batch, seq_len)
        return d_x

    def forward_sample_dev(self, d_ids, seq_len: int, d_logits) -> None:
        """One prompt whose ids are on the device -> its last-position logits into d_logits."""
        d_x = self.residual_stream_dev(d_ids, 1, seq_len)
        self.head_dev(offset_ptr(d_x, (seq_len - 1) * self.config.hidden_size * F32), 1, d_logits)
        self.dfree(d_x)

    # ----- pinned I/O and the copy/compute pipeline -----------------------------------------------------
    def io_buffers(self, batch: int, seq_len: int):
        """Pinned host and device buffers for ids and logits; (re)made only when a larger call
        comes (the warm-up), never inside the timed region."""
        need = (batch, seq_len)
        if self._io is None or self._io["shape"][0] < batch or self._io["shape"][1] != seq_len:
            if self._io is not None:
                self.transfers.free(self._io["d_ids"])
                self.transfers.free(self._io["d_logits"])
            V, t = self.config.vocab_size, self.transfers
            self._io = {
                "shape": need,
                "h_ids": t.pinned_empty((batch, seq_len), np.int32),
                "h_logits": t.pinned_empty((batch, V), np.float32),
                "d_ids": t.alloc(batch * seq_len * I32, "token ids (all samples of a call)"),
                "d_logits": t.alloc(batch * V * F32, "logits (all samples of a call)"),
            }
        return self._io

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        tokens = check_tokens(tokens, self.config).astype(np.int32)  # ids checked before any upload
        B, S = tokens.shape
        if B > self.max_batch:
            raise ValueError(f"batch of {B} prompts exceeds max_batch={self.max_batch}")
        io, cuda, V = self.io_buffers(B, S), self.transfers.cuda, self.config.vocab_size
        io["h_ids"][:B] = tokens
        self.workspace.reset()
        uploaded = [cuda.Event() for _ in range(B)]
        computed = [cuda.Event() for _ in range(B)]
        ids_row = lambda b: offset_ptr(io["d_ids"], b * S * I32)  # noqa: E731
        logits_row = lambda b: offset_ptr(io["d_logits"], b * V * F32)  # noqa: E731

        tl = self.timeline
        span = tl.span if tl else (lambda *a: contextlib.nullcontext())
        if tl:
            tl.reset(self.copy_stream)

        def upload(b):
            with span(f"ids {b}", "h2d", self.copy_stream):
                self.transfers.htod_async(ids_row(b), io["h_ids"][b], self.copy_stream)
            uploaded[b].record(self.copy_stream)

        upload(0)
        for b in range(B):
            if b + 1 < B:
                upload(b + 1)  # the next sample's ids travel while this one computes
            self.stream.wait_for_event(uploaded[b])
            with span(f"sample {b}", "compute", self.stream):
                self.forward_sample_dev(ids_row(b), S, logits_row(b))
            computed[b].record(self.stream)
            self.copy_stream.wait_for_event(computed[b])
            with span(f"logits {b}", "d2h", self.copy_stream):
                self.transfers.dtoh_async(io["h_logits"][b], logits_row(b), self.copy_stream)
        self.copy_stream.synchronize()
        if tl:
            spans = tl.intervals()
            self.counters.extra["timeline"] = spans
            self.counters.extra["d2h_overlap_with_compute"] = overlap_fraction(spans, "d2h", "compute")
        self.workspace.reset()  # grows here, after the warm-up, if that forward overflowed it
        return io["h_logits"][:B].copy()

    def synchronize(self) -> None:
        self.stream.synchronize()
        self.copy_stream.synchronize()
        super().synchronize()
