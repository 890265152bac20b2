"""One CUDA context per process, shared by PyCUDA and torch.

Both PyCUDA (driver API) and torch (runtime API) end up on the device's *primary* context when
we retain it and make it current: so buffers, streams and kernels of either library are usable
by the other, and there is only one context's worth of device memory overhead per process.

The device is chosen from the MPI local rank, round-robin over the visible GPUs, unless an
explicit index is given. Everything that can go wrong before the first kernel runs raises
`GPUUnavailable` with a message saying what to do.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

# Launchers' names for "my rank on this node" (Open MPI, MPICH/Intel MPI, PMI, torchrun).
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "LOCAL_RANK")

INSTALL_HINT = ("install the gpu extra: pip install '.[gpu]' (on the project's GPU machine, "
                "`source .devwheels/setup.sh` installs the prebuilt PyCUDA wheel)")


class GPUUnavailable(RuntimeError):
    """No usable GPU: PyCUDA missing, no driver/device, bad device index, or not enough memory."""


def import_driver():
    """pycuda.driver, or GPUUnavailable saying how to install it."""
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        if "libcuda" in str(e):  # PyCUDA is there, the NVIDIA driver library is not
            raise GPUUnavailable(f"no NVIDIA driver ({e}); run on a machine with an NVIDIA GPU and "
                                 "driver (`nvidia-smi` should list it)") from None
        raise GPUUnavailable(f"PyCUDA is not importable ({e}); {INSTALL_HINT}") from None
    return cuda


def local_rank() -> int:
    for var in LOCAL_RANK_VARS:
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise GPUUnavailable(f"{var}={value!r} is not an integer local rank") from None
    return 0


def parse_device(device) -> int | None:
    """0, 3, "cuda:1", "1" -> an index; None, "auto" or "cuda" -> None (pick by local rank)."""
    if device is None or isinstance(device, bool):
        return None
    if isinstance(device, int):
        return device
    text = str(device).strip().lower()
    if text in ("auto", "cuda", "gpu"):
        return None
    if text.startswith("cuda:"):
        text = text[5:]
    try:
        return int(text)
    except ValueError:
        raise GPUUnavailable(f"device {device!r} is not understood; give an index like 0 or 'cuda:0', "
                             "or 'auto' to pick by MPI local rank") from None


class GPUContext:
    """The process's CUDA context: device facts, memory queries, synchronisation."""

    def __init__(self, cuda, index: int):
        self.cuda = cuda
        self.index = index
        self.device = cuda.Device(index)
        self.name = self.device.name()
        major, minor = self.device.compute_capability()
        self.compute_capability = (major, minor)
        self.arch = f"sm_{major}{minor}"
        self.total_memory = self.device.total_memory()
        self.multiprocessors = self.device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        self.ctx = self.device.retain_primary_context()
        self.ctx.push()
        self._users = 0
        self._sync_torch()

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index}"

    def _sync_torch(self) -> None:
        """If torch already initialised CUDA, point it at our device so both use one context.
        (When torch initialises later, it finds our primary context current on this thread.)"""
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.set_device(self.index)

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes on the device now."""
        return self.cuda.mem_get_info()

    def ensure_free(self, nbytes: int, what: str = "this allocation") -> None:
        free, total = self.mem_info()
        if nbytes > free:
            raise GPUUnavailable(out_of_memory_message(nbytes, free, total, what, self))

    def synchronize(self) -> None:
        self.ctx.synchronize()

    def __repr__(self):
        return f"GPUContext({self.index}: {self.name}, {self.arch}, {self.total_memory / 2**30:.1f} GiB)"


def out_of_memory_message(wanted: int, free: int, total: int, what: str, gpu=None) -> str:
    where = f" on GPU {gpu.index} ({gpu.name})" if gpu is not None else ""
    return (f"not enough GPU memory for {what}{where}: wanted {wanted:,} bytes, {free:,} free of {total:,}. "
            "Use a smaller batch or model, free other processes on this GPU, or spread ranks over more GPUs.")


_lock = threading.Lock()
_context: GPUContext | None = None


def get_context(device=None) -> GPUContext:
    """The process-wide context on `device` (index, "cuda:N", or None/"auto" = local rank
    round-robin over visible GPUs), created and made current on first use."""
    global _context
    wanted = parse_device(device)
    with _lock:
        if _context is not None:
            if wanted is not None and wanted != _context.index:
                raise GPUUnavailable(f"this process already uses GPU {_context.index}; one CUDA context per "
                                     f"process, so GPU {wanted} cannot be used too (run one rank per GPU)")
            _context._users += 1
            return _context
        cuda = import_driver()
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as e:
            raise GPUUnavailable(f"the CUDA driver could not start ({e}); is this a machine with an NVIDIA "
                                 "GPU and driver? (`nvidia-smi` should list it)") from None
        if count == 0:
            raise GPUUnavailable("no CUDA GPU is visible (check `nvidia-smi` and CUDA_VISIBLE_DEVICES="
                                 f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
        index = local_rank() % count if wanted is None else wanted
        if not 0 <= index < count:
            raise GPUUnavailable(f"GPU {index} does not exist: {count} visible (indices 0..{count - 1}; "
                                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
        try:
            _context = GPUContext(cuda, index)
        except cuda.Error as e:
            raise GPUUnavailable(f"could not open a context on GPU {index}: {e}") from None
        _context._users = 1
        atexit.register(_release_at_exit)
        return _context


def release_context(ctx: GPUContext) -> None:
    """An engine is done with the context. It stays current until the process exits, because
    PyCUDA objects other code still holds need it to free themselves."""
    with _lock:
        ctx._users = max(0, ctx._users - 1)


def _release_at_exit() -> None:
    global _context
    if _context is None:
        return
    try:
        _context.ctx.pop()
        from pycuda.tools import clear_context_caches
        clear_context_caches()
    except Exception:  # interpreter teardown: nothing useful left to report
        pass
    _context = None


def gpu_unavailable_reason(device=None) -> str | None:
    """None when a GPU context can be had, else why not (for skipping GPU tests)."""
    try:
        ctx = get_context(device)
    except GPUUnavailable as e:
        return str(e)
    release_context(ctx)
    return None
