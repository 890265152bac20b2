"""Phase 2's host-side pieces that need no GPU: constants shared with kernels.cu, launch sizes,
pointer offsets, and the clear error for a top-k the routing kernel cannot hold."""
from __future__ import annotations

import re

import numpy as np
import pytest

from harness.config import get_preset
from harness.checkpoints.synthetic import synthetic_checkpoint
from phases.phase2 import expert_batching as eb


def test_max_topk_agrees_with_the_kernel_source():
    source = eb.KERNELS.read_text()
    assert int(re.search(r"#define MAX_TOPK (\d+)", source).group(1)) == eb.MAX_TOPK
    assert get_preset("lfm2-8b-a1b").num_experts_per_tok <= eb.MAX_TOPK


@pytest.mark.parametrize("pairs,want", [(1, 32), (32, 32), (33, 64), (1000, 1024), (1024, 1024), (65536, 1024)])
def test_group_block_is_whole_warps_and_capped(pairs, want):
    assert eb.group_block(pairs) == want


def test_offset_ptr_is_a_sized_pointer():
    from harness.gpu.pointers import offset_ptr
    p = offset_ptr(0x7F0000001000, 4 * 2048 * 3)
    assert isinstance(p, np.intp) and int(p) == 0x7F0000001000 + 24576


def test_too_large_top_k_is_refused_before_any_gpu_work():
    from phases.phase2.engine import Phase2Engine
    cfg = get_preset("tiny").replace(num_experts=32, num_experts_per_tok=eb.MAX_TOPK + 1, name="too-many")
    with pytest.raises(ValueError, match="MAX_TOPK"):
        Phase2Engine(synthetic_checkpoint(cfg), progress=False)
