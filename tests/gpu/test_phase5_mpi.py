"""Phase 5 under a real mpiexec on the GPU (tiny presets; every rank shares this machine's GPU):
expert parallelism over 2 and 4 ranks gives the same logits as 1 shard and as plain data
parallelism; ranks with fewer samples keep serving their experts (idle forwards); the weights are
read once per node; the placement is balanced by measured load on skewed routing.

Each case is one `python -m harness run` (its own mpiexec job through harness.run.launch, which
adds Open MPI's --allow-run-as-root / --oversubscribe where needed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.mpi,
              pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                                 reason="no mpiexec")]
SAMPLES = 7  # uneven over 2 and 4 ranks, so some ranks run idle forwards


@pytest.fixture(scope="module")
def root(gpu, tmp_path_factory):
    """A fresh folder; PHASE5_MPI_TEST_DIR keeps the runs' records and logs (e.g. under $OUT)."""
    keep = os.environ.get("PHASE5_MPI_TEST_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("phase5_mpi")


def harness_run(root: Path, name: str, ranks: int, *extra, preset: str = "tiny", samples: int = SAMPLES):
    """-> (record dict, outputs [n, V])."""
    from harness.jobs.files import read_logits
    out_bin = root / f"{name}.bin"
    cmd = [sys.executable, "-m", "harness", "run", "--engine", "phase5", "--preset", preset, "--samples",
           str(samples), "--ranks", str(ranks), "--outputs", str(out_bin), "--out", str(root / "results"),
           "--run-id", name, "--budget-s", "60", *extra]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # keep PyCUDA's place
    env = {**os.environ, "PYTHONPATH": path, "LFM2_CACHE": str(root / "cache")}
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    records = list((root / "results" / name / "records").glob("*.json"))
    assert records, run.stderr[-3000:]
    rec = json.loads(records[0].read_text())
    assert run.returncode == 0 and rec["error"] is None, (rec["error"] or "") + run.stderr[-3000:]
    assert rec["valid"] is True and rec["samples"] == samples
    return rec, read_logits(out_bin)


def counters(rec) -> list[dict]:
    return [r["counters"] for r in rec["per_rank"]]


@pytest.fixture(scope="module")
def ep_runs(root):
    runs = {1: harness_run(root, "ep1", 1, "--option", "expert_parallel=true")}
    for g in (2, 4):
        runs[g] = harness_run(root, f"ep{g}", g, "--batch", "1", "--option", "expert_parallel=true")
    return runs


def test_expert_parallel_2_and_4_shards_match_1_shard(ep_runs):
    one = ep_runs[1][1]
    for g in (2, 4):
        rec, out = ep_runs[g]
        diff = float(np.max(np.abs(out.astype(np.float64) - one)))
        print(f"\nexpert parallel, {g} shards vs 1: max |diff| {diff:.3g}")
        np.testing.assert_allclose(out, one, atol=1e-4, rtol=0)
        c = counters(rec)
        assert [x["ep_shards"] for x in c] == [g] * g and [x["ep_rank"] for x in c] == list(range(g))
        assert all(x["ep_rows_served"] > 0 for x in c)  # every shard ran tokens in the timed loop
        assert all(x["ep_bytes_to_other_ranks"] > 0 for x in c)
        held = [sum(1 for owner in x["ep_placement"][layer] if owner == r) for r, x in enumerate(c)
                for layer in x["ep_placement"]]
        assert set(held) == {8 // g}  # tiny: 8 experts, equal counts per shard
        assert "ep_balance" in c[0] and all(x["ep_placement"] == c[0]["ep_placement"] for x in c)


def test_idle_ranks_keep_serving_their_experts(ep_runs):
    rec, _ = ep_runs[4]  # 7 samples, batch 1: ranks run 2, 2, 2, 1 forwards; rank 3 adds one idle one
    assert [r["samples_ran"] for r in rec["per_rank"]] == [2, 2, 2, 1]
    assert [r["calls"] for r in rec["per_rank"]] == [2, 2, 2, 1]


def test_data_parallel_and_load_each_give_the_same_logits(root, ep_runs):
    one = ep_runs[1][1]
    dp, dp_out = harness_run(root, "dp2", 2)
    each, each_out = harness_run(root, "each2", 2, "--option", "expert_parallel=true", "--option", "load=each")
    np.testing.assert_allclose(dp_out, one, atol=1e-4, rtol=0)
    np.testing.assert_allclose(each_out, one, atol=1e-4, rtol=0)
    bcast = counters(ep_runs[2][0])
    assert bcast[0]["load_mode"] == "bcast" and bcast[0]["load_bytes_read"] > 0
    assert bcast[1]["load_bytes_read"] == 0 and bcast[1]["load_bytes_received"] > 0  # one reader per node
    dpc, eachc = counters(dp), counters(each)
    assert dpc[1]["load_bytes_read"] == 0 and dpc[1]["load_bytes_received"] == dpc[0]["load_bytes_sent"]
    assert eachc[1]["load_bytes_read"] > 0 and eachc[1]["load_bytes_received"] == 0
    for name, c in (("bcast, expert parallel", bcast), ("bcast, data parallel", dpc), ("each, expert parallel", eachc)):
        print(f"\nload {name}: per rank read {[x['load_bytes_read'] for x in c]} B, received "
              f"{[x['load_bytes_received'] for x in c]} B, {[round(x['load_seconds'], 3) for x in c]} s")
    assert [r["output_collective"] for r in dp["per_rank"]] == ["gather", "gather"]


def test_skewed_routing_is_balanced(root):
    rec, _ = harness_run(root, "skew4", 4, "--skew", "2", "--batch", "2", "--option", "expert_parallel=true")
    bal = counters(rec)[0]["ep_balance"]
    print(f"\nskew 2, 4 shards: rows per shard before {bal['shard_rows_before']} -> after {bal['shard_rows_after']}; "
          f"critical path {bal['critical_rows_before']} -> {bal['critical_rows_after']} rows "
          f"({bal['imbalance_before']:.2f}x -> {bal['imbalance_after']:.2f}x even); "
          f"timed loop rows served per rank {[x['ep_rows_served'] for x in counters(rec)]}")
    assert sum(bal["shard_rows_before"]) == sum(bal["shard_rows_after"]) == bal["calibration_rows"] > 0
    assert bal["critical_rows_after"] <= bal["critical_rows_before"]
    assert bal["imbalance_after"] <= bal["imbalance_before"]
    from phases.phase5.balance_figure import main as figure
    assert figure([str(root / "results" / "skew4"), "--out", str(root / "figure")]) == 0
    assert (root / "figure" / "load_balance.png").stat().st_size > 10_000
    numbers = json.loads((root / "figure" / "load_balance.json").read_text())
    assert numbers["before"] == bal["shard_rows_before"] and numbers["after"] == bal["shard_rows_after"]
