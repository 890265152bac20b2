"""Compile the `.cu` files that live beside each engine, cache the cubins, launch kernels checked.

Kernels are declared `extern "C" __global__` so they keep their names. A cubin is built for the
device's own architecture (sm_90 on the H100) with `nvcc --cubin` and cached on disk, keyed by a
hash of the source, the headers beside it, the arch, the options and the nvcc version; a second
run loads it without calling nvcc. Cache folder: $LFM2_CUBIN_CACHE, else
$XDG_CACHE_HOME/lfm2-infer/cubin, else ~/.cache/lfm2-infer/cubin.

`compile_cubin` needs only nvcc (it runs on CPU-only machines too); `load_module` and `launch`
need a GPU context.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_OPTIONS = ("-O3", "-lineinfo")  # lineinfo: source lines in profilers, no speed cost
HEADER_SUFFIXES = (".cuh", ".h")
# Set LFM2_SYNC_LAUNCHES=1 to synchronise after every launch, so an asynchronous fault is
# reported against the kernel that caused it (debugging; slows down pipelined engines).
SYNC_ALL = os.environ.get("LFM2_SYNC_LAUNCHES", "") not in ("", "0")


class KernelCompileError(RuntimeError):
    """nvcc is missing or rejected a kernel source."""


class KernelError(RuntimeError):
    """A kernel launch (or the kernel itself) failed; the message names the kernel and shapes."""


def cache_dir() -> Path:
    if os.environ.get("LFM2_CUBIN_CACHE"):
        return Path(os.environ["LFM2_CUBIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lfm2-infer" / "cubin"


def find_nvcc() -> str:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    raise KernelCompileError("nvcc not found: install the CUDA toolkit and put its bin/ on PATH "
                             "(or set CUDA_HOME)")


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout


def _headers(folders) -> list[Path]:
    found = []
    for folder in folders:
        found += sorted(p for p in Path(folder).iterdir() if p.suffix in HEADER_SUFFIXES)
    return found


def compile_cubin(cu_path, arch: str, options=DEFAULT_OPTIONS, include_dirs=(), use_cache: bool = True) -> bytes:
    """The cubin of `cu_path` for `arch` (e.g. "sm_90"), from the disk cache when it is there."""
    cu_path = Path(cu_path)
    if not cu_path.is_file():
        raise KernelCompileError(f"no kernel source at {cu_path}")
    nvcc = find_nvcc()
    folders = [cu_path.parent, *map(Path, include_dirs)]
    key = hashlib.sha256()
    for part in (cu_path.read_bytes(), arch.encode(), " ".join(options).encode(), nvcc_version(nvcc).encode()):
        key.update(part)
        key.update(b"\0")
    for header in _headers(folders):  # an edited header must invalidate the cubin too
        key.update(header.name.encode())
        key.update(header.read_bytes())
    cached = cache_dir() / f"{cu_path.stem}-{arch}-{key.hexdigest()[:32]}.cubin"
    if use_cache and cached.exists():
        return cached.read_bytes()

    with tempfile.TemporaryDirectory(prefix="lfm2-nvcc-") as tmp:
        out = Path(tmp) / "kernel.cubin"
        cmd = [nvcc, "--cubin", f"-arch={arch}", *options, *(f"-I{f}" for f in folders), "-o", str(out), str(cu_path)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not out.exists():
            raise KernelCompileError(f"nvcc failed on {cu_path} (exit {run.returncode}):\n"
                                     f"{' '.join(cmd)}\n{run.stderr or run.stdout}")
        cubin = out.read_bytes()
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")  # concurrent ranks: no torn files
        partial.write_bytes(cubin)
        os.replace(partial, cached)
    return cubin


class Kernel:
    """A kernel function and the name it was looked up by (for error messages); `module` is the
    KernelModule it came from (its cubin serves launches with PDL, harness.gpu.pdl)."""

    def __init__(self, name: str, function, source: Path, module=None):
        self.name = name
        self.function = function
        self.source = source
        self.module = module
        self.pdl_function = None  # the CUfunction of the same kernel, loaded through ctypes on first use

    def __repr__(self):
        return f"Kernel({self.name} from {self.source.name})"


class KernelModule:
    """A loaded cubin; `kernel(name)` fetches (and remembers) a function."""

    def __init__(self, module, source: Path, cubin: bytes | None = None):
        self.module = module
        self.source = source
        self.cubin = cubin
        self.pdl_module = None  # harness.gpu.pdl.PdlModule of the same cubin, made on the first PDL launch
        self._kernels: dict[str, Kernel] = {}

    def kernel(self, name: str) -> Kernel:
        if name not in self._kernels:
            from harness.gpu.context import import_driver
            cuda = import_driver()
            try:
                fn = self.module.get_function(name)
            except cuda.Error:
                raise KernelCompileError(f"no kernel named {name!r} in {self.source}; declare it "
                                         '`extern "C" __global__` so its name is not mangled') from None
            self._kernels[name] = Kernel(name, fn, self.source, self)
        return self._kernels[name]


def load_module(cu_path, ctx=None, options=DEFAULT_OPTIONS, include_dirs=(), arch: str | None = None) -> KernelModule:
    """Compile (or fetch from the cache) and load `cu_path` for the current GPU's architecture, or
    for `arch` (e.g. "sm_90a", the H100's arch-specific target that wgmma needs)."""
    from harness.gpu.context import get_context, import_driver
    ctx = ctx or get_context()
    arch = arch or ctx.arch
    cubin = compile_cubin(cu_path, arch, options, include_dirs)
    cuda = import_driver()
    try:
        module = cuda.module_from_buffer(cubin)
    except cuda.Error as e:
        raise KernelCompileError(f"the driver could not load the cubin of {cu_path} for {arch}: {e}") from None
    return KernelModule(module, Path(cu_path), cubin)


def _dim3(dims, what: str, kernel: Kernel) -> tuple[int, int, int]:
    dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise KernelError(f"kernel {kernel.name}: {what} {dims} must be 1 to 3 positive sizes")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def launch(kernel: Kernel, grid, block, args, shapes=None, shared: int = 0, stream=None, sync: bool = False,
           pdl: bool = False):
    """Launch `kernel` on `grid` x `block` with `args` (numpy scalars such as np.int32(n), device
    allocations, or objects with __cuda_array_interface__ such as torch CUDA tensors).

    pdl: launch with programmatic dependent launch on `stream` (harness.gpu.pdl; the kernel must
    wait with griddepcontrol before touching what earlier kernels write; args numpy scalars only).

    Errors from the launch, and with `sync` (or LFM2_SYNC_LAUNCHES=1) from the kernel's run, are
    re-raised as KernelError naming the kernel, the launch geometry and `shapes` (a dict you pass
    to describe the operands, e.g. {"A": (M, K), "B": (N, K)})."""
    grid3, block3 = _dim3(grid, "grid", kernel), _dim3(block, "block", kernel)
    if block3[0] * block3[1] * block3[2] > 1024:
        raise KernelError(f"kernel {kernel.name}: block {block3} has more than 1024 threads")
    if grid3[1] > 65535 or grid3[2] > 65535 or grid3[0] > 2**31 - 1:
        raise KernelError(f"kernel {kernel.name}: grid {grid3} exceeds the CUDA limits (x < 2^31, y,z <= 65535)")
    for i, a in enumerate(args):
        if isinstance(a, (int, float)) and not isinstance(a, np.generic):
            raise KernelError(f"kernel {kernel.name}: argument {i} is a Python {type(a).__name__}; pass a sized "
                              "numpy scalar (np.int32, np.float32, ...) so its C type is unambiguous")
    from harness.gpu.context import import_driver
    cuda = import_driver()
    try:
        if pdl and stream is not None:
            _launch_pdl(kernel, grid3, block3, args, shared, stream)
        else:
            kernel.function(*args, grid=grid3, block=block3, shared=shared, stream=stream)
        if sync or SYNC_ALL:
            cuda.Context.synchronize()
    except (cuda.Error, TypeError, RuntimeError) as e:
        raise KernelError(f"kernel {kernel.name} ({kernel.source.name}) failed: {e}; grid={grid3} block={block3} "
                          f"shared={shared} shapes={shapes}") from e


def _launch_pdl(kernel: Kernel, grid3, block3, args, shared: int, stream) -> None:
    from harness.gpu.pdl import PdlModule, launch_pdl
    if kernel.pdl_function is None:
        mod = kernel.module
        if mod is None or mod.cubin is None:
            raise RuntimeError(f"kernel {kernel.name} has no cubin to load for a PDL launch")
        if mod.pdl_module is None:
            mod.pdl_module = PdlModule(mod.cubin)
        kernel.pdl_function = mod.pdl_module.function(kernel.name)
    launch_pdl(kernel.pdl_function, grid3, block3, args, stream.handle, shared)
