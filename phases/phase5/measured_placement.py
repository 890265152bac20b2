"""Plan 4.3's "load balance based on expert utilization patterns": experts placed by the measured
load of the traffic being served, and placed again when it drifts.

A mixin over expert_parallel.py. Every MoE layer's exchange reports (observe_layer) the rows each
expert received from all ranks (the exchanged counts: identical on every rank) and the seconds
this rank's experts took (CUDA events around experts_dev). From those:

  calibrate(tokens, batch)   the harness's calibration hook (harness/run/prefill.py calls it on
                             every rank after the warm-up, outside the clock, with the rank's
                             samples in timed order). The group runs the first `calibrate_batches`
                             batches of each rank's own timed set (default 2; a rank with fewer
                             runs idle forwards), under the placement it has; then rank 0 fits the
                             ExpertCostModel to every rank's measured (experts with rows, rows,
                             seconds) points (expert_cost.py), plans the per-layer placement that
                             minimises the busiest shard's expected seconds (load_plan.py: LPT and
                             swaps), and broadcasts both; the experts that change shard move (one
                             host-staged Send/Recv each). The warm-up (sample 0 repeated) never
                             places experts: its routing is one prompt's.
  drift checks               after every `rebalance_window` forwards (default 4) of the timed loop,
                             the ranks share their measured expert seconds per layer; when the
                             slowest-over-mean passes 1 + `rebalance_threshold` (default 0.10) and a
                             placement from the window's counts promises a critical path that much
                             shorter, the experts move again, inside the clock (the move is part of
                             the cost), and the move is listed in counters.extra["ep_replacements"].

Options: rebalance = "drift" (default: calibration, then drift checks), "once" (calibration only),
"never" (the contiguous placement stays; calibration still fits the cost model, so the record's
predicted loads are seconds and show what balancing would have given).

What the record carries (record_fields, read by the harness worker): the placement and where it
came from, the cost model, the calibration's predicted per-shard seconds and rows before and after,
and for the timed loop each rank's rows served, predicted seconds (the model on the rows it served)
and measured seconds (the events), with both critical-path imbalances.
"""
from __future__ import annotations

import time

import numpy as np

from phases.phase4.engine import ResidentShape

from .expert_cost import ExpertCostModel, fit_cost_model
from .load_plan import drift_decision, measured_imbalance, plan_placement
from .placement import shard_order

REBALANCE = ("drift", "once", "never")
DEFAULT_CALIBRATE_BATCHES = 2
DEFAULT_WINDOW = 4
DEFAULT_THRESHOLD = 0.10


class MeasuredPlacement:
    """Adds calibrate, observe_layer, record_fields; overrides after_forward (drift checks)."""

    def setup_measured_placement(self) -> None:
        o = self.options
        self.rebalance = o.get("rebalance", "drift")
        if self.rebalance not in REBALANCE:
            raise ValueError(f"rebalance={self.rebalance!r}: choose 'drift' (place by the calibration's measured "
                             "load, again when it drifts), 'once' (calibration only) or 'never' (contiguous)")
        self.rebalance_window = int(o.get("rebalance_window", DEFAULT_WINDOW))
        self.rebalance_threshold = float(o.get("rebalance_threshold", DEFAULT_THRESHOLD))
        self.calibrate_batches = int(o.get("calibrate_batches", DEFAULT_CALIBRATE_BATCHES))
        if self.rebalance_window < 1 or self.rebalance_threshold < 0 or self.calibrate_batches < 1:
            raise ValueError("rebalance_window and calibrate_batches must be >= 1 and rebalance_threshold >= 0, got "
                             f"{self.rebalance_window}, {self.calibrate_batches}, {self.rebalance_threshold}")
        self.cost_model = ExpertCostModel.rows_only()
        self._points: list | None = None  # measured (active experts, rows, seconds) while calibrating
        self._forwards = 0
        self.counters.extra["ep_placement_source"] = ("contiguous (experts 0..E/G-1 on shard 0, ...)"
                                                      if self.ep_size > 1 else "every expert on every rank")
        self._window_reset()

    def _window_reset(self) -> None:
        E = self.config.num_experts
        self._window_rows = {layer: np.zeros(E, np.int64) for layer in self.config.moe_layers}
        self._window_seconds = {layer: 0.0 for layer in self.config.moe_layers}
        self._window_forwards = 0

    # ----- what every exchange reports ------------------------------------------------------------
    def observe_layer(self, layer: int, rows_by_expert, active: int, rows: int, seconds: float) -> None:
        """One MoE layer's exchange: rows per expert from all ranks, and this rank's experts with
        rows, rows served and measured seconds."""
        ex = self.counters.extra
        self._window_rows[layer] += rows_by_expert
        self._window_seconds[layer] += seconds
        if self._points is not None:
            self._points.append((active, rows, seconds))
        key = str(layer)
        ex["ep_rows_served"] = ex.get("ep_rows_served", 0) + rows
        measured = ex.setdefault("ep_expert_s_by_layer", {})
        predicted = ex.setdefault("ep_predicted_s_by_layer", {})
        measured[key] = measured.get(key, 0.0) + seconds
        predicted[key] = predicted.get(key, 0.0) + float(self.cost_model.shard_seconds(active, rows))

    # ----- the harness's calibration hook ---------------------------------------------------------
    def calibrate(self, tokens: np.ndarray, batch: int) -> None:
        """Collective over the node's group. tokens: this rank's samples in timed order (may be
        empty); batch: the timed loop's samples per forward call."""
        if self.ep_size == 1:
            return
        t0 = time.perf_counter()
        batch = max(1, int(batch))
        mine = min(self.calibrate_batches, -(-len(tokens) // batch))
        steps = self.group.allreduce_max(mine)
        self._window_reset()
        self._points = []
        try:
            for s in range(steps):
                self.forward(tokens[s * batch:(s + 1) * batch] if s < mine else tokens[:0])
        finally:
            points, self._points = self._points, None
        everyone = self.group.gather_object(points)
        plan = None
        if self.group.is_root:
            model = fit_cost_model([p for rank_points in everyone for p in rank_points])
            new, report = plan_placement(self._window_rows, model, self.placement, self.ep_size)
            plan = (model, self.placement if self.rebalance == "never" else new, report)
        model, new, report = self.group.bcast_object(plan)
        self.cost_model = model
        report.update(calibration_forwards=steps, calibration_samples_per_rank=int(min(len(tokens), mine * batch)),
                      applied=self.rebalance != "never")
        t1 = time.perf_counter()
        moved = self.move_experts(new)
        report.update(migrate_seconds=time.perf_counter() - t1, calibrate_seconds=time.perf_counter() - t0)
        self.counters.extra.update(
            ep_balance=report, ep_cost_model=model.as_dict(), ep_placement=self.placement_lists(),
            ep_placement_source=(f"measured: calibration over the first {steps} batch(es) of each rank's timed "
                                 f"samples ({report['rows']} routed rows), {moved} expert(s) moved"
                                 if self.rebalance != "never" else "contiguous (rebalance=never)"))
        self._window_reset()

    # ----- drift checks -----------------------------------------------------------------------------
    def after_forward(self) -> None:
        super().after_forward()
        if self.ep_size == 1 or self._points is not None:
            return
        self._forwards += 1
        self._window_forwards += 1
        if self.rebalance == "drift" and self._window_forwards >= self.rebalance_window:
            self.check_drift()

    def check_drift(self) -> None:
        """Collective: the window's measured seconds per layer from every rank; rank 0 decides
        (drift_decision) and broadcasts, so every rank moves the same experts or none."""
        layers = sorted(self._window_seconds)
        measured = self.group.allgather_floats([self._window_seconds[l] for l in layers])
        decision = None
        if self.group.is_root:
            decision = drift_decision(self._window_rows, self.cost_model, self.placement, self.ep_size,
                                      measured, self.rebalance_threshold)
        decision = self.group.bcast_object(decision)
        ex = self.counters.extra
        ex["ep_drift_checks"] = ex.get("ep_drift_checks", 0) + 1
        ex["ep_window_imbalance_max"] = max(ex.get("ep_window_imbalance_max", 0.0), decision["measured_imbalance"])
        if decision["replace"]:
            t0 = time.perf_counter()
            moved = self.move_experts(decision["placement"])
            report = decision["report"]
            ex.setdefault("ep_replacements", []).append({
                "after_forward": self._forwards, "measured_imbalance": decision["measured_imbalance"],
                "predicted_gain": decision["predicted_gain"], "imbalance_before": report["imbalance_before"],
                "imbalance_after": report["imbalance_after"], "experts_moved": moved,
                "migrate_seconds": time.perf_counter() - t0})
            ex["ep_placement"] = self.placement_lists()
        self._window_reset()

    # ----- moving experts ---------------------------------------------------------------------------
    def move_experts(self, new: dict) -> int:
        """Move every expert whose shard changes, old rank -> new rank (download, Send, Recv,
        upload), in one order on every rank so each blocking Send meets its Recv. -> experts moved."""
        self.synchronize()
        me, res = self.ep_rank, self.resident
        tag, moved = 0, 0
        for layer in sorted(new):
            for e in np.flatnonzero(new[layer] != self.placement[layer]):
                src, dst = int(self.placement[layer][e]), int(new[layer][e])
                moved += 1
                for w in ("w1", "w3", "w2"):
                    name = f"layers.{layer}.feed_forward.experts.{e}.{w}.weight"
                    tag += 1
                    if me == src:
                        self.group.send(res.take(name), dest=dst, tag=tag)
                        self.weights.pop(name, None)
                    elif me == dst:
                        arr = np.empty(self._all_shapes[name], np.float32)
                        self.group.recv(arr, source=src, tag=tag)
                        res.put(name, arr)
                        self.weights[name] = ResidentShape(name, arr.shape) if name in res.device else res.host[name]
        if moved:
            self.placement = {layer: np.asarray(p, np.int64).copy() for layer, p in new.items()}
            self._order = {layer: shard_order(p, self.ep_size) for layer, p in self.placement.items()}
            self.upload_position_tables()
            self.counters.extra["resident_weight_bytes"] = res.resident_bytes
        return moved

    # ----- what the record says -------------------------------------------------------------------
    def record_fields(self, ranks_info: list[dict]) -> dict:
        """Record fields from every rank's info (host, counters), for the harness worker's record:
        per node (each node is its own group) the placement and the per-rank load, predicted and
        measured; the flat numbers are the worst node's."""
        fields = {"expert_shards": self.ep_size}
        if self.ep_size == 1:
            return fields
        nodes = {}
        for info in ranks_info:
            nodes.setdefault(info.get("host"), []).append(info.get("counters") or {})
        described = [self._node_load(counters) for counters in nodes.values()]

        def worst(key):
            values = [d[key] for d in described if d[key] is not None]
            return max(values) if values else None
        fields.update(
            ep_placement=described[0]["source"],
            ep_imbalance_predicted=worst("imbalance_predicted"), ep_imbalance_measured=worst("imbalance_measured"),
            ep_replacements=max(len(d["replacements"]) for d in described),
            ep_exchange_s=max(max(c.get("ep_mpi_seconds", 0.0) for c in counters) for counters in nodes.values()),
            expert_placement={host: d for host, d in zip(nodes, described)})
        return fields

    def _node_load(self, counters: list[dict]) -> dict:
        head = counters[0]
        layers = sorted({k for c in counters for k in c.get("ep_expert_s_by_layer", {})}, key=int)
        predicted = [[c.get("ep_predicted_s_by_layer", {}).get(l, 0.0) for l in layers] for c in counters]
        measured = [[c.get("ep_expert_s_by_layer", {}).get(l, 0.0) for l in layers] for c in counters]
        return {
            "source": head.get("ep_placement_source"), "mode": head.get("ep_mode"),
            "placement": head.get("ep_placement"), "cost_model": head.get("ep_cost_model"),
            "calibration": head.get("ep_balance"), "replacements": head.get("ep_replacements", []),
            "drift_checks": head.get("ep_drift_checks", 0),
            "imbalance_predicted": measured_imbalance(predicted) if layers else None,
            "imbalance_measured": measured_imbalance(measured) if layers else None,
            "per_rank": [{"ep_rank": c.get("ep_rank"), "rows_served": c.get("ep_rows_served", 0),
                          "predicted_s": float(np.sum(p)), "measured_s": float(np.sum(m))}
                         for c, p, m in zip(counters, predicted, measured)],
        }
