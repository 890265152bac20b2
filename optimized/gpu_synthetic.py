"""Random weights generated on the GPU, one tensor at a time, for timing the full model without
writing or reading 16.7 GB: the same distributions as harness.checkpoints.synthetic (normal(0, 0.02) matrices,
1 + normal(0, 0.05) norms, uniform conv taps, fp32 expert_bias), drawn by torch's CUDA generator
seeded from (seed, name), so a tensor is the same whenever it is asked for. Not byte-identical
to harness.checkpoints.synthetic's CPU checkpoints (a different generator)."""
from __future__ import annotations

import hashlib
import math

import torch

from harness.checkpoints.base import Checkpoint, expected_shapes, keeps_fp32


class GPUSyntheticCheckpoint(Checkpoint):
    def __init__(self, cfg, seed: int = 0, device="cuda"):
        self.config, self.seed, self.device = cfg, seed, torch.device(device)
        self.source = f"gpu-synthetic:{cfg.name}:seed={seed}"
        self._shapes = expected_shapes(cfg)

    def raw(self, name: str) -> torch.Tensor:
        digest = hashlib.blake2b(f"{self.seed}\0{name}".encode(), digest_size=8).digest()
        g = torch.Generator(device=self.device).manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        shape = self._shapes[name]
        t = torch.empty(shape, dtype=torch.float32, device=self.device)
        if keeps_fp32(name):
            return t.normal_(0.0, 0.05, generator=g)
        if name.endswith("norm.weight"):
            t.normal_(0.0, 0.05, generator=g).add_(1.0)
        elif name.endswith("conv.conv.weight"):
            bound = 1.0 / math.sqrt(self.config.conv_L_cache)
            t.uniform_(-bound, bound, generator=g)
        else:
            t.normal_(0.0, 0.02, generator=g)
        return t.to(torch.bfloat16)


def checkpoint_for(preset: str, seed: int = 0) -> Checkpoint:
    """A synthetic checkpoint of a preset, made where it is quick: presets of ~1 B parameters and
    more (`small`, the full model) drawn on the GPU in seconds, the tiny ones in memory by
    harness.checkpoints.synthetic (the same bytes as a folder `make-model` writes)."""
    from harness.config import get_preset
    from harness.checkpoints.synthetic import synthetic_checkpoint
    cfg = get_preset(preset)
    if cfg.hidden_size >= 1024:
        return GPUSyntheticCheckpoint(cfg, seed=seed)
    return synthetic_checkpoint(cfg, seed=seed)
