"""`report --merge`: slow phases measured in separate calls (one run each) read as one comparison,
so speedups relate rows across the runs, per (seq_len, ranks)."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.__main__ import main as harness_main
from harness.report.records import VariantRecord


def _run(folder, run_id, rows, model="synthetic lfm2-8b-a1b (seed 0)"):
    """A run folder holding one record per (engine, phase, ranks, batch, samples/s)."""
    for engine, phase, ranks, batch, sps in rows:
        rec = VariantRecord(engine=engine, phase=phase, dtype="fp32", ranks=ranks, seq_len=16, batch=batch,
                            samples=batch, samples_per_s=sps, tokens_per_s=16 * sps, valid=True, run_id=run_id,
                            variant=f"{engine}-s16-r{ranks}-b{batch}", workload="prefill", model=model)
        rec.write(folder / "records" / f"{rec.variant}.json")
    return folder


@pytest.fixture
def two_runs(tmp_path):
    slow = _run(tmp_path / "slow", "slow", [("baseline", 0, 1, 1, 0.1), ("phase1", 1, 1, 1, 0.2),
                                            ("baseline", 0, 2, 1, 0.15)])
    fast = _run(tmp_path / "fast", "fast", [("phase4", 4, 1, 1024, 5.0), ("phase5", 5, 1, 1024, 100.0),
                                            ("phase5", 5, 2, 1024, 90.0)])
    return slow, fast


def test_merge_relates_rows_across_runs_and_batches(two_runs, tmp_path, capsys):
    out = tmp_path / "merged"
    assert harness_main(["report", *map(str, two_runs), "--merge", "--out", str(out)]) == 0
    df = pd.read_csv(out / "summary.csv").set_index(["engine", "ranks"])
    assert df.loc[("phase5", 1), "speedup_vs_phase0"] == pytest.approx(1000.0)
    assert df.loc[("phase5", 1), "speedup_vs_prev"] == pytest.approx(20.0)  # over phase 4 from the other run
    assert df.loc[("phase4", 1), "speedup_vs_prev"] == pytest.approx(25.0)  # over phase 1
    assert df.loc[("phase5", 2), "speedup_vs_phase0"] == pytest.approx(600.0)
    assert list(df.reset_index()["ranks"]) == [1, 1, 1, 1, 2, 2]  # one comparison, ordered by ranks then phase
    assert "Merged" in (out / "report.html").read_text()


def test_without_merge_runs_stay_apart(two_runs, tmp_path):
    out = tmp_path / "apart"
    assert harness_main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    df = pd.read_csv(out / "summary.csv").set_index(["engine", "ranks"])
    assert pd.isna(df.loc[("phase5", 1), "speedup_vs_phase0"])


def test_merge_refuses_a_variant_measured_twice(two_runs, tmp_path, capsys):
    again = _run(tmp_path / "again", "again", [("phase1", 1, 1, 1, 0.25)])
    assert harness_main(["report", *map(str, two_runs), str(again), "--merge", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "phase1" in err and "slow, again" in err
    assert harness_main(["report", str(two_runs[0]), "--merge"]) == 2
    assert "two or more run folders" in capsys.readouterr().err


def test_merge_refuses_runs_of_different_models(two_runs, tmp_path, capsys):
    small = _run(tmp_path / "small", "small", [("phase2", 2, 1, 1, 3.0)], model="synthetic small (seed 0)")
    assert harness_main(["report", str(two_runs[0]), str(small), "--merge", "--out", str(tmp_path / "m")]) == 2
    assert "different models" in capsys.readouterr().err
