"""harness/report/balance.py on the CPU: from the `expert_placement` of expert-parallel phase-5 run
records (made up here, in the shape measured_placement.record_fields writes) to load_balance.png
+ .json."""
from __future__ import annotations

import json

import pytest

from harness.report.balance import main

CALIBRATION = {"shard_seconds_before": [0.009, 0.0004, 0.0003, 0.0003], "shard_seconds_after": [0.0026, 0.0025,
                                                                                                0.00245, 0.00245],
               "shard_rows_before": [900, 40, 30, 30], "shard_rows_after": [260, 250, 245, 245],
               "imbalance_before": 3.6, "imbalance_after": 1.04, "critical_seconds_before": 0.009,
               "critical_seconds_after": 0.0026, "rows": 1000, "experts_moved": 21, "applied": True,
               "cost_model": {"fixed_s": 1e-5, "per_row_s": 1e-5, "points": 24, "residual": 0.03},
               "layers": {"1": {"expert_rows": [1] * 32}}}


def record(rebalance: str, measured: list[float], calibration: dict) -> dict:
    per_rank = [{"ep_rank": r, "rows_served": int(s * 1e6), "predicted_s": s * 0.9, "measured_s": s}
                for r, s in enumerate(measured)]
    node = {"source": "measured", "per_rank": per_rank, "imbalance_measured": max(measured) / (sum(measured) / 4),
            "imbalance_predicted": 1.0, "replacements": [], "calibration": calibration}
    return {"engine": "phase5", "model": "synthetic small (seed 0, skew 0.5)", "seq_len": 16,
            "expert_placement": {"node0": node}, "options": {"expert_parallel": True, "rebalance": rebalance}}


def test_figure_and_numbers_from_two_runs(tmp_path, capsys):
    balanced = tmp_path / "balanced.json"
    never = tmp_path / "never.json"
    balanced.write_text(json.dumps(record("drift", [0.025, 0.0245, 0.0248, 0.0247], CALIBRATION)))
    never.write_text(json.dumps(record("never", [0.088, 0.005, 0.004, 0.003], {**CALIBRATION, "applied": False})))
    assert main([str(balanced), str(never), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "load_balance.png").stat().st_size > 10_000
    numbers = json.loads((tmp_path / "fig" / "load_balance.json").read_text())
    assert numbers["before"] == CALIBRATION["shard_seconds_before"]
    assert numbers["after"] == CALIBRATION["shard_seconds_after"]
    assert numbers["measured"]["contiguous (never.json)"]["measured_s"] == [0.088, 0.005, 0.004, 0.003]
    assert numbers["measured"]["measured load (balanced.json)"]["rows"] == [25000, 24500, 24800, 24700]
    assert "critical path 3.60x -> 1.04x the even share; 21 expert(s) moved" in capsys.readouterr().out


def test_runs_without_expert_parallel_are_refused(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"engine": "phase5", "expert_placement": {}, "options": {}}))
    with pytest.raises(SystemExit, match="expert_parallel=true"):
        main([str(plain)])


def test_runs_that_never_placed_by_load_are_refused(tmp_path):
    never = tmp_path / "never.json"
    never.write_text(json.dumps(record("never", [0.088, 0.005, 0.004, 0.003], {**CALIBRATION, "applied": False})))
    with pytest.raises(SystemExit, match="rebalance=never"):
        main([str(never)])
