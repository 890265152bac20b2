"""Phase 4's workspace allocator and residency plan, on the CPU (fake device allocations)."""
import math

import pytest

from harness.checkpoints.base import expected_shapes
from harness.config import get_preset
from phases.phase4.resident import plan_residency
from phases.phase4.workspace import ALIGN, Workspace


class FakeTransfers:
    """Stands in for harness.gpu.Transfers: integer 'pointers', allocation counting."""

    def __init__(self):
        self.allocs, self.live, self.next = 0, {}, 1 << 20

    def alloc(self, nbytes, what=""):
        self.allocs += 1
        ptr, self.next = self.next, self.next + nbytes + (1 << 20)
        self.live[ptr] = nbytes
        return ptr

    def free(self, ptr):
        del self.live[int(ptr)]


def test_nested_alloc_free_reuses_memory_without_allocating():
    t = FakeTransfers()
    ws = Workspace(t, 10 * ALIGN)
    a = ws.alloc(100)
    b = ws.alloc(ALIGN + 1)
    assert int(b) - int(a) == ALIGN  # aligned bump
    ws.free(b)
    c = ws.alloc(10)
    assert int(c) == int(b)  # freed top block reused at once
    ws.free(c)
    ws.free(a)
    assert ws.top == 0 and t.allocs == 1


def test_out_of_order_free_is_reclaimed_when_the_top_goes():
    ws = Workspace(FakeTransfers(), 10 * ALIGN)
    a, b, c = ws.alloc(1), ws.alloc(1), ws.alloc(1)
    ws.free(a)
    assert ws.top == 3 * ALIGN  # a is below live blocks: not reclaimed yet
    ws.free(c)
    assert ws.top == 2 * ALIGN
    ws.free(b)
    assert ws.top == 0
    with pytest.raises(ValueError):
        ws.free(b)  # double free is an error, not silent corruption


def test_overflow_falls_back_then_reset_grows_to_the_peak():
    t = FakeTransfers()
    ws = Workspace(t, 2 * ALIGN)
    a = ws.alloc(ALIGN)
    big = ws.alloc(4 * ALIGN)  # does not fit: a real (counted) allocation
    assert t.allocs == 2
    ws.free(big)
    ws.free(a)
    ws.reset()
    assert ws.capacity >= 5 * ALIGN
    before = t.allocs
    a = ws.alloc(ALIGN)
    big = ws.alloc(4 * ALIGN)
    assert t.allocs == before  # the second forward allocates nothing


def test_residency_keeps_dense_weights_first_then_experts_in_order():
    shapes = expected_shapes(get_preset("tiny"))
    every = sum(4 * math.prod(s) for s in shapes.values())
    resident, streamed = plan_residency(shapes, every)
    assert streamed == [] and len(resident) == len(shapes)
    non_expert = sum(4 * math.prod(s) for n, s in shapes.items() if ".experts." not in n)
    resident, streamed = plan_residency(shapes, non_expert + 1)
    assert all(".experts." not in n for n in resident)
    assert streamed and all(".experts." in n for n in streamed)


def test_one_forward_that_overflows_many_times_sizes_the_workspace():
    """A batched forward needing far more than the initial size: after one reset, the next
    identical forward allocates nothing (the overflow blocks count toward the peak)."""
    t = FakeTransfers()
    ws = Workspace(t, ALIGN)

    def forward():
        live = [ws.alloc(8 * ALIGN) for _ in range(5)]  # five large buffers live at once
        for p in reversed(live):
            ws.free(p)

    forward()
    ws.reset()
    before = t.allocs
    forward()
    assert t.allocs == before
