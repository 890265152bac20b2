"""The reference forward as an engine, so the harness can run and time it like any variant."""
from __future__ import annotations

import numpy as np
import torch

from .engine import Engine
from .reference import WeightCache, reference_logits


class ReferenceEngine(Engine):
    """float64 on the CPU (exact), float32 on a GPU with TF32 off. One prompt at a time."""

    name = "reference"
    max_batch = 8

    def __init__(self, checkpoint, device=0, dtype: str | None = None, **options):
        super().__init__(checkpoint, device, **options)
        on_gpu = isinstance(device, int) and torch.cuda.is_available()
        self.torch_device = f"cuda:{device}" if on_gpu else "cpu"
        self.dtype = dtype or ("fp32" if on_gpu else "fp64")
        self._torch_dtype = {"fp64": torch.float64, "fp32": torch.float32}[self.dtype]
        torch.backends.cuda.matmul.allow_tf32 = False
        self._cache = WeightCache()

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        return reference_logits(self.checkpoint, tokens, dtype=self._torch_dtype, device=self.torch_device,
                                cache=self._cache)

    def synchronize(self) -> None:
        if self.torch_device.startswith("cuda"):
            torch.cuda.synchronize(self.torch_device)

    def close(self) -> None:
        self._cache.tensors.clear()
