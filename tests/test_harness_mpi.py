"""The harness end to end under a real mpiexec: the `reference` engine on the `tiny` preset,
1 and 2 ranks. Each mpiexec job of the tiny model takes a few seconds (mostly importing torch)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from harness.__main__ import main as harness_main
from harness.report.records import SUMMARY_COLUMNS

pytestmark = pytest.mark.mpi  # skipped without mpiexec (conftest.py)
pytest.importorskip("mpi4py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private synthetic-model cache, and one thread per rank so the 1- and 2-rank runs do the
    same arithmetic in the same order (thread count can change float reduction order)."""
    root = tmp_path_factory.mktemp("harness_mpi")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LFM2_CACHE", str(root / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield root


@pytest.fixture(scope="module")
def compare_run(env):
    """reference + hf in float64 (hf runs bf16 or fp32, so it fails to load on any machine), at 1
    and 2 ranks: the failure must stay one row and the reference rows must still run."""
    rc = harness_main(["compare", "--phases", "none", "--engines", "reference,hf", "--dtype", "fp64", "--preset",
                       "tiny", "--samples", "6", "--ranks", "1,2", "--device", "cpu", "--budget-s", "30",
                       "--out", str(env / "results"), "--run-id", "cmp", "--no-progress"])
    return rc, env / "results" / "cmp"


def _run(env, ranks: int, name: str, *extra) -> tuple[int, dict]:
    rc = harness_main(["run", "--engine", "reference", "--preset", "tiny", "--samples", "6", "--ranks", str(ranks),
                       "--out", str(env / "results"), "--run-id", name, *extra])
    records = list((env / "results" / name / "records").glob("*.json"))
    assert len(records) == 1
    return rc, json.loads(records[0].read_text())


def test_outputs_identical_across_rank_counts(env):
    from harness.jobs.files import read_logits
    rc1, rec1 = _run(env, 1, "r1", "--outputs", str(env / "out1.bin"))
    rc2, rec2 = _run(env, 2, "r2", "--outputs", str(env / "out2.bin"))
    assert rc1 == 0 and rc2 == 0
    for rec, ranks in ((rec1, 1), (rec2, 2)):
        assert rec["valid"] is True and rec["error"] is None
        assert rec["ranks"] == ranks and rec["samples"] == 6 and rec["samples_requested"] == 6
        assert len(rec["per_rank"]) == ranks and len(rec["latencies_ms"]) == ranks
        assert rec["tokens_per_s"] == pytest.approx(rec["samples_per_s"] * 16)
        assert rec["tflops"] > 0 and rec["top1_agreement"] == 1.0
    assert [r["samples_ran"] for r in rec2["per_rank"]] == [3, 3]  # contiguous halves
    o1, o2 = read_logits(env / "out1.bin"), read_logits(env / "out2.bin")
    assert o1.shape == (6, 512)
    assert np.array_equal(o1, o2)


def test_budget_runs_whole_samples_and_says_so(env):
    rc, rec = _run(env, 2, "budget", "--batch", "1", "--budget-s", "1e-6")
    assert rc == 0
    # One batch per rank at least (after warm-up), and no more once the budget is spent.
    assert rec["budget_hit"] is True
    assert rec["samples"] == 2 and rec["samples_requested"] == 6
    assert rec["valid"] is True and rec["ran_indices"] == [0, 3]
    assert any("2 of 6 samples" in n for n in rec["notes"])


def test_compare_reports_every_variant_and_isolates_a_crash(compare_run):
    rc, run = compare_run
    assert rc == 1  # one variant failed
    df = pd.read_csv(run / "summary.csv")
    assert list(df.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert sorted(df["variant"]) == sorted(["hf-fp64-s16-r1-b1024", "hf-fp64-s16-r2-b1024",
                                            "reference-fp64-s16-r1-b1024", "reference-fp64-s16-r2-b1024"])
    ref = df[df["engine"] == "reference"]
    assert list(ref["valid"]) == [True, True] and ref["error"].isna().all()
    assert (ref["samples"] == 6).all() and (ref["tokens_per_s"] > 0).all()
    failed = df[df["engine"] == "hf"]
    assert list(failed["valid"]) == [False, False] and failed["error"].str.contains("bf16 or fp32").all()
    assert (run / "report.html").stat().st_size > 10_000
    assert len(list((run / "records").glob("*.json"))) == 4
    assert all((run / "logs" / f"{v}.stderr.log").exists() for v in df["variant"])


def test_report_rebuilds_and_regress_passes_against_itself(compare_run, capsys):
    _, run = compare_run
    before = pd.read_csv(run / "summary.csv")
    (run / "summary.csv").unlink()
    assert harness_main(["report", str(run)]) == 0
    after = pd.read_csv(run / "summary.csv")
    pd.testing.assert_frame_equal(before.drop(columns=["error"]), after.drop(columns=["error"]))
    capsys.readouterr()
    # The failed hf rows fail the gate even against themselves; the reference rows match.
    assert harness_main(["regress", str(run), "--against", str(run)]) == 1
    out = capsys.readouterr().out
    assert out.count("ok    reference") == 2 and "FAILED to run" in out


def test_missing_mpiexec_is_a_failed_row_not_a_crash(env, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    rc, rec = _run(env, 1, "nompi")
    assert rc == 1 and rec["valid"] is False and "pip install mpich" in rec["error"]


def test_hostfile_passes_through_to_mpiexec(env):
    hostfile = env / "hosts"
    hostfile.write_text("localhost:2\n")
    rc, rec = _run(env, 2, "hostfile", "--hostfile", str(hostfile))
    assert rc == 0 and rec["valid"] is True
    cmd = (env / "results" / "hostfile" / "logs" / "reference-s16-r2-bmax.cmd").read_text()
    assert str(hostfile) in cmd and os.path.basename(shutil.which("mpiexec") or "mpirun") in cmd


def test_given_data_gets_reference_answers_cached_beside_it(env):
    from harness.config import get_preset
    from harness.jobs.files import synthetic_prompts, write_inputs
    data = env / "mydata" / "inputs.bin"
    write_inputs(data, synthetic_prompts(get_preset("tiny").vocab_size, 5, 12, seed=7))
    rc = harness_main(["run", "--engine", "reference", "--preset", "tiny", "--data", str(data), "--ranks", "2",
                       "--out", str(env / "results"), "--run-id", "given"])
    assert rc == 0
    cached = list(data.parent.glob("inputs.answers-*.bin"))
    assert len(cached) == 1
    rec = json.loads((env / "results" / "given" / "records" / "reference-s12-r2-bmax.json").read_text())
    assert rec["valid"] is True and rec["seq_len"] == 12 and rec["samples"] == 5


def test_relative_model_and_data_paths_work_from_any_directory(tmp_path, monkeypatch):
    """The README's first session: a model and a job made in the current folder, then `run` with
    relative paths (the ranks start elsewhere, so the harness must hand them absolute ones)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    assert harness_main(["make-model", "--preset", "tiny", "--out", "models/tiny", "--quiet"]) == 0
    assert harness_main(["make-data", "--model", "models/tiny", "--samples", "2", "--seq-len", "4",
                         "--out", "jobs/tiny"]) == 0
    assert harness_main(["run", "--engine", "reference", "--model", "models/tiny", "--data", "jobs/tiny/inputs.bin",
                         "--answers", "jobs/tiny/answers.bin", "--ranks", "2", "--out", "res", "--run-id", "r"]) == 0
    rec = json.loads(next((tmp_path / "res" / "r" / "records").glob("*.json")).read_text())
    assert rec["valid"] is True and rec["samples"] == 2
