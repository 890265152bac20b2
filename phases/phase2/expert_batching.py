"""Plan 1.1, MoE expert batching: the whole MoE block of a forward on the GPU, each expert run
once over all the tokens routed to it.

A mixin over the baseline's device API (device_weight, dalloc/dfree, gemm, elementwise,
transfers, stream, sync_launches), so it sits on any engine of phase >= 1; Phase2Engine puts it
on Phase1Engine. Per MoE layer:

    router logits  gemm(h, gate)                               [rows, E]
    route_topk     sigmoid, top-k of sigmoid + expert_bias,    idx [rows, k], wts [rows, k]
                   weights from the unbiased sigmoid / (sum + 1e-6) * routed_scaling_factor
    expert_counts  pairs per expert                            counts [E]  -> host (E ints)
    expert_scatter deterministic counting sort of the pairs by (expert, token, slot)
    gather_rows    the routed rows of h, grouped by expert     [pairs, H]
    per expert e with counts[e] > 0: upload w1, w3, w2 once, gemm w1, gemm w3, silu_mul, gemm w2
    combine_slots  out[t] = sum over slots, in slot order, of w[t, j] * y[row of (t, j)]

Expert weights still cross PCIe on every use (as in phases 0-1; phase 4 makes them resident),
but once per distinct expert per layer instead of once per (token, expert) pair, so the
measured gain is batching's. The only device-to-host copy is the E per-expert counts: the host
needs them to know which experts run and the row count of each expert's GEMMs.

Tie rule: on exactly equal biased scores the lower expert index is chosen first, the order of a
stable descending sort, as the baseline's numpy routing (baseline/host_ops.route). torch.topk
does not specify its tie order, and torch's CPU topk in fact prefers the HIGHER index on ties
(topk(zeros(8), 3) gives 6, 5, 4; torch 2.11 and 2.13), so on exact ties the reference may
choose differently. Exact ties need equal sigmoid + bias in fp32: absent in practice with
continuous logits and trained biases; the tests build them on purpose.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.gpu import load_module
from harness.gpu import nvtx
from harness.gpu.pointers import NULL, offset_ptr

KERNELS = Path(__file__).with_name("kernels.cu")
MAX_TOPK = 16  # = kernels.cu MAX_TOPK (per-thread arrays in route_topk)
ROUTE_BLOCK = 128  # tokens per block in route_topk
GROUP_BLOCK_MAX = 1024  # threads per expert block in expert_counts / expert_scatter
ROW_BLOCK = 256  # columns per block in gather_rows / combine_slots
F32 = I32 = 4  # bytes


def group_block(pairs: int) -> int:
    """Threads for the grouping kernels: a multiple of 32 (they use warp ballots), <= 1024."""
    return min(GROUP_BLOCK_MAX, 32 * ((pairs + 31) // 32))


class ExpertBatching:
    """Overrides setup_device (loads this phase's kernels), route and moe_block; adds the device
    functions route_dev, group_dev, experts_dev and moe_dev."""

    def setup_device(self, device) -> None:
        k = self.config.num_experts_per_tok
        if k > MAX_TOPK:  # checked before any GPU work
            raise ValueError(f"num_experts_per_tok={k} exceeds the routing kernel's MAX_TOPK={MAX_TOPK}; "
                             "raise MAX_TOPK in phases/phase2/kernels.cu and expert_batching.py together")
        super().setup_device(device)
        module = load_module(KERNELS, self.gpu)
        self.k_route_topk = module.kernel("route_topk")
        self.k_expert_counts = module.kernel("expert_counts")
        self.k_expert_scatter = module.kernel("expert_scatter")
        self.k_gather_rows = module.kernel("gather_rows")
        self.k_silu_mul = module.kernel("silu_mul")
        self.k_combine_slots = module.kernel("combine_slots")

    # ----- device functions (device in, device out) ----------------------------------------------
    def route_dev(self, layer: int, d_h, rows: int):
        """Router of MoE layer `layer` on h [rows, H] (device) -> (d_idx int32 [rows, k],
        d_wts float32 [rows, k]), slots in descending biased score. The caller frees both."""
        cfg, f = self.config, f"layers.{layer}.feed_forward."
        E, k, H = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
        # Results first, scratch last: freed scratch on top of a stack workspace (phase 4) is reused at once.
        d_idx = self.dalloc(rows * k * I32, "routing indices")
        d_wts = self.dalloc(rows * k * F32, "routing weights")
        d_logits = self.dalloc(rows * E * F32, "router logits")
        d_gate, own = self.device_weight(f + "gate.weight")
        self.gemm(d_h, d_gate, d_logits, rows, E, H)
        if own:
            self.transfers.free(d_gate)
        d_bias, own_bias = self.device_weight(f + "expert_bias") if cfg.use_expert_bias else (NULL, False)
        self._launch(self.k_route_topk, ((rows + ROUTE_BLOCK - 1) // ROUTE_BLOCK,), (ROUTE_BLOCK,),
                     (d_logits, d_bias, d_idx, d_wts, np.int32(rows), np.int32(E), np.int32(k),
                      np.int32(cfg.norm_topk_prob), np.float32(cfg.routed_scaling_factor)),
                     {"logits": (rows, E), "k": k})
        self.dfree(d_logits)
        if own_bias:
            self.transfers.free(d_bias)
        return d_idx, d_wts

    def group_dev(self, d_idx, rows: int):
        """Group the rows*k (token, slot) pairs by expert -> (d_row_pair, d_pair_row, counts):
        grouped row r holds pair d_row_pair[r] (= token*k + slot), pair p sits at grouped row
        d_pair_row[p], rows ordered by (expert, token, slot); counts [E] int32 on the host.
        The caller frees the two device buffers."""
        E, k = self.config.num_experts, self.config.num_experts_per_tok
        pairs = rows * k
        block = (group_block(pairs),)
        d_row_pair = self.dalloc(pairs * I32, "grouped row -> pair")
        d_pair_row = self.dalloc(pairs * I32, "pair -> grouped row")
        d_counts = self.dalloc(E * I32, "expert counts")
        self._launch(self.k_expert_counts, (E,), block, (d_idx, d_counts, np.int32(pairs)), {"pairs": pairs, "E": E})
        counts = self.fetch_counts(d_counts)
        self._launch(self.k_expert_scatter, (E,), block, (d_idx, d_counts, d_row_pair, d_pair_row, np.int32(pairs)),
                     {"pairs": pairs, "E": E})
        self.dfree(d_counts)
        return d_row_pair, d_pair_row, counts

    def fetch_counts(self, d_counts) -> np.ndarray:
        """The E per-expert counts on the host: the one device-to-host copy of the MoE block.
        Phases 0-3 (no stream of their own): a plain synchronous copy. With an engine stream
        (phase 4 on): queued on that stream into a pinned buffer kept for the purpose, then a wait
        for that stream only, so copies on other streams keep overlapping."""
        E = self.config.num_experts
        if self.stream is None:
            return self.transfers.from_device(d_counts, (E,), np.int32)
        if getattr(self, "_counts_host", None) is None:
            self._counts_host = self.transfers.pinned_empty(E, np.int32)
        self.transfers.dtoh_async(self._counts_host, d_counts, self.stream)
        self.stream.synchronize()
        return self._counts_host.copy()

    def experts_dev(self, layer: int, d_x, counts: np.ndarray):
        """Each expert with tokens, once, over its contiguous rows of the grouped input
        d_x [pairs, H] -> d_y [pairs, H] in the same grouped order. The caller frees d_y."""
        cfg = self.config
        H, Im = cfg.hidden_size, cfg.moe_intermediate_size
        offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        most = int(counts.max())
        d_y = self.dalloc(int(offsets[-1]) * H * F32, "expert outputs (grouped)")
        d_gate = self.dalloc(most * Im * F32, "expert gate/activation")
        d_up = self.dalloc(most * Im * F32, "expert up")
        for e in np.flatnonzero(counts):
            n, first = int(counts[e]), int(offsets[e])
            x_e, y_e = offset_ptr(d_x, first * H * F32), offset_ptr(d_y, first * H * F32)
            prefix = f"layers.{layer}.feed_forward.experts.{e}."
            (d_w1, own1), (d_w3, own3), (d_w2, own2) = (self.device_weight(prefix + w, tag="expert") for w in
                                                         ("w1.weight", "w3.weight", "w2.weight"))
            self.gemm(x_e, d_w1, d_gate, n, Im, H)
            self.gemm(x_e, d_w3, d_up, n, Im, H)
            self.elementwise(self.k_silu_mul, (d_gate, d_up), n * Im)
            self.gemm(d_gate, d_w2, y_e, n, H, Im)
            for d_w, own in ((d_w1, own1), (d_w3, own3), (d_w2, own2)):
                if own:
                    self.transfers.free(d_w)
        self.dfree(d_gate)
        self.dfree(d_up)
        return d_y

    def moe_dev(self, layer: int, d_h, rows: int):
        """MoE block of layer `layer` on h [rows, H] (device; rows = batch * seq_len, any
        batch: routing is per token) -> d_out [rows, H] (device; the caller frees it)."""
        cfg = self.config
        H, k = cfg.hidden_size, cfg.num_experts_per_tok
        pairs = rows * k
        col_blocks = (H + ROW_BLOCK - 1) // ROW_BLOCK
        with nvtx.range("router"):
            d_idx, d_wts = self.route_dev(layer, d_h, rows)
            d_row_pair, d_pair_row, sizes = self.group_for_experts(d_idx, rows)
        d_out = self.dalloc(rows * H * F32, "moe output")  # below the grouped buffers on a stack workspace
        with nvtx.range("experts"):
            d_x = self.dalloc(pairs * H * F32, "expert inputs (grouped)")
            self._launch(self.k_gather_rows, (pairs, col_blocks), (ROW_BLOCK,),
                         (d_h, d_row_pair, d_x, np.int32(pairs), np.int32(H), np.int32(k)), {"x": (pairs, H)})
            d_y = self.run_experts(layer, d_x, sizes, rows)
        with nvtx.range("combine"):
            self._launch(self.k_combine_slots, (rows, col_blocks), (ROW_BLOCK,),
                         (d_y, d_pair_row, d_wts, d_out, np.int32(rows), np.int32(H), np.int32(k)),
                         {"y": (pairs, H), "out": (rows, H)})
        for d in (d_y, d_x, d_pair_row, d_row_pair, d_wts, d_idx):  # newest first
            self.dfree(d)
        self.release_sizes(sizes)
        return d_out

    # How moe_dev learns each expert's row count. Here: counts on the host (group_dev's one small
    # copy per layer), which size each expert's GEMMs. Phase 4 keeps them on the device instead
    # (phases/phase4/device_moe.py); phase 5's expert-parallel path keeps calling group_dev and
    # experts_dev, since its MPI exchange needs the counts on the host anyway.
    def group_for_experts(self, d_idx, rows: int):
        """-> (d_row_pair, d_pair_row, sizes): group_dev's, sizes = the host counts."""
        return self.group_dev(d_idx, rows)

    def run_experts(self, layer: int, d_x, sizes, rows: int):
        return self.experts_dev(layer, d_x, sizes)

    def release_sizes(self, sizes) -> None:
        """Host counts: nothing to free."""

    # ----- host wrappers (what the baseline's layer() calls) ----------------------------------------
    def route(self, layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The baseline's route() signature on the GPU routing: (ids [T, k] int64, weights [T, k])."""
        T, k = h.shape[0], self.config.num_experts_per_tok
        d_h = self.transfers.to_device(np.ascontiguousarray(h, dtype=np.float32), what="router input")
        d_idx, d_wts = self.route_dev(layer, d_h, T)
        idx = self.transfers.from_device(d_idx, (T, k), np.int32).astype(np.int64)
        wts = self.transfers.from_device(d_wts, (T, k))
        self.dfree(d_wts)
        self.dfree(d_idx)
        self.transfers.free(d_h)  # made by to_device, not dalloc
        return idx, wts

    def moe_block(self, layer: int, h: np.ndarray) -> np.ndarray:
        T, H = h.shape
        with nvtx.range("moe"):
            d_h = self.transfers.to_device(np.ascontiguousarray(h, dtype=np.float32), what="moe input")
            d_out = self.moe_dev(layer, d_h, T)
            out = self.transfers.from_device(d_out, (T, H))
            self.dfree(d_out)
            self.transfers.free(d_h)  # made by to_device, not dalloc
            return out
