"""Phase 4's MoE sizing: expert row counts stay on the device (only ids go up and logits come down).

Phase 2 downloads each MoE layer's E expert counts so the host can size every expert's GEMMs: a
small copy, but one that waits for the layer's routing, so the host cannot queue the forward
ahead of the GPU. Here the counting sort's counts become row offsets on the device
(`expert_offsets`), and every one of the E experts is launched with a grid for the most rows an
expert can receive (each token once: a token's top-k experts are distinct). Each block reads its
expert's row range and returns at once when it has none (kernels.cu), so an idle expert costs a
few empty blocks, not a weight read. Same GEMM and SwiGLU arithmetic as phase 2, same bits.

Experts that did not fit on the GPU (the streamed fallback of resident.py) are uploaded for all E
experts per layer now, since the host no longer knows which are idle: correct, slower, and only
where weights do not fit.
"""
from __future__ import annotations

import numpy as np

from baseline.engine import ELEMENTWISE_BLOCK, TILE
from phases.phase2.expert_batching import F32, I32, group_block

EXPERT_WEIGHTS = ("w1.weight", "w3.weight", "w2.weight")


class DeviceSizedExperts:
    """Overrides phase 2's group_for_experts / run_experts / release_sizes: `sizes` is a device
    buffer of E + 1 row offsets instead of host counts."""

    def setup_device_sized_experts(self, module) -> None:
        self.k_expert_offsets = module.kernel("expert_offsets")
        self.k_matmul_expert_rows = module.kernel("matmul_expert_rows")
        self.k_silu_mul_expert_rows = module.kernel("silu_mul_expert_rows")

    def group_for_experts(self, d_idx, rows: int):
        """Phase 2's counting sort, its counts turned into offsets on the device ->
        (d_row_pair, d_pair_row, d_offsets [E + 1] int32)."""
        E, k = self.config.num_experts, self.config.num_experts_per_tok
        pairs = rows * k
        block = (group_block(pairs),)
        d_row_pair = self.dalloc(pairs * I32, "grouped row -> pair")
        d_pair_row = self.dalloc(pairs * I32, "pair -> grouped row")
        d_offsets = self.dalloc((E + 1) * I32, "expert row offsets")
        d_counts = self.dalloc(E * I32, "expert counts")
        self._launch(self.k_expert_counts, (E,), block, (d_idx, d_counts, np.int32(pairs)), {"pairs": pairs, "E": E})
        self._launch(self.k_expert_scatter, (E,), block, (d_idx, d_counts, d_row_pair, d_pair_row, np.int32(pairs)),
                     {"pairs": pairs, "E": E})
        self._launch(self.k_expert_offsets, (1,), (1,), (d_counts, d_offsets, np.int32(E)), {"E": E})
        self.dfree(d_counts)
        return d_row_pair, d_pair_row, d_offsets

    def expert_gemm(self, d_a, d_w, d_c, d_offsets, e: int, grouped: str, most: int, N: int, K: int) -> None:
        """C = A @ W^T over expert e's rows; `grouped` names which of A, C sit at the expert's
        grouped rows (the other is a per-expert scratch from row 0)."""
        grid = ((N + TILE - 1) // TILE, (most + TILE - 1) // TILE)
        self._launch(self.k_matmul_expert_rows, grid, (TILE, TILE),
                     (d_a, d_w, d_c, d_offsets, np.int32(e), np.int32(grouped == "a"), np.int32(grouped == "c"),
                      np.int32(N), np.int32(K)), {"rows at most": most, "w": (N, K)})

    def run_experts(self, layer: int, d_x, d_offsets, rows: int):
        """Every expert over its grouped rows of d_x [pairs, H] -> d_y [pairs, H], same order."""
        cfg = self.config
        E, H, Im, pairs = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, rows * cfg.num_experts_per_tok
        most = rows  # an expert takes each token at most once
        d_y = self.dalloc(pairs * H * F32, "expert outputs (grouped)")
        d_gate = self.dalloc(most * Im * F32, "expert gate/activation")
        d_up = self.dalloc(most * Im * F32, "expert up")
        silu_grid = ((most * Im + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK,)
        for e in range(E):
            prefix = f"layers.{layer}.feed_forward.experts.{e}."
            (d_w1, own1), (d_w3, own3), (d_w2, own2) = (self.device_weight(prefix + w, tag="expert")
                                                         for w in EXPERT_WEIGHTS)
            self.expert_gemm(d_x, d_w1, d_gate, d_offsets, e, "a", most, Im, H)
            self.expert_gemm(d_x, d_w3, d_up, d_offsets, e, "a", most, Im, H)
            self._launch(self.k_silu_mul_expert_rows, silu_grid, (ELEMENTWISE_BLOCK,),
                         (d_gate, d_up, d_offsets, np.int32(e), np.int32(Im)), {"rows at most": most, "I": Im})
            self.expert_gemm(d_gate, d_w2, d_y, d_offsets, e, "c", most, H, Im)
            for d_w, own in ((d_w1, own1), (d_w3, own3), (d_w2, own2)):
                if own:
                    self.transfers.free(d_w)
        self.dfree(d_up)
        self.dfree(d_gate)
        return d_y

    def release_sizes(self, d_offsets) -> None:
        self.dfree(d_offsets)
