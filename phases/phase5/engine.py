"""Phase 5: phase 4 plus sample batching (plan 3.2) and the MPI work of plan 4.1-4.3.

| what                 | phase 4                                    | phase 5                                         |
|----------------------|--------------------------------------------|-------------------------------------------------|
| prompts per forward  | one model forward per prompt               | up to max_tokens rows (1,024 x 16) in ONE model |
|                      |                                            | forward; mixed lengths padded on the right,     |
|                      |                                            | exactly (batching.py)                           |
| weight loading       | every rank reads the whole checkpoint      | load="bcast" (default): local rank 0 of each    |
|                      |                                            | node reads, the node's other ranks receive      |
|                      |                                            | (node_loading.py); load="each" to compare       |
| outputs              | (harness) MPI Reduce(SUM) of the full      | output_collective = "gather": each rank's own   |
|                      | samples x vocab array, others' rows zeroed | rows only (Gatherv); both inside the clock      |
| experts              | all 32 on every rank                       | split over the node's ranks where they use more |
|                      |                                            | than one GPU (expert_parallel.py), placed by    |
|                      |                                            | the measured load of the timed prompts, placed  |
|                      |                                            | again on drift (measured_placement.py)          |
The layer math is phases 1-4's device functions, unchanged.

Options (engine constructor keywords; `--option KEY=VALUE` in the harness):
  max_batch=1024          most prompts per forward call
  max_tokens=16384        rows (prompts x seq_len) per model forward; more prompts run as pipelined chunks
  load="bcast"|"each"     weight loading over the node's ranks
  expert_parallel=None    True: the node's ranks form an expert-parallel group (G = ranks on the node);
                          None/"auto": on where the node's ranks use more than one GPU; False: off
  rebalance="drift"       (expert parallel) place by the calibration's measured load and again on drift;
                          "once": calibration only; "never": contiguous
  calibrate_batches=2     batches of each rank's timed samples the calibration runs
  rebalance_window=4      forwards between drift checks
  rebalance_threshold=0.1 measured slowest/mean above 1 + this, and a predicted gain as large, moves experts
  comm=None               an mpi4py communicator; default MPI.COMM_WORLD when the process runs MPI
What load and balancing cost is in counters.extra (kept across the harness's counter reset):
load_seconds, load_bytes_read, load_bytes_sent, load_bytes_received, ep_balance, ep_placement,
ep_cost_model; record_fields turns the per-rank counters into the record's expert-placement fields.
"""
from __future__ import annotations

import time

from harness.checkpoints.base import expected_shapes
from phases.phase4.engine import HEADROOM, Phase4Engine, ResidentShape
from phases.phase4.workspace import Workspace

from .batching import SampleBatching
from .expert_parallel import ExpertParallel
from .kept_counters import KeptCounters
from .measured_placement import MeasuredPlacement
from .node_group import NodeGroup
from .node_loading import NodeTensorSource
from .rank_weights import RankResidentWeights

F32 = 4


class Phase5Engine(MeasuredPlacement, ExpertParallel, SampleBatching, Phase4Engine):
    name = "phase5"
    phase = 5
    output_collective = "gather"  # the harness worker gathers each rank's own rows, inside the clock (plan 4.2)

    def __init__(self, checkpoint, device=0, **options):
        options.setdefault("max_batch", 1024)
        super().__init__(checkpoint, device, **options)

    def setup_device(self, device) -> None:
        # Before the transfer layer is made (it holds the counters): keep load facts across resets.
        self.counters = KeptCounters.replacing(self.counters)
        super().setup_device(device)

    def ranks_per_gpu(self) -> int:
        """Ranks of this node sharing one GPU (the harness maps ranks to GPUs round-robin)."""
        gpus = max(1, self.transfers.cuda.Device.count())
        return -(-self.group.size // gpus)

    def load_weights(self, progress: bool = True):
        t0 = time.perf_counter()
        self.group = NodeGroup(self.options.get("comm"))
        self.setup_expert_parallel()
        names = list(expected_shapes(self.config).items())
        mine = {n: s for n, s in names if self.expert_owner(n) in (None, self.ep_rank)}
        source = NodeTensorSource(self.checkpoint, self.group, self.options.get("load", "bcast"))
        free, _ = self.gpu.mem_info()
        budget = free // self.ranks_per_gpu() - HEADROOM
        self.resident = RankResidentWeights(mine, source.tensors([n for n, _ in names], self.expert_owner),
                                            self.transfers, budget, progress)
        if self.resident.host:
            print(f"phase5 (rank {self.group.rank} of the node): {self.resident.summary()}")
        self.counters.extra.update(source.stats, load_seconds=time.perf_counter() - t0,
                                   resident_weight_bytes=self.resident.resident_bytes)
        cfg = self.config
        # Sized for a 512-token forward; the warm-up forward grows it to what a batch needs.
        self.workspace = Workspace(self.transfers, 512 * (3 * cfg.hidden_size + 8 * cfg.intermediate_size) * F32)
        self.upload_position_tables()
        weights = {n: ResidentShape(n, self.resident.shapes[n]) for n in self.resident.device}
        weights.update(self.resident.host)
        return weights

    def close(self) -> None:
        group = getattr(self, "group", None)
        super().close()
        if group is not None:
            group.free()
