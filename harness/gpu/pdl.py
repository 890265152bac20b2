"""Programmatic dependent launch (PDL, sm_90+): a kernel launched with it may start while the
kernel before it on the stream is still running, once every block of that one has executed
`griddepcontrol.launch_dependents` (or exited). The new kernel must execute `griddepcontrol.wait`
before it touches anything the earlier kernels write; what it does before (reading weights,
which nothing writes) overlaps the earlier kernel's tail, and its own launch latency is hidden.
CUDA graphs keep the overlap (captured as programmatic edges).

PyCUDA has no launch attributes, so this module launches through the driver's cuLaunchKernelEx
via ctypes, on the same primary context and stream: `PdlModule(cubin)` loads the cubin a second
time (cuModuleLoadData) and `launch_pdl(function, grid, block, args, stream)` takes the numpy
scalars the PyCUDA launchers take (np.uintp pointers, np.int32, np.float32).

Kernels launched this way must follow the rule of optimized/common.cuh's pdl_wait/pdl_trigger:
wait before reading or writing activations, trigger only after the wait (so that at a kernel's
start every kernel but the one right before it has finished).
"""
from __future__ import annotations

import ctypes

import numpy as np

CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID in cuda.h
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute in cuda.h
DEFAULT_DYNAMIC_SMEM = 48 * 1024  # what a function may take before it is allowed more


class _Attribute(ctypes.Structure):  # CUlaunchAttribute: id, pad to 8, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("rest", ctypes.c_char * 60)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attribute)), ("numAttrs", ctypes.c_uint)]


_lib = None
_ATTR = None


def _driver():
    global _lib, _ATTR
    if _lib is None:
        _lib = ctypes.CDLL("libcuda.so.1")
        _lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                          ctypes.c_void_p]
        _lib.cuFuncSetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        _ATTR = _Attribute(id=CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
    return _lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(rc, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {name.value.decode() if name.value else rc}")


class PdlModule:
    """A cubin loaded through the driver API; `function(name)` is its CUfunction handle (a function of
    its own: attributes set on PyCUDA's copy, such as its dynamic shared memory, do not carry over)."""

    def __init__(self, cubin: bytes):
        self._cubin = ctypes.create_string_buffer(cubin)  # alive as long as the module
        self.handle = ctypes.c_void_p()
        _check(_driver().cuModuleLoadData(ctypes.byref(self.handle), self._cubin), "cuModuleLoadData")
        self._functions: dict[str, ctypes.c_void_p] = {}

    def function(self, name: str) -> ctypes.c_void_p:
        if name not in self._functions:
            fn = ctypes.c_void_p()
            _check(_driver().cuModuleGetFunction(ctypes.byref(fn), self.handle, name.encode()),
                   f"cuModuleGetFunction({name})")
            self._functions[name] = fn
        return self._functions[name]


_smem_allowed: dict[int, int] = {}  # CUfunction handle -> dynamic shared memory it may take


def _c_value(a):
    if isinstance(a, (np.uintp, np.uint64)):
        return ctypes.c_uint64(int(a))
    if isinstance(a, np.int32):
        return ctypes.c_int32(int(a))
    if isinstance(a, np.float32):
        return ctypes.c_float(float(a))
    raise TypeError(f"launch_pdl takes np.uintp pointers, np.int32 and np.float32 arguments, got {type(a).__name__}")


def launch_pdl(function: ctypes.c_void_p, grid, block, args, stream_handle: int, shared: int = 0) -> None:
    """Launch `function` on `stream_handle` with the programmatic-serialization attribute; past 48 KB of
    dynamic shared memory the function is first allowed `shared` bytes (once per function and size)."""
    lib = _driver()
    if shared > _smem_allowed.get(function.value, DEFAULT_DYNAMIC_SMEM):
        _check(lib.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared),
               "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
        _smem_allowed[function.value] = shared
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    values = [_c_value(a) for a in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    cfg = _Config(*grid, *block, shared, ctypes.c_void_p(stream_handle), ctypes.pointer(_ATTR), 1)
    _check(lib.cuLaunchKernelEx(ctypes.byref(cfg), function, params, None), "cuLaunchKernelEx")
