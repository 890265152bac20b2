"""Shared fixtures.

`gpu`: the process's GPU context (harness.gpu); skips the test when PyCUDA or a GPU is missing.
Tests that use it should also carry `@pytest.mark.gpu`; everything under tests/gpu/ gets that
mark automatically.
`tiny_ckpt`: the in-memory synthetic checkpoint of the "tiny" preset, seed 0.
`rng`: a numpy Generator seeded from the test's name: fresh random data per test, reproducible.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

GPU_DIR = Path(__file__).parent / "gpu"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if GPU_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def gpu():
    from harness.gpu import get_context, gpu_unavailable_reason
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GPU: {reason}")
    return get_context()


@pytest.fixture(scope="session")
def tiny_ckpt():
    from harness.config import get_preset
    from harness.checkpoints.synthetic import synthetic_checkpoint
    return synthetic_checkpoint(get_preset("tiny"), seed=0)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))
