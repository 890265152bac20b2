"""Phase 3: phase 2 plus a fused ShortConv (plan 2.1) and a GPU embedding lookup (plan 2.3).

| method      | what changes against phase 2                                                   |
|-------------|--------------------------------------------------------------------------------|
| conv_block  | in_proj GEMM -> ONE kernel (split B|C|x, B*x, causal depthwise conv, C*, no     |
|             | transpose) -> out_proj GEMM, all on the GPU; the block input goes up and its    |
|             | output comes down, nothing in between (was: BCx down, numpy conv, y up)         |
| embed       | ids checked on the host, uploaded as int32, rows gathered by a kernel from the  |
|             | table given by device_weight (uploaded per forward until phase 4 keeps it)      |
Everything else is phase 2's. The work lives in conv_embed.FusedConvAndEmbedding (device
functions conv_dev / embed_dev and their host wrappers); kernels in kernels.cu beside this file.
"""
from __future__ import annotations

from phases.phase2.engine import Phase2Engine

from .conv_embed import FusedConvAndEmbedding


class Phase3Engine(FusedConvAndEmbedding, Phase2Engine):
    name = "phase3"
    phase = 3
