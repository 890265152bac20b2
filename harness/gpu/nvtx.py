"""NVTX ranges for Nsight Systems timelines: `with nvtx.range("layer 3"):`. A no-op when the
`nvtx` package is missing, so engines can annotate unconditionally."""
from __future__ import annotations

import contextlib

try:
    import nvtx as _nvtx
except ImportError:  # profiling annotations are optional
    _nvtx = None

DOMAIN = "lfm2"


@contextlib.contextmanager
def range(name: str):  # noqa: A001 - mirrors nvtx's own vocabulary
    if _nvtx is None:
        yield
        return
    _nvtx.push_range(name, domain=DOMAIN)
    try:
        yield
    finally:
        _nvtx.pop_range(domain=DOMAIN)


nvtx_range = range  # for modules that keep the builtin `range` in scope
enabled = _nvtx is not None
