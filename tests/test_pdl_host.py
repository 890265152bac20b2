"""CPU tests of harness/gpu/pdl.py's host side: the ctypes mirrors of cuda.h's launch structures
keep the driver's layout (a wrong offset would hand cuLaunchKernelEx garbage), and kernel
arguments are converted by their numpy type or refused with a message."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from harness.gpu.pdl import CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, _Attribute, _c_value, _Config


def test_launch_structures_match_cuda_h():
    # CUlaunchAttribute: enum id, pad to 8, a 64-byte value union
    assert ctypes.sizeof(_Attribute) == 72 and _Attribute.value.offset == 8
    # CUlaunchConfig: 7 unsigned ints, then the stream, the attribute pointer and their count
    assert (_Config.hStream.offset, _Config.attrs.offset, _Config.numAttrs.offset) == (32, 40, 48)
    assert ctypes.sizeof(_Config) == 56
    assert CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION == 6


def test_arguments_keep_their_c_types():
    assert isinstance(_c_value(np.uintp(1 << 40)), ctypes.c_uint64) and _c_value(np.uintp(1 << 40)).value == 1 << 40
    assert _c_value(np.int32(-3)).value == -3
    assert _c_value(np.float32(0.5)).value == 0.5
    with pytest.raises(TypeError, match="np.uintp pointers, np.int32 and np.float32"):
        _c_value(7)
