"""Raw device pointers as kernel arguments: PyCUDA passes a numpy integer as a pointer, so a
pointer into the middle of a buffer is its base plus a byte offset."""
from __future__ import annotations

import numpy as np

NULL = np.intp(0)  # a null device pointer argument (a kernel's "none given")


def offset_ptr(d_buf, nbytes: int) -> np.intp:
    """A device pointer `nbytes` into `d_buf` (a DeviceAllocation or an integer address)."""
    return np.intp(int(d_buf) + int(nbytes))
