"""The optimized engine: the whole [B, S] batch in one forward, weights resident in the
engine dtype, the project's own PyCUDA kernels for everything but the plain dense GEMMs, and the
forward replayed from a CUDA graph per (B, S). Generation: prefill, decode and greedy
decode streamed one step ahead on the GPU.

OptimizedEngine is this file's public API, options and per-shape plan and graph cache, over two
mixins: layers.ForwardLayers (the forward's device work, layer by layer; its docstring tells which
kernels run each step at which batch size) and generation.Generation (prefill, decode,
greedy_steps; the caches and the decode step's body are decode.py's). plan.Plan holds the buffers
of one forward shape.

The residual stream stays fp32 in both dtypes (HF keeps it bf16: a deliberate, more accurate
difference). The engine's stream is a PyCUDA stream wrapped for torch (ExternalStream), so both
libraries' work is ordered on it and captured into one torch.cuda.CUDAGraph. Options: dtype
"bf16" (default) | "fp32", max_batch (default 256), max_tokens per internal forward (default
16384; larger calls are split by sequences), graphs (default True), moe_variant (default None:
chosen by token count; or a name from kernels.MOE_VARIANTS, for every shape), max_len (default
4096: cache positions per sequence for generation), gemv (default True: the small-batch kernels
in layers.py), pdl (default True on sm_90: the kernels that support it are launched with
programmatic dependent launch, harness/gpu/pdl.py, so each starts while the one before it
finishes), tf32x3 (default False; fp32 only, ignored in bf16: the 3xTF32 dense GEMMs of
layers.py, `--option tf32x3=true`), tf32x3_min_rows (default split_tf32.TF32X3_MIN_ROWS: the
fewest rows of a GEMM, and tokens of a plan, that take 3xTF32), tf32x3_chunks (default
split_tf32.TF32X3_CHUNKS), stream_decode (default True; generation.py).
"""
from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict

import numpy as np
import torch

from harness.engines.base import Engine
from harness.gpu import get_context, release_context
from harness.engines.reference import check_tokens

from .decode import DecodePlan
from .decode_kernels import DecodeKernels
from .gemv import GemvKernels
from .generation import Generation
from .kernels import Kernels, moe_variant_for
from .layers import ForwardLayers
from .plan import Plan, capturing
from .router import RouterKernels
from .split_tf32 import TF32X3_CHUNKS, TF32X3_MIN_ROWS, SplitTF32
from .weights import PackedWeights

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MAX_PLANS = 4  # (B, S) shapes whose buffers and graph are kept
PAGE = 4096
# Output arrays from this size on are page-locked for a timed loop (outputs_held): numpy takes them
# from mmap, so rounding out to whole pages stays inside the array's own mapping.
HOLD_MIN_BYTES = 1 << 20


class OptimizedEngine(ForwardLayers, Generation, Engine):
    name = "optimized"
    phase = None
    supports_generation = True

    def __init__(self, checkpoint, device=0, dtype: str = "bf16", max_batch: int = 256, max_tokens: int = 16384,
                 graphs: bool = True, progress: bool = True, moe_variant: str | None = None, max_len: int = 4096,
                 gemv: bool = True, pdl: bool = True, stream_decode: bool = True, tf32x3: bool = False,
                 tf32x3_min_rows: int = TF32X3_MIN_ROWS, tf32x3_chunks: int = TF32X3_CHUNKS, **options):
        super().__init__(checkpoint, device, **options)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported by the optimized engine; choose bf16 or fp32")
        if int(max_batch) < 1 or int(max_tokens) < 1 or int(max_len) < 1:
            raise ValueError("max_batch, max_tokens and max_len must be >= 1")
        self.dtype, self.tdtype = dtype, DTYPES[dtype]
        self.max_batch, self.max_tokens, self.use_graphs = int(max_batch), int(max_tokens), bool(graphs)
        self.max_len = int(max_len)
        self.use_gemv = bool(gemv)
        self.fold_router = True  # 1-2 tokens: the MoE router folded through out_proj (False: norm_route; for A/B)
        self.stream_decode = bool(stream_decode)  # harness.run.generation's greedy_generate streams (greedy_steps)
        self._closed = False
        self.DK: DecodeKernels | None = None  # compiled at the first prefill
        self._dec: DecodePlan | None = None  # the current generation's caches
        self.gpu = get_context(device)
        self.tdev = torch.device("cuda", self.gpu.index)
        torch.cuda.set_device(self.tdev)
        # fp32 must stay fp32 (the job's 1e-3); bf16 GEMMs accumulate in fp32 without reduced-precision
        # split-K reductions. These are process-wide torch settings.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        self.stream = self.gpu.cuda.Stream()
        self.tstream = torch.cuda.ExternalStream(self.stream.handle, device=self.tdev)
        self.K = Kernels(self.gpu, self.tdtype, self.stream)
        self.G = GemvKernels(self.gpu, self.tdtype, self.stream)
        self.R = RouterKernels(self.gpu, self.tdtype, self.stream)
        # programmatic dependent launch needs sm_90 (griddepcontrol); the kernels that wait for it
        # start while the kernel before them finishes (launch latency hidden, weights prefetched)
        self.use_pdl = bool(pdl) and int(self.gpu.arch.split("_")[1]) >= 90
        self.K.pdl = self.G.pdl = self.R.pdl = self.use_pdl
        self.forced_moe_variant = None
        self.set_moe_variant(moe_variant)
        # 3xTF32 dense GEMMs (fp32 only): the split kernel, the weights' split, the current plan's scratch
        self.X3 = SplitTF32(self.gpu, self.stream, tf32x3_chunks) if tf32x3 and dtype == "fp32" else None
        self.tf32x3_min_rows = max(1, int(tf32x3_min_rows))
        self._x3: torch.Tensor | None = None
        self.W = PackedWeights(checkpoint, self.tdtype, self.tdev, self.counters, progress, tf32x3=self.X3 is not None)
        if self.use_gemv:
            self.W.fold_routers()
        torch.cuda.synchronize(self.tdev)
        self.counters.extra["resident_weight_bytes"] = self.W.nbytes()
        self.head_out_fp32 = self._probe_mm_out_dtype()
        self.counters.extra["lm_head_fp32_output"] = self.head_out_fp32
        self.plans: OrderedDict[tuple[int, int], Plan] = OrderedDict()
        self.graph_error: str | None = None
        self._held: tuple[int, int] | None = None  # the page-locked output array's [start, end) address
        self._route_probe: list | None = None  # touched_experts: each MoE layer's routing, eager forwards only

    def _probe_mm_out_dtype(self) -> bool:
        """bf16 LM head with fp32 output (torch.mm out_dtype, newer torch): logits are not rounded
        to bf16. Older torch: bf16 logits, as HF returns them."""
        if self.tdtype == torch.float32:
            return False
        try:
            a = torch.ones((2, 8), dtype=self.tdtype, device=self.tdev)
            out = torch.empty((2, 4), dtype=torch.float32, device=self.tdev)
            torch.mm(a, torch.ones((8, 4), dtype=self.tdtype, device=self.tdev), out_dtype=torch.float32, out=out)
            torch.cuda.synchronize(self.tdev)
            return bool(torch.all(out == 8))
        except (TypeError, RuntimeError):
            return False

    # ----- plans and graphs ----------------------------------------------------------------------------
    def set_moe_variant(self, name: str | None) -> None:
        """Use grouped GEMM variant `name` for every shape from now on (None: by token count).
        Drops the plans (and graphs) built for the previous choice."""
        if name is not None:
            self.K.moe_variant(name)  # refuses an unknown name, listing the available ones
        self.forced_moe_variant = name
        if getattr(self, "plans", None):
            self.synchronize()
            self.plans.clear()
        if getattr(self, "_dec", None) is not None:  # its MoE buffers were sized for the old choice
            self.synchronize()
            self._dec = None

    def moe_variant_name(self, tokens: int) -> str:
        return self.forced_moe_variant or moe_variant_for(self.tdtype, tokens, self.K.arch)

    def _plan(self, B: int, S: int) -> Plan:
        key = (B, S)
        if key in self.plans:
            self.plans.move_to_end(key)
            return self.plans[key]
        while len(self.plans) >= MAX_PLANS:
            self.plans.popitem(last=False)
        P = Plan(self.config, B, S, self.tdtype, self.tdev, self.K.moe_variant(self.moe_variant_name(B * S)),
                 self._x3_cols(B * S))
        self.plans[key] = P
        return P

    def _capture(self, P: Plan) -> None:
        """Warm up eagerly once (cuBLAS handles, heuristics), then capture the forward's launches."""
        with torch.cuda.stream(self.tstream):
            self._body(P)
        self.tstream.synchronize()
        if not self.use_graphs or self.graph_error is not None:
            return
        g = torch.cuda.CUDAGraph()
        try:
            with capturing(g, self.tstream):
                self._body(P)
            P.graph = g
        except Exception as e:  # keep a working (eager) engine and say why
            self.graph_error = f"{type(e).__name__}: {e}"
            print(f"optimized: CUDA graph capture failed, running eagerly: {self.graph_error}")

    def _forward_chunk(self, tokens: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        """One internal forward; its logits go into `into` when given (straight from the device where
        `into` is page-locked by outputs_held), else into a new array."""
        B, S = tokens.shape
        P = self._plan(B, S)
        P.ids_host.numpy()[:] = tokens
        with torch.cuda.stream(self.tstream):
            P.ids.view(B, S).copy_(P.ids_host, non_blocking=True)
            if P.graph is None and self.use_graphs and self.graph_error is None:
                self._capture(P)  # first call of this shape: warm-up + capture, ids already on the device
            if P.graph is not None:
                P.graph.replay()
            else:
                self._body(P)
            if into is not None and self._is_held(into):
                self.gpu.cuda.memcpy_dtoh_async(into, P.logits_f32.data_ptr(), self.stream)
                self.synchronize()
                self._count_io(tokens.nbytes, into.nbytes)
                return into
            P.download.enqueue(P.logits_f32)
        return self._collect_logits(P, tokens, into)

    def _collect_logits(self, P: Plan, tokens: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
        """The logits of the forward just queued (P.download enqueued), into `into` or a new array;
        counts the copies."""
        if into is None:
            P.download.prepare()  # the answer's host pages, touched while the GPU runs the forward
        logits = P.download.collect(into)
        self._count_io(tokens.nbytes, P.logits_host.numel() * 4, copies=len(P.download.chunks))
        return logits

    @contextlib.contextmanager
    def outputs_held(self, array: np.ndarray):
        """Page-lock `array` (cudaHostRegister) for the while: forward_into then DMAs each batch's
        logits straight into its rows, with no staging buffer and no host copy. At 64 x 16 that
        spares two 16.8 MB host copies per forward (the pinned buffer into a new array, that array
        into the caller's rows). Where the driver refuses, the copies go through the pinned buffer."""
        start = array.ctypes.data
        if array.nbytes < HOLD_MIN_BYTES or not array.flags.c_contiguous or self._held is not None:
            yield
            return
        lo, hi = start // PAGE * PAGE, -(-(start + array.nbytes) // PAGE) * PAGE
        cudart = torch.cuda.cudart()
        err = int(cudart.cudaHostRegister(lo, hi - lo, 1))  # 1: cudaHostRegisterPortable, every context
        if err:
            print(f"optimized: cudaHostRegister of the {array.nbytes:,}-byte output array failed (cudaError {err}); "
                  "logits go through the pinned buffer", file=sys.stderr)
            yield
            return
        self._held = (start, start + array.nbytes)
        try:
            yield
        finally:
            self.synchronize()
            self._held = None
            cudart.cudaHostUnregister(lo)

    def _is_held(self, out: np.ndarray) -> bool:
        a = out.ctypes.data
        return (self._held is not None and out.flags.c_contiguous and out.dtype == np.float32
                and self._held[0] <= a and a + out.nbytes <= self._held[1])

    def forward_into(self, tokens: np.ndarray, out: np.ndarray) -> None:
        tokens = self._checked(tokens)
        if out.shape != (tokens.shape[0], self.config.vocab_size) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(tokens.shape[0], self.config.vocab_size)}, got {out.dtype} "
                             f"{out.shape}")
        per = self.sequences_per_chunk(tokens.shape[1])
        for b in range(0, tokens.shape[0], per):
            self._forward_chunk(tokens[b:b + per], out[b:b + per])

    def touched_experts(self, tokens: np.ndarray) -> list[int]:
        """Distinct experts routed to in each MoE layer by one eager forward of `tokens`' first
        internal chunk (P.idx after each layer's routing, copied aside)."""
        tokens = self._checked(tokens)
        chunk = tokens[:self.sequences_per_chunk(tokens.shape[1])]
        P = self._plan(*chunk.shape)
        P.ids_host.numpy()[:] = chunk
        self._route_probe = []
        try:
            with torch.cuda.stream(self.tstream):
                P.ids.view(*chunk.shape).copy_(P.ids_host, non_blocking=True)
                self._body(P)
            self.synchronize()
            return [int(torch.unique(idx).numel()) for idx in self._route_probe]
        finally:
            self._route_probe = None

    def profile(self, tokens: np.ndarray, on_gpu: bool = True) -> list[dict]:
        """The forward's launches of the first internal chunk, by GPU time (profile_launches)."""
        tokens = check_tokens(tokens, self.config).astype(np.int32)
        self.forward(tokens)  # this shape's plan, its graph and its ids on the device
        B, S = tokens.shape
        P = self.plans[(min(B, self.sequences_per_chunk(S)), S)]
        return self.profile_launches(lambda: self._body(P))

    def profile_launches(self, work) -> list[dict]:
        """`work`'s launches on the engine's stream, run eagerly under torch.profiler (a graph replay
        would show the profiler one opaque launch): its GPU kernels by time. profile,
        profile_decode and bench.decode_step use it. Every launch goes without PDL for the while:
        under PDL a kernel starts while the one before it still runs, and the profiler counts that
        wait as the kernel's time (the batch-64 decode step's kernels summed to 7.1 ms against its
        6.5 ms step), so each kernel's time here is its own."""
        from harness.measure.op_profile import profile_ops

        def on_stream():
            with torch.cuda.stream(self.tstream):
                work()
        with self._launches_without_pdl():
            return profile_ops(on_stream, True, self.synchronize)

    @contextlib.contextmanager
    def _launches_without_pdl(self):
        """Each launcher's PDL choice off for the while, then restored (the graphs keep theirs: a
        captured launch keeps its attributes)."""
        launchers = [k for k in (self.K, self.G, self.R, self.DK) if k is not None]
        chosen = [k.pdl for k in launchers]
        for k in launchers:
            k.pdl = False
        try:
            yield
        finally:
            for k, pdl in zip(launchers, chosen):
                k.pdl = pdl

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        tokens = self._checked(tokens)
        per = self.sequences_per_chunk(tokens.shape[1])
        outs = [self._forward_chunk(tokens[b:b + per]) for b in range(0, tokens.shape[0], per)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def sequences_per_chunk(self, seq_len: int) -> int:
        """Sequences of `seq_len` tokens in one internal forward (_forward_chunk): its buffers hold
        max_tokens tokens, and a longer sequence still goes whole (phase 5's method of the same name)."""
        return max(1, self.max_tokens // seq_len)

    def _checked(self, tokens: np.ndarray) -> np.ndarray:
        """tokens as int32 [B, S] ids of this model, B within max_batch, on an open engine."""
        self._check_open()
        tokens = check_tokens(tokens, self.config).astype(np.int32)
        if tokens.shape[0] > self.max_batch:
            raise ValueError(f"batch of {tokens.shape[0]} prompts exceeds max_batch={self.max_batch}; split it or "
                             "build the engine with max_batch=N")
        return tokens

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this engine was closed; build a new one")

    def _count_io(self, h2d: int, d2h: int, copies: int = 1) -> None:
        """One pinned upload of ids and a pinned download in `copies` DMAs (logits, or greedy ids);
        0 bytes: no such copy (a streamed step downloads without an upload)."""
        c = self.counters
        c.h2d_bytes += h2d
        c.h2d_pinned_bytes += h2d
        c.h2d_copies += h2d > 0
        c.d2h_bytes += d2h
        c.d2h_pinned_bytes += d2h
        c.d2h_copies += copies if d2h > 0 else 0

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.synchronize()
            self.plans.clear()
            self._dec = None
            self._x3 = None
            self.W = None
            torch.cuda.empty_cache()
            release_context(self.gpu)
