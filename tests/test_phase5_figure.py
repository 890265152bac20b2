"""phases/phase5/balance_figure.py on the CPU: from the per-rank counters of expert-parallel run
records (made up here, in the shape the phase-5 engine writes) to load_balance.png + .json."""
from __future__ import annotations

import json

import pytest

from phases.phase5.balance_figure import main


def record(rebalance: str, served: list[int], balance: dict | None) -> dict:
    per_rank = []
    for r, rows in enumerate(served):
        c = {"ep_shards": len(served), "ep_rank": r, "ep_rows_served": rows}
        if balance:
            c["ep_balance"] = balance
        per_rank.append({"rank": r, "counters": c})
    return {"engine": "phase5", "model": "synthetic small (seed 0, skew 2)", "seq_len": 16, "per_rank": per_rank,
            "options": {"expert_parallel": True, "rebalance": rebalance}}


BALANCE = {"shard_rows_before": [900, 40, 30, 30], "shard_rows_after": [260, 250, 245, 245],
           "imbalance_before": 3.6, "imbalance_after": 1.04, "critical_rows_before": 900, "critical_rows_after": 260,
           "calibration_rows": 1000, "experts_moved": 21,
           "layers": {"1": {"expert_rows": [1] * 32}}}


def test_figure_and_numbers_from_two_runs(tmp_path, capsys):
    balanced = tmp_path / "balanced.json"
    never = tmp_path / "never.json"
    balanced.write_text(json.dumps(record("first", [2500, 2450, 2480, 2470], BALANCE)))
    never.write_text(json.dumps(record("never", [8800, 500, 400, 300], None)))
    assert main([str(balanced), str(never), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "load_balance.png").stat().st_size > 10_000
    numbers = json.loads((tmp_path / "fig" / "load_balance.json").read_text())
    assert numbers["before"] == [900, 40, 30, 30] and numbers["after"] == [260, 250, 245, 245]
    assert numbers["measured"] == {"balanced (balanced.json)": [2500, 2450, 2480, 2470],
                                   "contiguous (never.json)": [8800, 500, 400, 300]}
    assert "900 -> 260 rows = 3.60x -> 1.04x the even share" in capsys.readouterr().out


def test_runs_without_expert_parallel_are_refused(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"engine": "phase5", "per_rank": [{"counters": {}}], "options": {}}))
    with pytest.raises(SystemExit, match="expert_parallel=true"):
        main([str(plain)])
