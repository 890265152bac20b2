"""A copy/compute timeline from CUDA events: evidence that transfers overlap kernels without a
profiler (Nsight Systems is not on every GPU machine).

An engine opens spans around work it queues on a stream; after the stream work has finished,
`intervals()` turns the events into (name, lane, start_ms, end_ms) relative to the first mark.
Recording an event is asynchronous and cheap, so the timeline can stay on inside a timed region.
"""
from __future__ import annotations

from contextlib import contextmanager


class StreamTimeline:
    def __init__(self, cuda):
        self.cuda = cuda
        self.origin = None
        self._marks: list[tuple[str, str, object, object]] = []

    def reset(self, stream) -> None:
        """Forget earlier spans; time zero is now, on `stream`."""
        self._marks.clear()
        self.origin = self.cuda.Event()
        self.origin.record(stream)

    @contextmanager
    def span(self, name: str, lane: str, stream):
        start = self.cuda.Event()
        start.record(stream)
        yield
        end = self.cuda.Event()
        end.record(stream)
        self._marks.append((name, lane, start, end))

    def intervals(self) -> list[dict]:
        """After the streams have finished: one dict per span, times in ms from reset()."""
        out = []
        for name, lane, start, end in self._marks:
            end.synchronize()
            out.append({"name": name, "lane": lane, "start_ms": self.origin.time_till(start),
                        "end_ms": self.origin.time_till(end)})
        return out


def overlap_fraction(intervals: list[dict], lane: str, other: str) -> float | None:
    """Share of `lane`'s busy time during which `other` was busy too (0..1), None if idle."""
    def merged(name):
        spans = sorted((i["start_ms"], i["end_ms"]) for i in intervals if i["lane"] == name)
        out = []
        for a, b in spans:
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return out

    mine, theirs = merged(lane), merged(other)
    busy = sum(b - a for a, b in mine)
    if busy <= 0:
        return None
    both = sum(max(0.0, min(b, d) - max(a, c)) for a, b in mine for c, d in theirs)
    return both / busy
