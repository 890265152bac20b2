"""Where a rank runs: its GPU (round-robin over the node's), its CPU threads, its share of the samples."""
from __future__ import annotations

import os

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def engine_runs_on_gpu(name: str, cls, device: str) -> bool:
    """--device wins; else the engine class's `device_kind` ('cpu'/'gpu') if it says; else the
    reference stays on the CPU (float64 ground truth), hf (plain torch) takes a GPU when there is
    one, and the PyCUDA engines always want one (select_gpu says clearly when there is none)."""
    if device in ("cpu", "gpu"):
        return device == "gpu"
    kind = getattr(cls, "device_kind", None)
    if kind in ("cpu", "gpu"):
        return kind == "gpu"
    if name == "reference":
        return False
    if name == "hf":
        return gpu_count() > 0
    return True


def gpu_count() -> int:
    """Visible GPUs, as the CUDA driver (PyCUDA) counts them, else as torch does; 0 if neither can."""
    return len(gpu_memory_bytes())


def gpu_memory_bytes() -> list[int]:
    """Each visible GPU's total memory in bytes (the CUDA driver's list, else torch's; [] if neither)."""
    try:
        from harness.gpu.context import import_driver
        cuda = import_driver()
        cuda.init()
        return [cuda.Device(i).total_memory() for i in range(cuda.Device.count())]
    except Exception:
        pass
    try:
        import torch
        return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def select_gpu(local_rank: int) -> int:
    """Ranks map to this node's GPUs round-robin (harness.gpu.context's rule, with the local rank
    MPI itself reports rather than a launcher's environment variable)."""
    n = gpu_count()
    if n == 0:
        raise RuntimeError("this engine needs a GPU and none is visible (check `nvidia-smi`, the driver and "
                           "CUDA_VISIBLE_DEVICES), or run a CPU engine such as `reference`")
    return local_rank % n


def split_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous, as even as possible: the first n % size ranks take one extra sample."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def limit_threads(local_size: int) -> None:
    """Ranks sharing a node share its cores: each gets its share unless the user chose."""
    if any(v in os.environ for v in THREAD_ENV):
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = str(max(1, cores // max(1, local_size)))
    for v in THREAD_ENV:
        os.environ[v] = n
