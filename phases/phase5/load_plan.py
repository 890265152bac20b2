"""From measured traffic to a placement, and when to place again (pure numpy; the CPU tests drive it).

Inputs are what every rank of the expert-parallel group holds identically: per MoE layer the rows
each expert received from all ranks (the exchanged counts), and the fitted ExpertCostModel.

    plan_placement(rows, model, current, G)  the per-layer placement minimising the busiest shard's
                                             expected seconds (placement.balanced_layers on
                                             model.expert_seconds, moving few experts), and a report
                                             of the expected load per shard before (current) and after
    measured_imbalance(seconds [G, L])       sum over layers of the slowest rank's measured expert
                                             seconds over the sum of the means: 1.0 = even
    drift_decision(...)                      place again when the measured imbalance of a window of
                                             forwards passes 1 + threshold AND a placement from the
                                             window's rows promises a critical path shorter by that
                                             factor too (moving experts costs time inside the clock;
                                             an imbalance no placement can fix, such as one expert
                                             with more than 1/G of the rows, must not make them move)

"Critical" is the sum over layers of the busiest shard, since every MoE layer's exchange waits
for its slowest shard; "imbalance" is critical over the even share (total / G).
"""
from __future__ import annotations

import numpy as np

from .expert_cost import ExpertCostModel
from .placement import balanced_layers, critical_load, shard_loads


def plan_placement(rows_by_layer: dict, model: ExpertCostModel, current: dict, shards: int) -> tuple[dict, dict]:
    """-> (placement per layer, report). The report's lists are per shard, summed over layers."""
    rows = {layer: np.asarray(r, np.int64) for layer, r in rows_by_layer.items()}
    seconds = {layer: model.expert_seconds(r) for layer, r in rows.items()}
    total_s = float(sum(np.sum(v) for v in seconds.values()))  # the same whatever the placement
    new = balanced_layers(seconds, shards, current)
    report = {"rows": int(sum(r.sum() for r in rows.values())), "shards": shards, "cost_model": model.as_dict(),
              "layers": {}}
    for key, placement in (("before", current), ("after", new)):
        report[f"shard_rows_{key}"] = sum(shard_loads(rows[l], placement[l], shards) for l in rows).tolist()
        report[f"shard_seconds_{key}"] = sum(shard_loads(seconds[l], placement[l], shards) for l in rows).tolist()
        report[f"critical_seconds_{key}"] = critical_load(seconds, placement, shards)
        report[f"critical_rows_{key}"] = int(critical_load(rows, placement, shards))
        report[f"imbalance_{key}"] = report[f"critical_seconds_{key}"] / (total_s / shards) if total_s > 0 else 1.0
    for layer in sorted(rows):
        report["layers"][str(layer)] = {
            "expert_rows": rows[layer].tolist(),
            "shard_rows_before": shard_loads(rows[layer], current[layer], shards).tolist(),
            "shard_rows_after": shard_loads(rows[layer], new[layer], shards).tolist()}
    report["experts_moved"] = int(sum((new[l] != current[l]).sum() for l in new))
    return new, report


def measured_imbalance(seconds) -> float:
    """seconds [G, L]: each rank's measured expert time per MoE layer -> sum_l max_r / sum_l mean_r."""
    seconds = np.asarray(seconds, np.float64)
    even = seconds.mean(axis=0).sum() if seconds.size else 0.0
    return float(seconds.max(axis=0).sum() / even) if even > 0 else 1.0


def drift_decision(window_rows: dict, model: ExpertCostModel, current: dict, shards: int, measured,
                   threshold: float) -> dict:
    """Whether to place again after a window of forwards: {"measured_imbalance", "replace", and
    when it was considered "predicted_gain", "placement", "report"}."""
    decision = {"measured_imbalance": measured_imbalance(measured), "replace": False}
    if decision["measured_imbalance"] <= 1.0 + threshold:
        return decision
    new, report = plan_placement(window_rows, model, current, shards)
    after = report["critical_seconds_after"]
    gain = report["critical_seconds_before"] / after if after > 0 else 1.0
    decision.update(predicted_gain=gain, replace=bool(gain > 1.0 + threshold and report["experts_moved"]),
                    placement=new, report=report)
    return decision
