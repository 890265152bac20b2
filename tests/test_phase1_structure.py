"""Phase 1 on the CPU: it is registered, it builds on the baseline, and it overrides only its own
concern (norm + attention), so a phase-1 vs phase-0 comparison measures exactly that."""
from __future__ import annotations

import inspect

import pytest

from baseline.engine import BaselineEngine
from harness.engines.base import engine_class
from phases.phase1.engine import Phase1Engine, row_block


def test_registered_as_phase1():
    assert engine_class("phase1") is Phase1Engine
    assert issubclass(Phase1Engine, BaselineEngine)
    assert (Phase1Engine.name, Phase1Engine.phase) == ("phase1", 1)


def test_overrides_only_norm_and_attention():
    overridden = {name for name, value in vars(Phase1Engine).items()
                  if inspect.isfunction(value) and hasattr(BaselineEngine, name)}
    assert overridden == {"setup_device", "norm", "attention_block"}
    for inherited in ("matmul", "mlp", "device_weight", "moe_block", "conv_block", "embed", "forward"):
        assert getattr(Phase1Engine, inherited) is getattr(BaselineEngine, inherited)


@pytest.mark.parametrize("width,cap,want", [(1, 256, 32), (16, 256, 32), (33, 256, 64), (64, 256, 64),
                                             (2048, 256, 256), (512, 128, 128), (100, 128, 128)])
def test_row_block_is_whole_warps(width, cap, want):
    assert row_block(width, cap) == want
