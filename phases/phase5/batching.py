"""Plan 3.2, sample batching: many prompts in ONE model forward, mixed lengths padded with exact
masking.

A mixin over phase 4 (resident weights, workspace, engine + copy streams, pinned I/O). Phase 4
ran one prompt per model forward; here a forward call's B prompts run as chunks of up to
`max_tokens` rows (B x L sequences, default 16,384 rows: 1,024 prompts of 16 tokens in one
forward) through phase 4's layer_dev(i, d_x, batch, seq_len), whose device functions (phases
1-3) already take `batch` sequences: attention causal within each sequence, conv history zero
at each sequence start, norms/GEMMs/MoE per row. The head gathers each sequence's last row
(last_rows kernel) and runs the final norm + LM head on [batch, H]. Chunks pipeline as in phase
4: the next chunk's ids go up on the copy stream while this one computes, logits come down
behind it.

Mixed lengths, `forward_ragged(prompts)`: the prompts are padded on the RIGHT to the longest
and each one's logits are read at its own last real position. This is exact by construction,
not approximately masked: position t of a sequence depends only on positions <= t of the SAME
sequence, at every step of the model:
  - embedding, RMSNorm, residual adds, router, top-k, expert SwiGLU, combine: per row;
  - the ShortConv is causal (position t reads t, t-1, t-2 of its own sequence, zero before 0);
  - attention is causal within the sequence: scores for keys j > t are -inf and get probability
    exactly 0 (never exp'd), so P.V sums exactly the same terms;
  - RoPE uses the position inside the sequence, which right padding does not shift;
  - expert GEMMs: padded tokens add rows to an expert's batch, but the tiled GEMM computes each
    output element by one thread over k in a fixed order, independent of the other rows.
So the padding (any ids) can only affect positions AFTER each sequence's last real token, which
are never read. The tests prove it: mixed lengths 1..40 in one batch equal one at a time within
1e-4 (the softmax reduction's block size follows the padded length, so not bitwise), and two
different garbage paddings give BIT-identical logits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.gpu import load_module
from harness.engines.reference import check_tokens
from harness.gpu.pointers import NULL, offset_ptr
from phases.phase2.expert_batching import ROW_BLOCK

KERNELS = Path(__file__).with_name("kernels.cu")
F32 = I32 = 4
MAX_GRID_YZ = 65535  # attention launches batch * heads blocks along grid z
DEFAULT_MAX_TOKENS = 16384


class SampleBatching:
    """Overrides setup_device, io_buffers and forward; adds forward_padded, forward_ragged,
    forward_chunk_dev, and the hooks the expert-parallel mixin fills (collective_forward,
    idle_chunk, after_forward)."""

    collective_forward = False  # True when forward calls must match across ranks (expert parallel)

    def setup_device(self, device) -> None:
        super().setup_device(device)
        self.k_last_rows = load_module(KERNELS, self.gpu).kernel("last_rows")
        self.max_tokens = int(self.options.get("max_tokens", DEFAULT_MAX_TOKENS))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (rows per model forward), got {self.max_tokens}")

    # ----- pinned I/O, sized by capacity so mixed lengths do not re-allocate --------------------------
    def io_buffers(self, batch: int, seq_len: int):
        io = self._io
        if io is None or io["batch"] < batch or io["ids"] < batch * seq_len:
            if io is not None:
                self.synchronize()
                for d in ("d_ids", "d_last", "d_logits"):
                    self.transfers.free(io[d])
            t, V = self.transfers, self.config.vocab_size
            n_ids = batch * seq_len
            self._io = io = {
                "batch": batch, "ids": n_ids,
                "h_ids": t.pinned_empty(n_ids, np.int32),
                "h_last": t.pinned_empty(batch, np.int32),
                "h_logits": t.pinned_empty((batch, V), np.float32),
                "d_ids": t.alloc(n_ids * I32, "token ids (all prompts of a call)"),
                "d_last": t.alloc(batch * I32, "last positions (all prompts of a call)"),
                "d_logits": t.alloc(batch * V * F32, "logits (all prompts of a call)"),
            }
        return io

    def sequences_per_chunk(self, seq_len: int) -> int:
        """Prompts per model forward: max_tokens rows, and batch * heads within the grid limit."""
        return max(1, min(self.max_tokens // seq_len, MAX_GRID_YZ // self.config.num_attention_heads))

    # ----- the forward calls ---------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """tokens int32 [B, S] -> [B, V] last-position logits, B prompts in as few model forwards as
        max_tokens allows. B may be 0 (a rank with no samples left under expert parallelism)."""
        return self.forward_padded(check_tokens(tokens, self.config), None)

    def forward_ragged(self, prompts, pad_id: int | None = None) -> np.ndarray:
        """Prompts of different lengths -> [n, V] logits at each one's own last token. They are
        padded on the right to the longest with `pad_id` (default the config's pad_token_id); the
        padding cannot change any logit (see the module docstring)."""
        prompts = [np.asarray(p) for p in prompts]
        if not prompts:
            raise ValueError("forward_ragged needs at least one prompt")
        bad = [i for i, p in enumerate(prompts) if p.ndim != 1 or p.size == 0]
        if bad:
            raise ValueError(f"prompt {bad[0]} has shape {prompts[bad[0]].shape}; each prompt must be a non-empty "
                             "1-D array of token ids")
        lengths = np.array([p.size for p in prompts], np.int64)
        pad = self.config.pad_token_id if pad_id is None else int(pad_id)
        tokens = np.full((len(prompts), int(lengths.max())), pad, np.int64)
        for i, p in enumerate(prompts):
            tokens[i, :p.size] = p
        return self.forward_padded(check_tokens(tokens, self.config), lengths)

    def forward_padded(self, tokens: np.ndarray, lengths=None) -> np.ndarray:
        """tokens [B, L] whose row b holds a prompt in its first lengths[b] ids (None: all L) and
        anything after -> [B, V] logits at position lengths[b] - 1 of each row."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        B, L = tokens.shape
        V = self.config.vocab_size
        if B > self.max_batch:
            raise ValueError(f"batch of {B} prompts exceeds max_batch={self.max_batch}; split it or build the "
                             "engine with max_batch=N")
        if lengths is not None:
            lengths = np.asarray(lengths, np.int64)
            if lengths.shape != (B,) or (B and (lengths.min() < 1 or lengths.max() > L)):
                raise ValueError(f"lengths must be {B} values in 1..{L}, got {lengths}")
        per_chunk = self.sequences_per_chunk(L)
        starts = list(range(0, B, per_chunk))
        chunks = self.group.allreduce_max(len(starts)) if self.collective_forward else len(starts)
        self.workspace.reset()
        if B:
            self._run_chunks(tokens, lengths, starts, per_chunk)
        for _ in range(chunks - len(starts)):
            self.idle_chunk()
        out = np.empty((0, V), np.float32)
        if B:
            self.copy_stream.synchronize()
            out = self._io["h_logits"][:B].copy()
        self.workspace.reset()  # grows here, after the warm-up, if that forward overflowed it
        self.after_forward()
        return out

    def _run_chunks(self, tokens, lengths, starts, per_chunk) -> None:
        B, L = tokens.shape
        V, cuda = self.config.vocab_size, self.transfers.cuda
        io = self.io_buffers(B, L)
        io["h_ids"][:B * L] = tokens.ravel()
        if lengths is not None:
            io["h_last"][:B] = lengths - 1
        uploaded = [cuda.Event() for _ in starts]
        computed = [cuda.Event() for _ in starts]

        def rows(c):
            return starts[c], min(per_chunk, B - starts[c])

        def upload(c):
            b0, nb = rows(c)
            self.transfers.htod_async(offset_ptr(io["d_ids"], b0 * L * I32), io["h_ids"][b0 * L:(b0 + nb) * L],
                                      self.copy_stream)
            if lengths is not None:
                self.transfers.htod_async(offset_ptr(io["d_last"], b0 * I32), io["h_last"][b0:b0 + nb],
                                          self.copy_stream)
            uploaded[c].record(self.copy_stream)

        upload(0)
        for c in range(len(starts)):
            if c + 1 < len(starts):
                upload(c + 1)  # the next chunk's ids travel while this one computes
            b0, nb = rows(c)
            self.stream.wait_for_event(uploaded[c])
            d_last = offset_ptr(io["d_last"], b0 * I32) if lengths is not None else NULL
            self.forward_chunk_dev(offset_ptr(io["d_ids"], b0 * L * I32), nb, L,
                                   offset_ptr(io["d_logits"], b0 * V * F32), d_last)
            computed[c].record(self.stream)
            self.copy_stream.wait_for_event(computed[c])
            self.transfers.dtoh_async(io["h_logits"][b0:b0 + nb], offset_ptr(io["d_logits"], b0 * V * F32),
                                      self.copy_stream)

    # ----- one model forward on the device --------------------------------------------------------------
    def last_rows(self, d_x, d_last, d_out, batch: int, seq_len: int) -> None:
        """out[b] = x[b * seq_len + last[b]] (last = NULL: seq_len - 1) for b < batch."""
        H = self.config.hidden_size
        self._launch(self.k_last_rows, (batch, (H + ROW_BLOCK - 1) // ROW_BLOCK), (ROW_BLOCK,),
                     (d_x, d_last, d_out, np.int32(batch), np.int32(seq_len), np.int32(H)),
                     {"x": (batch * seq_len, H), "out": (batch, H)})

    def forward_chunk_dev(self, d_ids, batch: int, seq_len: int, d_logits, d_last=NULL) -> None:
        """`batch` prompts of `seq_len` ids on the device -> their logits [batch, V] into d_logits,
        read at row d_last[b] of each prompt (NULL: the last row)."""
        H = self.config.hidden_size
        d_x = self.residual_stream_dev(d_ids, batch, seq_len)
        d_last_x = self.dalloc(batch * H * F32, "last row of each prompt")
        self.last_rows(d_x, d_last, d_last_x, batch, seq_len)
        self.head_dev(d_last_x, batch, d_logits)
        self.dfree(d_last_x)
        self.dfree(d_x)

    # ----- hooks (the expert-parallel mixin fills them) ---------------------------------------------------
    def idle_chunk(self) -> None:
        raise RuntimeError("idle_chunk is only meaningful for collective (expert-parallel) forwards")

    def after_forward(self) -> None:
        """Called at the end of every forward call, on every rank."""
