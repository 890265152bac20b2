"""Overlap producing the next item with consuming the current one (generation with disk writes).

torch ops and file writes release the GIL, so one worker thread makes tensor k+1 while the
caller writes tensor k. At most two items are alive at once: the one being consumed and the
one being made.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
    """Yield (item, fn(item)) in order, computing fn(next item) in the background."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(fn, items[0])
        for i, item in enumerate(items):
            result = future.result()
            future = pool.submit(fn, items[i + 1]) if i + 1 < len(items) else None
            yield item, result
            del result
