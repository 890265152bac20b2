"""The copy/compute timeline: overlap arithmetic, and the report's lane plot, on made-up spans."""
import pytest

from harness.gpu.timeline import overlap_fraction
from harness.report.records import VariantRecord
from harness.report.plots import plot_copy_compute_timeline

SPANS = [
    {"name": "ids 0", "lane": "h2d", "start_ms": 0.0, "end_ms": 0.1},
    {"name": "sample 0", "lane": "compute", "start_ms": 0.1, "end_ms": 10.0},
    {"name": "ids 1", "lane": "h2d", "start_ms": 0.2, "end_ms": 0.3},  # during sample 0
    {"name": "sample 1", "lane": "compute", "start_ms": 10.0, "end_ms": 20.0},
    {"name": "logits 0", "lane": "d2h", "start_ms": 10.0, "end_ms": 11.0},  # during sample 1
    {"name": "logits 1", "lane": "d2h", "start_ms": 20.0, "end_ms": 21.0},  # after: nothing to hide behind
]


def test_overlap_fraction():
    assert overlap_fraction(SPANS, "d2h", "compute") == pytest.approx(0.5)
    assert overlap_fraction(SPANS, "h2d", "compute") == pytest.approx(0.5)
    assert overlap_fraction(SPANS, "missing", "compute") is None


def test_report_draws_the_lanes_only_when_an_engine_recorded_them():
    rec = VariantRecord(engine="phase4", phase=4, dtype="fp32", variant="phase4-s16-r1-b8",
                        per_rank=[{"counters": {"timeline": SPANS}}])
    assert plot_copy_compute_timeline([rec])  # a base64 PNG
    rec.per_rank = [{"counters": {}}]
    assert plot_copy_compute_timeline([rec]) is None
