"""Phase 5 on the CPU: registered, built on phase 4, and the layer math is phases 1-4's unchanged
(batching and the MPI work change how a forward is driven, not what a layer computes)."""
from __future__ import annotations

from harness.engines.base import engine_class
from phases.phase4.engine import Phase4Engine
from phases.phase5.engine import Phase5Engine


def test_registered_as_phase5_on_phase4():
    assert engine_class("phase5") is Phase5Engine
    assert issubclass(Phase5Engine, Phase4Engine)
    assert (Phase5Engine.name, Phase5Engine.phase, Phase5Engine.output_collective) == ("phase5", 5, "gather")


def test_layer_math_is_inherited_unchanged():
    for inherited in ("layer_dev", "attention_dev", "conv_dev", "dense_dev", "norm_dev", "route_dev", "group_dev",
                      "experts_dev", "head_dev", "gemm", "embedding_gather", "device_weight", "dalloc", "dfree"):
        assert getattr(Phase5Engine, inherited) is getattr(Phase4Engine, inherited), inherited


def test_what_phase5_changes():
    own = {name for cls in Phase5Engine.__mro__[:Phase5Engine.__mro__.index(Phase4Engine)]
           for name, value in vars(cls).items() if callable(value) and hasattr(Phase4Engine, name)}
    # forward/io (batching), moe_dev (expert parallel, phase 2's path when G = 1), loading, setup, close
    assert own == {"__init__", "setup_device", "load_weights", "io_buffers", "forward", "moe_dev", "close"}
