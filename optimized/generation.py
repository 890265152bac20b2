"""The optimized engine's generation API (Generation, a mixin of OptimizedEngine); the caches and
the decode step's body are optimized/decode.py's.

`prefill(prompts)` runs the forward body over the prompts (an int [B, S] array, or a list of 1-D
prompts of different lengths, right-padded) and keeps K/V and conv state in caches sized from
(B, max_len); `decode(tokens)` runs one step for T = B tokens (in_proj + conv step; qkv GEMM +
decode attention with the q/k norm and RoPE in it + out GEMM; the same FFN/MoE, norms and LM head
helpers as the forward), eager the first time and then replayed from a CUDA graph captured per
decode plan (one batch size at a time). `greedy_steps(ids, n)` streams n greedy steps: each
step's argmax is the next step's input on the device, so the next step is queued before the host
reads the current one's ids. Option stream_decode (default True) lets harness.run.generation's
greedy_generate use it; False keeps one decode_greedy call per step (`--option
stream_decode=false`, to compare).
"""
from __future__ import annotations

import numpy as np
import torch

from harness.engines.reference import check_tokens

from .decode import DecodePlan, PrefillFill, check_room, decode_body, pad_prompts
from .decode_kernels import DecodeKernels, attention_splits
from .plan import Plan, capturing

STREAM_OPEN = ("a streamed generation (greedy_steps) is still open: exhaust it or close() it before the next "
               "decode, prefill or stream")


class Generation:
    """prefill, decode, decode_greedy and greedy_steps over the engine's forward body (_body,
    _layers, _lm_head) and plans; the current generation is self._dec."""

    def prefill(self, prompts, max_new_tokens: int | None = None) -> np.ndarray:
        """Start a generation: prompts int [B, S] (or a list of 1-D prompts of any lengths) ->
        float32 [B, V] logits at each prompt's last token; the caches keep every sequence for
        `decode`. With max_new_tokens, refuses up front a generation that would outgrow max_len."""
        self._check_open()
        if self._dec is not None and self._dec.streaming:
            raise RuntimeError(STREAM_OPEN)  # its queued steps would run on the new generation's caches
        padded, lengths = pad_prompts(prompts, self.config)
        B, S = padded.shape
        if B > self.max_batch:
            raise ValueError(f"batch of {B} prompts exceeds max_batch={self.max_batch}; split it or build the "
                             "engine with max_batch=N")
        steps = 0 if max_new_tokens is None else max(int(max_new_tokens) - 1, 0)  # the first token is prefill's
        check_room(lengths, self.max_len, steps, f"a prefill of {S} tokens and {steps} decode steps")
        D = self._decode_plan(B)
        D.active = False
        with torch.cuda.stream(self.tstream):
            D.lengths.copy_(torch.from_numpy(lengths))
        per = self.sequences_per_chunk(S)
        outs = [self._prefill_chunk(D, padded[b:b + per], lengths[b:b + per], b) for b in range(0, B, per)]
        D.len_host[:] = lengths
        D.active = True
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def decode(self, tokens) -> np.ndarray:
        """One step: the next token of every sequence of the last prefill, int [B] -> float32 [B, V]."""
        return self._decode_step(tokens, want_logits=True)

    def decode_greedy(self, tokens) -> np.ndarray:
        """One step that returns each sequence's argmax token id (int32 [B]), chosen on the GPU: B ints
        cross PCIe instead of B x V logits."""
        return self._decode_step(tokens, want_logits=False)

    def profile_decode(self, prompts, on_gpu: bool = True) -> list[dict]:
        """Prefill `prompts`, then one decode step's launches by GPU time (the engine's
        profile_launches): the kernels the step's graph holds. The generation stays usable: its
        lengths count the profiled step."""
        # max_new_tokens=3: prefill refuses up front a cache without room for the two steps below
        first = self.prefill(prompts, max_new_tokens=3).argmax(1).astype(np.int32)
        self.decode_greedy(first)  # this batch size's plan, buffers and graph; the next ids on the device
        D = self._active_decode()
        table = self.profile_launches(lambda: decode_body(self, D))
        D.len_host += 1  # decode_body advanced the device lengths
        return table

    def greedy_steps(self, first_ids, steps: int):
        """`steps` greedy decode steps streamed from the last prefill: a generator of each step's
        int32 [B] ids (step 1 decodes first_ids, each later step the ids the step before chose).
        The chosen ids feed the next step on the device (decode_body's argmax writes the work
        plan's input ids), so step n + 1 is queued on the GPU before the host waits for step n:
        the GPU does not idle while the caller handles a token. Checks first_ids and the room for
        all `steps` now. Closing the generator early waits for the step queued ahead, which has run
        (lengths count it; its ids are not handed over), and leaves the engine ready for decode or
        prefill; while the generator is open, decode, prefill and another stream are refused."""
        D = self._active_decode()
        tokens = self._step_ids(D, first_ids)
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        check_room(D.len_host, self.max_len, steps, f"a stream of {steps} decode steps")
        return self._stream(D, tokens, steps, D.len_host.copy())

    def _stream(self, D: DecodePlan, tokens: np.ndarray, steps: int, start: np.ndarray):
        """greedy_steps' generator. Slot n % 2 of D.ids_ring and done[n % 2] belong to step n + 1:
        the step being read and the one in flight never share a slot."""
        if self._active_decode() is not D or not np.array_equal(D.len_host, start):
            raise RuntimeError("the generation changed between greedy_steps() and its first step; call "
                               "greedy_steps again")
        if steps == 0:
            return
        D.streaming = True
        done = [torch.cuda.Event(), torch.cuda.Event()]
        queued = 0  # steps enqueued on the device
        try:
            with torch.cuda.stream(self.tstream):
                self._upload_ids(D, tokens)
            self._count_io(tokens.nbytes, 0)
            queued = self._enqueue_streamed(D, queued, done)
            for n in range(steps):
                self._check_open()  # closed while the caller held a token: its context is gone
                if queued < steps:
                    queued = self._enqueue_streamed(D, queued, done)  # step n + 2 runs while the host reads n + 1
                done[n % 2].synchronize()
                D.len_host += 1
                yield D.ids_ring[n % 2].numpy().copy()
        finally:
            D.streaming = False
            if not self._closed:
                self.stream.synchronize()  # a step queued ahead of an early close has advanced lengths
            D.len_host[:] = start + queued

    def _enqueue_streamed(self, D: DecodePlan, queued: int, done: list) -> int:
        """Queue streamed step queued + 1: the step, its ids into its ring slot, its event. Returns
        the new count of queued steps."""
        slot = queued % 2
        with torch.cuda.stream(self.tstream):
            self._run_step(D)
            D.ids_ring[slot].copy_(D.next_ids, non_blocking=True)
            done[slot].record(self.tstream)
        self._count_io(0, D.ids_ring[slot].numel() * D.ids_ring.element_size())
        return queued + 1

    def _decode_step(self, tokens, want_logits: bool) -> np.ndarray:
        D = self._active_decode()
        tokens = self._step_ids(D, tokens)
        check_room(D.len_host, self.max_len, 1, "this decode step")
        P = D.work
        with torch.cuda.stream(self.tstream):
            self._upload_ids(D, tokens)
            self._run_step(D)
            out = P.logits_host if want_logits else D.next_ids_host
            out.copy_(P.logits_f32 if want_logits else D.next_ids, non_blocking=True)
        self.stream.synchronize()
        D.len_host += 1
        self._count_io(tokens.nbytes, out.numel() * out.element_size())
        return out.numpy().copy()

    def _active_decode(self) -> DecodePlan:
        """The current generation, refusing a closed engine, no prefill yet, or an open stream."""
        self._check_open()
        D = self._dec
        if D is None or not D.active:
            raise ValueError("decode before prefill: call prefill(prompts) first to start a generation")
        if D.streaming:
            raise RuntimeError(STREAM_OPEN)
        return D

    def _step_ids(self, D: DecodePlan, tokens) -> np.ndarray:
        """One token per sequence of D (int [B] or [B, 1]) -> checked int32 [B]."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 2 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if tokens.ndim != 1 or len(tokens) != D.B:
            raise ValueError(f"decode takes one token per sequence: int [{D.B}] for the {D.B} sequences of the last "
                             f"prefill, got shape {tokens.shape}")
        return check_tokens(tokens[:, None], self.config)[:, 0].astype(np.int32)

    def _upload_ids(self, D: DecodePlan, tokens: np.ndarray) -> None:
        """tokens -> D.work.ids through the pinned host buffer (call on self.tstream)."""
        P = D.work
        P.ids_host.numpy()[:, 0] = tokens
        P.ids.copy_(P.ids_host.view(-1), non_blocking=True)

    def _run_step(self, D: DecodePlan) -> None:
        """One decode step on the ids already in D.work.ids (call on self.tstream): the graph's
        replay, or eagerly the first time, capturing the graph for the next steps."""
        if D.graph is not None:
            D.graph.replay()
            return
        decode_body(self, D)
        if self.use_graphs and self.graph_error is None and not D.capture_tried:
            self._capture_decode(D)  # records the next steps' launches; runs nothing now

    def _decode_kernels(self) -> DecodeKernels:
        if self.DK is None:
            self.DK = DecodeKernels(self.gpu, self.tdtype, self.stream)
            self.DK.pdl = self.use_pdl
        return self.DK

    def _decode_plan(self, B: int) -> DecodePlan:
        """The caches for B sequences: the current plan when its batch matches (its graph stays
        valid: same buffers), else a new one (the old caches are freed first)."""
        self._decode_kernels()
        if self._dec is not None and self._dec.B == B:
            return self._dec
        if self._dec is not None:
            self.synchronize()
            self._dec = None
            torch.cuda.empty_cache()
        work = Plan(self.config, B, 1, self.tdtype, self.tdev, self.K.moe_variant(self.moe_variant_name(B)),
                    self._x3_cols(B))
        sms = torch.cuda.get_device_properties(self.tdev).multi_processor_count
        nsplit = attention_splits(B, self.config.num_key_value_heads, self.max_len, sms)
        self._dec = DecodePlan(self.config, work, self.max_len, nsplit)
        self.counters.extra["decode_cache_bytes"] = self._dec.nbytes()
        return self._dec

    def _prefill_chunk(self, D: DecodePlan, tokens: np.ndarray, lengths: np.ndarray, b0: int) -> np.ndarray:
        B, S = tokens.shape
        P = self._plan(B, S)
        P.ids_host.numpy()[:] = tokens
        with torch.cuda.stream(self.tstream):
            P.ids.view(B, S).copy_(P.ids_host, non_blocking=True)
            fill = PrefillFill(self.DK, D, b0, lengths, S)
            self._body(P, fill)  # eager: the fill's cache slices differ per call
            P.download.enqueue(P.logits_f32)
        logits = self._collect_logits(P, tokens)
        self.counters.h2d_bytes += (4 + 8) * B  # lengths and the last-row index, small pageable copies
        self.counters.h2d_copies += 2
        return logits

    def _capture_decode(self, D: DecodePlan) -> None:
        D.capture_tried = True
        g = torch.cuda.CUDAGraph()
        try:
            with capturing(g, self.tstream):
                decode_body(self, D)
            D.graph = g
        except Exception as e:  # keep a working (eager) decode and say why
            self.graph_error = f"{type(e).__name__}: {e}"
            print(f"optimized: CUDA graph capture of the decode step failed, decoding eagerly: {self.graph_error}")

