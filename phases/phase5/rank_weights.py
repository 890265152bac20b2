"""Phase 4's resident weights for one rank of a node: fed by the node's tensor source (one reader per
node), holding only the tensors this rank needs (under expert parallelism: the dense weights and
its own experts), and able to hand an expert over to another rank when the placement changes.

Residency follows phase 4's rule (plan_residency: everything but experts first, then experts in
layer order while the budget lasts); what does not fit stays on the host and is uploaded per use.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from harness.gpu import GPUUnavailable
from phases.phase4.resident import ResidentWeights, plan_residency


def nbytes_of(shape) -> int:
    return int(np.prod(shape)) * 4


class RankResidentWeights(ResidentWeights):
    """name -> device pointer (resident) or host float32 array (streamed), for `shapes` only."""

    def __init__(self, shapes: dict[str, tuple], tensors, transfers, budget_bytes: int, progress: bool = True):
        self.shapes = dict(shapes)
        self.transfers = transfers
        _, streamed = plan_residency(self.shapes, budget_bytes)
        streamed = set(streamed)
        self.device: dict[str, object] = {}
        self.host: dict[str, np.ndarray] = {}
        self.total_bytes = sum(nbytes_of(s) for s in self.shapes.values())
        with tqdm(total=self.total_bytes, unit="B", unit_scale=True, desc="phase5: loading this rank's weights",
                  disable=not progress, leave=False) as bar:
            for name, arr in tensors:
                if name in streamed:
                    self.host[name] = arr
                else:
                    self.device[name] = transfers.to_device(arr, weight=True, what=name)
                bar.update(arr.nbytes)
        missing = [n for n in self.shapes if n not in self.device and n not in self.host]
        if missing:
            raise RuntimeError(f"the node's tensor source did not deliver {len(missing)} tensor(s) this rank needs, "
                               f"e.g. {missing[:3]}")
        self.resident_bytes = sum(nbytes_of(self.shapes[n]) for n in self.device)

    def take(self, name: str) -> np.ndarray:
        """Remove `name` from this rank and return its values (downloaded if resident)."""
        shape = self.shapes.pop(name)
        if name in self.device:
            ptr = self.device.pop(name)
            arr = self.transfers.from_device(ptr, shape)
            self.transfers.free(ptr)
            self.resident_bytes -= arr.nbytes
        else:
            arr = self.host.pop(name)
        self.total_bytes -= arr.nbytes
        return arr

    def put(self, name: str, arr: np.ndarray) -> None:
        """Add `name` to this rank: resident if the GPU has room, else kept on the host."""
        self.shapes[name] = arr.shape
        self.total_bytes += arr.nbytes
        try:
            self.device[name] = self.transfers.to_device(arr, weight=True, what=name)
            self.resident_bytes += arr.nbytes
        except GPUUnavailable:
            self.host[name] = arr
