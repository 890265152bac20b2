"""How outputs reach rank 0 (harness/run/outputs.py): "reduce" (phases 0-4, the original's MPI
Reduce(SUM) of a full samples x vocab array, other ranks' rows zeroed) or "gather" (phase 5 on:
each rank's own rows), inside the timed region. Under a real mpiexec with 2 ranks and the
reference engine on the tiny preset: both give bit-identical outputs, and the record says how many
bytes each moved and how long it took inside the clock."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from harness.__main__ import main as harness_main

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                                 reason="no mpiexec on PATH (pip install mpich)")]
pytest.importorskip("mpi4py")

SAMPLES, VOCAB = 5, 512  # tiny preset; 5 samples over 2 ranks: 3 + 2


def test_engines_declare_their_collective():
    from baseline.engine import BaselineEngine
    from phases.phase4.engine import Phase4Engine
    from phases.phase5.engine import Phase5Engine
    assert BaselineEngine.output_collective == "reduce"
    assert Phase4Engine.output_collective == "reduce"  # phases 1-4 inherit the original's
    assert Phase5Engine.output_collective == "gather"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("collective")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LFM2_CACHE", str(root / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        for mode in ("reduce", "gather"):
            rc = harness_main(["run", "--engine", "reference", "--preset", "tiny", "--samples", str(SAMPLES),
                               "--ranks", "2", "--batch", "2", "--option", f"output_collective={mode}",
                               "--outputs", str(root / f"{mode}.bin"), "--out", str(root / "results"),
                               "--run-id", mode])
            rec = json.loads(next((root / "results" / mode / "records").glob("*.json")).read_text())
            out[mode] = (rc, rec, root / f"{mode}.bin")
    return out


def test_reduce_and_gather_give_identical_outputs(runs):
    from harness.jobs.files import read_logits
    (rc_r, rec_r, path_r), (rc_g, rec_g, path_g) = runs["reduce"], runs["gather"]
    assert rc_r == 0 and rc_g == 0
    assert rec_r["valid"] is True and rec_g["valid"] is True
    a, b = read_logits(path_r), read_logits(path_g)
    assert a.shape == (SAMPLES, VOCAB) and np.array_equal(a, b)


def test_bytes_moved_are_recorded(runs):
    _, rec_r, _ = runs["reduce"]
    _, rec_g, _ = runs["gather"]
    by_rank = {mode: [r["mpi_output_bytes"] for r in rec["per_rank"]] for mode, rec in (("reduce", rec_r),
                                                                                         ("gather", rec_g))}
    assert [r["output_collective"] for r in rec_r["per_rank"]] == ["reduce", "reduce"]
    assert [r["output_collective"] for r in rec_g["per_rank"]] == ["gather", "gather"]
    # rank 1 ran samples 3..4: it sends the full 5-row array to reduce, its own 2 rows to gather
    assert by_rank["reduce"] == [0, SAMPLES * VOCAB * 4]
    assert by_rank["gather"] == [0, 2 * VOCAB * 4]
    assert any(f"MPI reduce: {SAMPLES * VOCAB * 4:,} bytes" in n for n in rec_r["notes"])
    assert any(f"MPI gather: {2 * VOCAB * 4:,} bytes" in n for n in rec_g["notes"])
    # ... and reach the summary columns
    assert (rec_r["output_collective"], rec_r["mpi_output_bytes"]) == ("reduce", SAMPLES * VOCAB * 4)
    assert (rec_g["output_collective"], rec_g["mpi_output_bytes"]) == ("gather", 2 * VOCAB * 4)


def test_collective_time_is_recorded_inside_the_clock(runs):
    for mode in ("reduce", "gather"):
        _, rec, _ = runs[mode]
        per_rank = [r["output_s"] for r in rec["per_rank"]]
        assert all(s > 0 for s in per_rank) and rec["output_collective_s"] == max(per_rank)
        assert all(r["end_s"] + r["output_s"] <= rec["elapsed_s"] for r in rec["per_rank"])  # both inside
        assert any("ms inside the timed region" in n for n in rec["notes"])
