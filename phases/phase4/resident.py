"""Weights uploaded once at load and kept on the GPU (plan 2.2), with a fallback when they do not fit.

The full fp32 model is 33.4 GB and fits an 80 GB H100. When it does not (several ranks sharing a
GPU, a smaller GPU) the dense weights go first, then as many experts as fit; the rest stay on the
host and are uploaded per use as in phases 0-3. What was made resident is reported, not hidden.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from harness.checkpoints.base import expected_shapes


def plan_residency(shapes: dict[str, tuple], budget_bytes: int) -> tuple[list[str], list[str]]:
    """Split weight names into (resident, streamed): everything but experts first (they are used
    by every token), then experts in layer order until the budget is spent."""
    def nbytes(name):
        return int(np.prod(shapes[name])) * 4

    first = [n for n in shapes if ".experts." not in n]
    experts = [n for n in shapes if ".experts." in n]
    resident, used = [], 0
    for name in first + experts:
        if used + nbytes(name) > budget_bytes:
            break
        resident.append(name)
        used += nbytes(name)
    chosen = set(resident)
    return resident, [n for n in shapes if n not in chosen]


class ResidentWeights:
    """name -> device pointer for the resident weights; host fp32 arrays for the streamed rest."""

    def __init__(self, checkpoint, transfers, budget_bytes: int, progress: bool = True):
        self.shapes = expected_shapes(checkpoint.config)
        _, streamed = plan_residency(self.shapes, budget_bytes)
        streamed = set(streamed)
        self.device: dict[str, object] = {}
        self.host: dict[str, np.ndarray] = {}
        total = sum(int(np.prod(self.shapes[n])) * 4 for n in self.shapes)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="phase4: uploading resident weights",
                   disable=not progress, leave=False)
        for name in self.shapes:
            t = checkpoint.get(name, torch.float32).numpy()
            t = np.ascontiguousarray(t, dtype=np.float32)
            if name not in streamed:
                self.device[name] = transfers.to_device(t, weight=True, what=name)
            else:
                self.host[name] = t
            bar.update(t.nbytes)
        bar.close()
        self.resident_bytes = sum(int(np.prod(self.shapes[n])) * 4 for n in self.device)
        self.total_bytes = total

    def summary(self) -> str:
        if not self.host:
            return f"all {self.total_bytes / 1e9:.1f} GB of fp32 weights resident on the GPU"
        return (f"{self.resident_bytes / 1e9:.1f} of {self.total_bytes / 1e9:.1f} GB of fp32 weights resident; "
                f"{len(self.host)} tensors ({(self.total_bytes - self.resident_bytes) / 1e9:.1f} GB) are "
                "uploaded per use because the GPU has too little free memory")
