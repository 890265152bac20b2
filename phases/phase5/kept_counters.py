"""Counters whose load-time facts survive `reset()`.

The harness resets an engine's counters just before the timed region, which would erase what
was measured at load (the weight broadcast's seconds and bytes) and at calibration (the expert
placement, its cost model, its loads before/after). Keys with these prefixes stay; everything
else resets.
"""
from __future__ import annotations

from harness.engines.base import Counters

KEPT_PREFIXES = ("load_", "resident_", "ep_balance", "ep_placement", "ep_shards", "ep_rank", "ep_mode",
                 "ep_cost_model")


class KeptCounters(Counters):
    def reset(self) -> None:
        kept = {k: v for k, v in self.extra.items() if k.startswith(KEPT_PREFIXES)}
        super().reset()
        self.extra.update(kept)

    @classmethod
    def replacing(cls, counters: Counters) -> "KeptCounters":
        new = cls()
        new.__dict__.update(counters.__dict__)
        return new
