"""Phase 3's two steps (plan 2.1 and 2.3), as a mixin that Phase3Engine puts over Phase2Engine.

It uses only the shared device pattern (dalloc/dfree, device_weight, launch on self.stream,
counted copies through self.transfers) and Phase 1's `project` (a GEMM into a new buffer), so
phase 4's resident weights, workspace and GEMM apply to it unchanged.

Device functions (device in, device out; activations [batch*seq_len, features] float32):
    conv_dev(layer, d_h, batch, seq_len) -> d_out   in_proj GEMM, ONE fused kernel, out_proj GEMM
    embed_dev(ids) -> d_x                            ids checked on the host, uploaded, gathered
Host wrappers (what layer() / forward_sample() call, as in phases 0-2):
    conv_block(layer, h) -> out,  embed(ids) -> x
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.gpu import load_module, nvtx

from .token_ids import checked_ids

KERNELS = Path(__file__).with_name("kernels.cu")
BLOCK = 256  # threads per block of both kernels (one output element per thread)
F32 = 4  # bytes


def blocks_for(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


class FusedConvAndEmbedding:
    """ShortConv with no CPU step between its projections, and the embedding gathered on the GPU."""

    def setup_device(self, device) -> None:
        super().setup_device(device)
        module = load_module(KERNELS, self.gpu)
        self.k_shortconv_gate = module.kernel("shortconv_gate")
        self.k_embedding_gather = module.kernel("embedding_gather")

    # ----- launches (tests call these on buffers of any shape) ----------------------------------
    def shortconv_gate(self, d_bcx, d_conv_w, d_y, batch: int, seq_len: int, H: int, L: int) -> None:
        """y [rows, H] = C * causal_depthwise_conv(B * x) from the in_proj output bcx [rows, 3H]
        (chunks B | C | x) and conv weight [H, L]; each of the `batch` sequences starts from zero."""
        rows = batch * seq_len
        self._launch(self.k_shortconv_gate, (blocks_for(rows * H),), (BLOCK,),
                     (d_bcx, d_conv_w, d_y, np.int32(rows), np.int32(seq_len), np.int32(H), np.int32(L)),
                     {"bcx": (rows, 3 * H), "conv_w": (H, L), "y": (rows, H), "seq_len": seq_len})

    def embedding_gather(self, d_ids, d_table, d_x, rows: int, H: int, vocab: int) -> None:
        """x [rows, H] = table [vocab, H] at ids [rows] (int32, already checked on the host)."""
        self._launch(self.k_embedding_gather, (blocks_for(rows * H),), (BLOCK,),
                     (d_ids, d_table, d_x, np.int32(rows), np.int32(H), np.int32(vocab)),
                     {"ids": (rows,), "table": (vocab, H), "x": (rows, H)})

    # ----- device functions --------------------------------------------------------------------
    def conv_dev(self, layer: int, d_h, batch: int, seq_len: int):
        """The ShortConv block of `layer` on h [batch*seq_len, H] (device) -> a new device buffer
        [batch*seq_len, H]. The in_proj output is read in its natural [rows, 3H] layout by the fused
        kernel, so no split, transpose or CPU step exists between the projections."""
        if batch < 1 or seq_len < 1:
            raise ValueError(f"conv_dev needs batch >= 1 and seq_len >= 1, got {batch} x {seq_len}")
        cfg, c = self.config, f"layers.{layer}.conv."
        H, L, rows = cfg.hidden_size, cfg.conv_L_cache, batch * seq_len
        d_bcx = self.project(d_h, rows, c + "in_proj.weight", "conv in_proj output")
        d_y = self.dalloc(rows * H * F32, "conv gated output")
        d_w, own = self.device_weight(c + "conv.weight")
        self.shortconv_gate(d_bcx, d_w, d_y, batch, seq_len, H, L)
        if own:
            self.transfers.free(d_w)
        self.dfree(d_bcx)
        d_out = self.project(d_y, rows, c + "out_proj.weight", "conv output")
        self.dfree(d_y)
        return d_out

    def embed_dev(self, ids):
        """Token ids (host, any shape, read row-major) -> a new device buffer [ids.size, H] of their
        embedding rows. Ids are checked on the host BEFORE anything is uploaded or launched
        (ValueError names the bad id); only then do the int32 ids cross to the GPU."""
        cfg = self.config
        ids32 = checked_ids(ids, cfg.vocab_size)
        rows, H = ids32.size, cfg.hidden_size
        d_x = self.dalloc(rows * H * F32, "embeddings")
        d_ids = self.dalloc(ids32.nbytes, "token ids")
        self.transfers.htod(d_ids, ids32)
        # In phases 0-3 device_weight uploads the whole table per call (537 MB on the real model);
        # phase 4's resident weights make this the ~10 us gather it is meant to be.
        d_table, own = self.device_weight("embed_tokens.weight")
        self.embedding_gather(d_ids, d_table, d_x, rows, H, cfg.vocab_size)
        if own:
            self.transfers.free(d_table)
        self.dfree(d_ids)
        return d_x

    # ----- host wrappers (the layer() flow of phases 0-2: activations live on the host) ---------
    def conv_block(self, layer: int, h: np.ndarray) -> np.ndarray:
        with nvtx.range("conv"):
            h = np.ascontiguousarray(h, dtype=np.float32)
            T, H = h.shape
            d_h = self.dalloc(h.nbytes, "conv input")
            self.transfers.htod(d_h, h)
            d_out = self.conv_dev(layer, d_h, 1, T)
            out = self.transfers.from_device(d_out, (T, H))
            self.dfree(d_out)
            self.dfree(d_h)
            return out

    def embed(self, ids: np.ndarray) -> np.ndarray:
        with nvtx.range("embedding"):
            n = np.asarray(ids).size
            d_x = self.embed_dev(ids)
            x = self.transfers.from_device(d_x, (n, self.config.hidden_size))
            self.dfree(d_x)
            return x
