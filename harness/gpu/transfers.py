"""Every host<->device copy and every device allocation an engine makes goes through here, so the
engine's `Counters` (harness.engines.base) say exactly how many bytes crossed PCIe and how often memory
was allocated.

Counting rules:
- h2d_bytes / d2h_bytes count every copy; *_pinned_bytes the part whose host side was page-locked
  (detected from the numpy array's owner, or forced with `pinned=`).
- weight_h2d_bytes counts the uploads marked `weight=True` (model weights). A `tag` also adds the
  bytes to counters.extra["<tag>_h2d_bytes"] (e.g. tag="expert" for expert weights).
- h2d_seconds / d2h_seconds are host wall time of the synchronous copies. Asynchronous copies add
  bytes and counts only: their time overlaps other work by design.
- device_allocs / device_alloc_bytes count allocations; extra["device_peak_bytes"] is the largest
  amount this Transfers had live at once since the counters were last reset.
"""
from __future__ import annotations

import time

import numpy as np

from harness.gpu.context import GPUUnavailable, get_context, import_driver, out_of_memory_message


def _pinned_types(cuda) -> tuple:
    names = ("PagelockedHostAllocation", "RegisteredHostMemory", "PooledHostAllocation")
    return tuple(getattr(cuda, n) for n in names if hasattr(cuda, n))


class Transfers:
    def __init__(self, counters, ctx=None):
        self.counters = counters
        self.cuda = import_driver()
        self.ctx = ctx or get_context()
        self._pinned = _pinned_types(self.cuda)
        self._oom = (getattr(self.cuda, "MemoryError", MemoryError), MemoryError)  # PyCUDA's, and Python's
        self._sizes: dict[int, int] = {}  # live allocations: pointer -> bytes
        self.live_bytes = 0

    # ----- allocation --------------------------------------------------------------------------
    def alloc(self, nbytes: int, what: str = "a device buffer"):
        """A device allocation of `nbytes` (pycuda DeviceAllocation); GPUUnavailable when it does not fit."""
        nbytes = int(nbytes)
        if nbytes <= 0:
            raise ValueError(f"cannot allocate {nbytes} bytes for {what}")
        try:
            ptr = self.cuda.mem_alloc(nbytes)
        except self._oom:
            free, total = self.ctx.mem_info()
            raise GPUUnavailable(out_of_memory_message(nbytes, free, total, what, self.ctx)) from None
        c = self.counters
        c.device_allocs += 1
        c.device_alloc_bytes += nbytes
        self._sizes[int(ptr)] = nbytes
        self.live_bytes += nbytes
        c.extra["device_peak_bytes"] = max(c.extra.get("device_peak_bytes", 0), self.live_bytes)
        return ptr

    def free(self, ptr) -> None:
        self.live_bytes -= self._sizes.pop(int(ptr), 0)
        ptr.free()

    # ----- copies --------------------------------------------------------------------------------
    def is_pinned(self, array: np.ndarray) -> bool:
        """True when the array's memory is page-locked (PyCUDA pagelocked or registered memory)."""
        base = array
        while base is not None:
            if isinstance(base, self._pinned):
                return True
            base = getattr(base, "base", None)
        return False

    @staticmethod
    def _ptr(dev):
        """PyCUDA's copies take a DeviceAllocation or a Python int, not a numpy integer (offset
        pointers into a buffer or a workspace are numpy integers, as kernel arguments need)."""
        return int(dev) if isinstance(dev, np.integer) else dev

    def _check(self, dst, host: np.ndarray, direction: str) -> np.ndarray:
        if not isinstance(host, np.ndarray):
            raise TypeError(f"{direction}: host side must be a numpy array, got {type(host).__name__}")
        if not host.flags.c_contiguous:
            raise ValueError(f"{direction}: host array of shape {host.shape} is not C-contiguous; "
                             "pass np.ascontiguousarray(...) so the copy moves the bytes you expect")
        size = self._sizes.get(int(dst))
        if size is not None and host.nbytes > size:
            raise ValueError(f"{direction}: {host.nbytes} bytes do not fit the {size}-byte device buffer")
        return host

    def _count_h2d(self, host, pinned, weight, tag, seconds):
        c, n = self.counters, host.nbytes
        c.h2d_bytes += n
        c.h2d_copies += 1
        c.h2d_seconds += seconds
        if self.is_pinned(host) if pinned is None else pinned:
            c.h2d_pinned_bytes += n
        if weight:
            c.weight_h2d_bytes += n
        if tag:
            c.extra[f"{tag}_h2d_bytes"] = c.extra.get(f"{tag}_h2d_bytes", 0) + n

    def _count_d2h(self, host, pinned, seconds):
        c, n = self.counters, host.nbytes
        c.d2h_bytes += n
        c.d2h_copies += 1
        c.d2h_seconds += seconds
        if self.is_pinned(host) if pinned is None else pinned:
            c.d2h_pinned_bytes += n

    def htod(self, dst, host: np.ndarray, *, weight: bool = False, tag: str | None = None, pinned=None) -> None:
        """Synchronous host-to-device copy of all of `host` to the start of `dst`."""
        self._check(dst, host, "htod")
        t0 = time.perf_counter()
        self.cuda.memcpy_htod(self._ptr(dst), host)
        self._count_h2d(host, pinned, weight, tag, time.perf_counter() - t0)

    def dtoh(self, host: np.ndarray, src, *, pinned=None) -> None:
        """Synchronous device-to-host copy filling all of `host` from the start of `src`."""
        self._check(src, host, "dtoh")
        t0 = time.perf_counter()
        self.cuda.memcpy_dtoh(host, self._ptr(src))
        self._count_d2h(host, pinned, time.perf_counter() - t0)

    def htod_async(self, dst, host: np.ndarray, stream, *, weight: bool = False, tag: str | None = None,
                   pinned=None) -> None:
        """Asynchronous copy on `stream` (truly asynchronous only from pinned memory). Keep `host`
        alive and unchanged until the stream has passed this point."""
        self._check(dst, host, "htod_async")
        self.cuda.memcpy_htod_async(self._ptr(dst), host, stream)
        self._count_h2d(host, pinned, weight, tag, 0.0)

    def dtoh_async(self, host: np.ndarray, src, stream, *, pinned=None) -> None:
        self._check(src, host, "dtoh_async")
        self.cuda.memcpy_dtoh_async(host, self._ptr(src), stream)
        self._count_d2h(host, pinned, 0.0)

    # ----- conveniences --------------------------------------------------------------------------
    def to_device(self, host: np.ndarray, *, weight: bool = False, tag: str | None = None, what: str = "an upload"):
        """alloc + htod: a new device buffer holding `host`."""
        host = np.ascontiguousarray(host)
        ptr = self.alloc(host.nbytes, what)
        self.htod(ptr, host, weight=weight, tag=tag)
        return ptr

    def from_device(self, src, shape, dtype=np.float32) -> np.ndarray:
        """A new (pageable) host array of `shape` filled from `src`."""
        host = np.empty(shape, dtype)
        self.dtoh(host, src)
        return host

    def pinned_empty(self, shape, dtype=np.float32) -> np.ndarray:
        """A page-locked host array (the copies from it count as pinned)."""
        return self.cuda.pagelocked_empty(shape, dtype)
