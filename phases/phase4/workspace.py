"""One pre-allocated device workspace with offset-based allocation (plan 2.2).

A stack allocator over a single cudaMalloc: `alloc` bumps an offset, `free` marks a block and pops
every freed block off the top, so nested alloc/free (the way every block of the engine uses its
intermediates) reuses memory at once and out-of-order frees are reclaimed as soon as the blocks
above them go. Nothing here calls cudaMalloc after `reserve`, so the timed region makes no device
allocation; the engine's counters prove it.

A request that does not fit is served by a real allocation (counted) and remembered: the next
`reset` (between forwards, outside a kernel's lifetime) grows the workspace to the peak seen, so the
warm-up forward sizes it and the timed forwards never allocate.
"""
from __future__ import annotations

import numpy as np

ALIGN = 256  # bytes: keeps every buffer aligned for vector loads


class Workspace:
    def __init__(self, transfers, nbytes: int):
        self.transfers = transfers
        self.capacity = 0
        self.base = None
        self.top = 0
        self.peak = 0
        self._blocks: list[list] = []  # [offset, size, freed] in allocation order
        self._overflow: dict[int, object] = {}  # pointer -> real allocation (when full)
        self._overflow_bytes = 0  # live bytes of those: they count toward the peak too
        self.reserve(nbytes)

    def reserve(self, nbytes: int) -> None:
        """(Re)allocate the backing buffer to at least `nbytes`; only when no block is live."""
        nbytes = int(-(-max(nbytes, ALIGN) // ALIGN) * ALIGN)
        if nbytes <= self.capacity:
            return
        if self._blocks:
            raise RuntimeError("cannot grow the workspace while buffers in it are live")
        if self.base is not None:
            self.transfers.free(self.base)
        self.base = self.transfers.alloc(nbytes, "the workspace")
        self.capacity = nbytes

    def alloc(self, nbytes: int, what: str = "a workspace buffer"):
        size = int(-(-int(nbytes) // ALIGN) * ALIGN)
        # Overflow blocks count toward the peak: otherwise, once `top` stops growing, one forward
        # would record only part of what it needed and the next would allocate again.
        self.peak = max(self.peak, self.top + self._overflow_bytes + size)
        if self.top + size > self.capacity:
            ptr = self.transfers.alloc(size, f"{what} (workspace full: {self.capacity} B)")
            self._overflow[int(ptr)] = (ptr, size)
            self._overflow_bytes += size
            return ptr
        offset = self.top
        self._blocks.append([offset, size, False])
        self.top += size
        return np.uintp(int(self.base) + offset)

    def free(self, ptr) -> None:
        real = self._overflow.pop(int(ptr), None)
        if real is not None:
            self.transfers.free(real[0])
            self._overflow_bytes -= real[1]
            return
        offset = int(ptr) - int(self.base)
        for block in reversed(self._blocks):
            if block[0] == offset and not block[2]:
                block[2] = True
                break
        else:
            raise ValueError(f"pointer {int(ptr):#x} is not a live workspace buffer")
        while self._blocks and self._blocks[-1][2]:
            self.top = self._blocks.pop()[0]

    def reset(self) -> None:
        """Drop every block (between forwards) and grow to the peak the last forward needed."""
        for real, _ in self._overflow.values():
            self.transfers.free(real)
        self._overflow.clear()
        self._overflow_bytes = 0
        self._blocks.clear()
        self.top = 0
        if self.peak > self.capacity:
            self.reserve(int(self.peak * 1.1))
