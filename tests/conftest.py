"""Shared fixtures.

`gpu`: the process's GPU context (harness.gpu); skips the test when PyCUDA or a GPU is missing.
Tests that use it should also carry `@pytest.mark.gpu`; everything under tests/gpu/ gets that
mark automatically.
`tiny_ckpt`: the in-memory synthetic checkpoint of the "tiny" preset, seed 0.
`rng`: a numpy Generator seeded from the test's name: fresh random data per test, reproducible.
Tests marked `mpi` (they launch a real mpiexec) skip where no mpiexec or mpirun is on PATH.
On a machine without a GPU the GPU tests skip for one reason; their skip lines are folded into
one ("SKIPPED [N] tests/conftest.py: no GPU: ...") so the summary shows that, and why, at a glance.
"""
from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

GPU_DIR = Path(__file__).parent / "gpu"


GPU_SKIP_PREFIX = "no GPU: "  # the `gpu` fixture's skip reason starts with it


def pytest_collection_modifyitems(config, items):
    no_mpiexec = shutil.which("mpiexec") is None and shutil.which("mpirun") is None
    for item in items:
        if GPU_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
        if no_mpiexec and item.get_closest_marker("mpi"):
            item.add_marker(pytest.mark.skip(reason="no mpiexec on PATH (pip install mpich)"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip for want of a GPU is reported at one place (this file, no line), so pytest's
    summary folds the hundreds of them into a single line with their count."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        reason = str(report.longrepr[2])
        if reason.removeprefix("Skipped: ").startswith(GPU_SKIP_PREFIX):
            report.longrepr = (__file__, None, reason)
    return report


@pytest.fixture(scope="session")
def gpu():
    from harness.gpu import get_context, gpu_unavailable_reason
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(GPU_SKIP_PREFIX + reason)
    return get_context()


@pytest.fixture(scope="session")
def tiny_ckpt():
    from harness.config import get_preset
    from harness.checkpoints.synthetic import synthetic_checkpoint
    return synthetic_checkpoint(get_preset("tiny"), seed=0)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))
