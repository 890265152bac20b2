"""Plan 4.3: the experts of each MoE layer split over the ranks of a node (expert parallelism).

A mixin over phases 2-4's device API. With expert parallelism on and G ranks on the node, the
node's ranks form the expert-parallel group: each keeps the attention/conv/dense/router weights
and ITS experts resident, runs its own samples (data parallel), and at every MoE layer:

    route_dev            router + top-k on this rank's tokens (phase 2)
    map_ids              expert id -> position in the shard-major order (shard 0's experts first,
                         ascending id within a shard), so grouping puts each shard's rows together
    group_dev, gather    rows grouped by position = by destination shard (phase 2's counting sort)
    Allgather counts     every rank learns how many rows each rank sends to each expert
    rows down            one async copy into a pinned buffer, then a stream sync
    Alltoallv            each shard's block of rows to the rank that owns it (host-staged: CUDA-aware
                         MPI cannot be assumed; this is the cost of the scheme on one node)
    rows up              one async copy per (expert, source rank) segment, so the received rows land
                         expert-major and each local expert runs ONCE over all ranks' rows
    experts_dev          phase 2's grouped expert GEMMs over the local experts, between two CUDA
                         events (read after the sync below: the shard's measured expert seconds)
    results back         the same segments down, Alltoallv back, one copy up into the sender's
                         grouped order, then phase 2's combine_slots on the GPU

Every per-row result is computed by the same kernels with a per-row, fixed-order reduction (the
tiled GEMM's output element does not depend on which other rows share the launch), so the logits
do not depend on G. With G = 1 (one rank on the node, or the option off) moe_dev is phase 2's.

When it is on: `expert_parallel` True or False; left out (None or "auto"), it is on wherever the
node's ranks use more than one GPU (each GPU then holds only its shard's experts) and off where
they share one (the shards would share its SMs and only add the exchange: measured, not assumed,
by running with expert_parallel=true).

Collectives run at every MoE layer, so every rank of the group must run the same number of model
forwards: the engine agrees the chunk count of each forward call (allreduce max) and a rank
with fewer samples runs empty chunks (`idle_chunk`: the exchanges only, serving its experts to
the others). The harness worker calls forward with zero rows when a rank has no batch left
(`collective_forward`). Where the experts go, and when they move, is measured_placement.py's.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from harness.checkpoints.base import expected_shapes
from harness.gpu import load_module, nvtx
from harness.gpu.pointers import offset_ptr
from phases.phase2.expert_batching import ROW_BLOCK

from .exchange_plan import receive_plan, shard_rows
from .placement import contiguous_placement, shard_order

KERNELS = Path(__file__).with_name("kernels.cu")
F32 = I32 = 4
BLOCK = 256
EXPERT_NAME = re.compile(r"^layers\.(\d+)\.feed_forward\.experts\.(\d+)\.")


def expert_parallel_wanted(option, gpus_of_node: int) -> tuple[bool, str]:
    """(on?, why) from the `expert_parallel` option and the distinct GPUs the node's ranks use."""
    if option is None or option == "auto":
        on = gpus_of_node > 1
        return on, (f"auto: the node's ranks use {gpus_of_node} GPU(s), so "
                    + ("experts are split over them" if on else "every rank keeps every expert"))
    if isinstance(option, bool):
        return option, f"expert_parallel={str(option).lower()}"
    raise ValueError(f"expert_parallel={option!r}: choose true, false or auto (default: on where the node's "
                     "ranks use more than one GPU)")


class ExpertParallel:
    """Overrides moe_dev; adds setup_expert_parallel, expert_owner, moe_ep_dev and idle_chunk.
    Every MoE layer's exchange reports to `observe_layer` (measured_placement.py)."""

    def setup_device(self, device) -> None:
        super().setup_device(device)
        self.k_map_ids = load_module(KERNELS, self.gpu).kernel("map_ids")
        cuda = self.transfers.cuda
        self._experts_began, self._experts_ended = cuda.Event(), cuda.Event()

    # ----- setup ---------------------------------------------------------------------------------
    def gpus_of_node(self) -> int:
        """Distinct GPUs the ranks of this node use (collective over the node's group)."""
        try:
            mine = self.gpu.device.pci_bus_id()
        except Exception:  # a driver without the query: the ordinal, as the harness assigns it
            mine = str(self.gpu.index)
        return len(set(self.group.allgather_object(mine)))

    def setup_expert_parallel(self) -> None:
        """The group and the initial (contiguous) placement; needs self.group (the node's ranks)."""
        cfg = self.config
        want, why = expert_parallel_wanted(self.options.get("expert_parallel"), self.gpus_of_node())
        self.ep_size = self.group.size if want else 1
        self.ep_rank = self.group.rank if want else 0
        self.collective_forward = self.ep_size > 1
        self._all_shapes = expected_shapes(cfg)
        self.placement = {layer: contiguous_placement(cfg.num_experts, self.ep_size) for layer in cfg.moe_layers}
        self._order = {layer: shard_order(p, self.ep_size) for layer, p in self.placement.items()}
        self._stage: dict[str, np.ndarray] = {}
        self._d_pos: dict[int, object] = {}
        self.counters.extra.update(ep_shards=self.ep_size, ep_rank=self.ep_rank, ep_mode=why,
                                   ep_placement=self.placement_lists())
        self.setup_measured_placement()

    def expert_owner(self, name: str) -> int | None:
        """The rank that holds tensor `name` (an expert), or None when every rank needs it."""
        m = EXPERT_NAME.match(name)
        if m is None or self.ep_size == 1:
            return None
        return int(self.placement[int(m.group(1))][int(m.group(2))])

    def upload_position_tables(self) -> None:
        """Per MoE layer, int32 [E] on the device: expert id -> its position in the shard-major order."""
        for ptr in self._d_pos.values():
            self.transfers.free(ptr)
        self._d_pos = {}
        if self.ep_size == 1:
            return
        for layer, (order, _) in self._order.items():
            pos = np.argsort(order).astype(np.int32)
            self._d_pos[layer] = self.transfers.to_device(pos, what=f"expert positions of layer {layer}")

    def placement_lists(self) -> dict:
        return {str(layer): p.tolist() for layer, p in self.placement.items()}

    # ----- the MoE block ---------------------------------------------------------------------------
    def moe_dev(self, layer: int, d_h, rows: int):
        if self.ep_size == 1:
            return super().moe_dev(layer, d_h, rows)
        return self.moe_ep_dev(layer, d_h, rows)

    def map_ids(self, d_ids, d_table, d_out, n: int) -> None:
        self._launch(self.k_map_ids, ((n + BLOCK - 1) // BLOCK,), (BLOCK,), (d_ids, d_table, d_out, np.int32(n)),
                     {"ids": (n,)})

    def _staging(self, which: str, rows: int) -> np.ndarray:
        """A pinned host buffer of at least `rows` rows of H floats (grown, never shrunk)."""
        buf = self._stage.get(which)
        if buf is None or buf.shape[0] < rows:
            self.stream.synchronize()  # no queued copy may still use the old one
            buf = self.transfers.pinned_empty((max(1, rows + rows // 4), self.config.hidden_size), np.float32)
            self._stage[which] = buf
        return buf

    def moe_ep_dev(self, layer: int, d_h, rows: int):
        """The MoE block of `layer` on this rank's h [rows, H] (device), its experts served to the
        whole group -> d_out [rows, H] (device), or None when rows == 0 (an idle chunk)."""
        cfg, ex = self.config, self.counters.extra
        H, k, E = cfg.hidden_size, cfg.num_experts_per_tok, cfg.num_experts
        G, me = self.ep_size, self.ep_rank
        order, first = self._order[layer]
        pairs = rows * k
        counts = np.zeros(E, np.int32)  # rows per position (= per expert, shard-major)
        if rows:
            with nvtx.range("router"):
                d_idx, d_wts = self.route_dev(layer, d_h, rows)
                self.map_ids(d_idx, self._d_pos[layer], d_idx, pairs)  # in place: expert ids -> positions
                d_row_pair, d_pair_row, counts = self.group_dev(d_idx, rows)
            d_out = self.dalloc(rows * H * F32, "moe output")
            d_x = self.dalloc(pairs * H * F32, "expert inputs (grouped by shard)")
            self._launch(self.k_gather_rows, (pairs, (H + ROW_BLOCK - 1) // ROW_BLOCK), (ROW_BLOCK,),
                         (d_h, d_row_pair, d_x, np.int32(pairs), np.int32(H), np.int32(k)), {"x": (pairs, H)})
        send = self._staging("send", pairs)
        if rows:
            self.transfers.dtoh_async(send[:pairs], d_x, self.stream)
        t0 = time.perf_counter()
        with nvtx.range("exchange counts"):
            everyone = self.group.allgather_counts(counts)  # [G, E]: rows rank r sends to position p
        send_rows = shard_rows(counts, first)
        plan = receive_plan(everyone, first, me)
        recv = self._staging("recv", plan.total)
        if rows:
            self.stream.synchronize()  # the grouped rows are on the host
        with nvtx.range("alltoallv rows"):
            self.group.alltoallv_rows(send, send_rows, recv, plan.recv_rows, H)
        mpi_s = time.perf_counter() - t0
        seconds = 0.0
        if plan.total:
            with nvtx.range("experts"):
                seconds = self._serve_experts(layer, recv, plan, order[first[me]:first[me + 1]])
        t0 = time.perf_counter()
        with nvtx.range("alltoallv results"):
            self.group.alltoallv_rows(recv, plan.recv_rows, send, send_rows, H)
        mpi_s += time.perf_counter() - t0
        rows_by_expert = np.zeros(E, np.int64)
        rows_by_expert[order] = everyone.sum(axis=0)
        self.observe_layer(layer, rows_by_expert, int((plan.expert_rows > 0).sum()), plan.total, seconds)
        others = np.arange(G) != me
        ex["ep_bytes_to_other_ranks"] = (ex.get("ep_bytes_to_other_ranks", 0)
                                         + int(send_rows[others].sum() + plan.recv_rows[others].sum()) * H * F32)
        ex["ep_mpi_seconds"] = ex.get("ep_mpi_seconds", 0.0) + mpi_s
        if not rows:
            return None
        with nvtx.range("combine"):
            d_y = self.dalloc(pairs * H * F32, "expert outputs (grouped by shard)")
            self.transfers.htod_async(d_y, send[:pairs], self.stream)
            self._launch(self.k_combine_slots, (rows, (H + ROW_BLOCK - 1) // ROW_BLOCK), (ROW_BLOCK,),
                         (d_y, d_pair_row, d_wts, d_out, np.int32(rows), np.int32(H), np.int32(k)),
                         {"y": (pairs, H), "out": (rows, H)})
        for d in (d_y, d_x, d_pair_row, d_row_pair, d_wts, d_idx):  # newest first
            self.dfree(d)
        return d_out

    def _serve_experts(self, layer: int, recv: np.ndarray, plan, my_experts) -> float:
        """Run this rank's experts (ids ascending, = its positions in order) on the rows every
        rank sent (recv: rank-major), writing each result over its input row. Uploaded
        expert-major, one copy per (expert, source rank) segment, so each expert runs once.
        -> the experts' GPU seconds (CUDA events around experts_dev, read after the sync the
        results' download needs anyway)."""
        H, E = self.config.hidden_size, self.config.num_experts
        d_xr = self.dalloc(plan.total * H * F32, "received expert inputs (expert-major)")
        for row, at, n in plan.segments:
            self.transfers.htod_async(offset_ptr(d_xr, row * H * F32), recv[at:at + n], self.stream)
        counts_by_id = np.zeros(E, np.int64)
        counts_by_id[my_experts] = plan.expert_rows  # experts_dev's offsets: ascending expert id
        self._experts_began.record(self.stream)
        d_yr = self.experts_dev(layer, d_xr, counts_by_id)
        self._experts_ended.record(self.stream)
        for row, at, n in plan.segments:
            self.transfers.dtoh_async(recv[at:at + n], offset_ptr(d_yr, row * H * F32), self.stream)
        self.stream.synchronize()
        self.dfree(d_yr)
        self.dfree(d_xr)
        return self._experts_ended.time_since(self._experts_began) / 1e3

    def idle_chunk(self) -> None:
        """A model forward with no rows of this rank's own: only the MoE exchanges, serving this
        rank's experts to the ranks that still have samples."""
        for layer in self.config.moe_layers:
            self.moe_ep_dev(layer, None, 0)
