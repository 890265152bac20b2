"""GPU runtime shared by every engine: one CUDA context per process (context), kernels compiled
from `.cu` files and launched with checks (compile), counted copies and allocations (transfers),
NVTX ranges (nvtx), pointers into buffers as kernel arguments (pointers). Importing this package does not import PyCUDA; the first context does."""
from harness.gpu.compile import (Kernel, KernelCompileError, KernelError, KernelModule, cache_dir, compile_cubin,
                                 launch, load_module)
from harness.gpu.context import (GPUContext, GPUUnavailable, get_context, gpu_unavailable_reason, local_rank,
                                 release_context)
from harness.gpu.nvtx import nvtx_range
from harness.gpu.pointers import NULL, offset_ptr
from harness.gpu.transfers import Transfers

__all__ = [
    "GPUContext", "GPUUnavailable", "get_context", "gpu_unavailable_reason", "local_rank", "release_context",
    "Kernel", "KernelModule", "KernelCompileError", "KernelError", "cache_dir", "compile_cubin", "launch",
    "load_module", "Transfers", "nvtx_range", "NULL", "offset_ptr",
]
