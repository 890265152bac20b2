"""Phase 2: phase 1 plus MoE expert batching (plan 1.1; docs/roadmap.md).

Phase 0/1 run each (token, expert) pair through its own expert MLP, uploading that expert's
three weight matrices (44 MB in fp32 at the real size) for every pair. Phase 2 routes the whole
forward's tokens on the GPU, groups the (token, slot) pairs by expert, runs each expert once
over all its rows and combines the weighted outputs back into token order on the GPU
(expert_batching.py). Expert weights still cross PCIe on every use, so the gain measured
against phase 1 is batching's alone: distinct experts x 44 MB per layer instead of pairs x 44 MB.

| method      | what changes from phase 1                                                  |
|-------------|----------------------------------------------------------------------------|
| route       | router logits, sigmoid, biased top-k and weights on the GPU (route_dev)    |
| moe_block   | host wrapper around moe_dev: routing, grouping, one run per expert, combine |
"""
from __future__ import annotations

from phases.phase1.engine import Phase1Engine

from .expert_batching import ExpertBatching


class Phase2Engine(ExpertBatching, Phase1Engine):
    name = "phase2"
    phase = 2
