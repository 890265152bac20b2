"""`--profile-ops`: one extra forward under torch.profiler after the timed region, its ops by time
in the record and in report.html. On the CPU the table holds torch ops by self time (the GPU path,
kernels by GPU time, is what `python -m optimized --profile` uses on the H100)."""
from __future__ import annotations

import json

import pytest
import torch

from harness.__main__ import main as harness_main
from harness.measure.op_profile import format_table, profile_ops

@pytest.fixture
def cpu_job_env(tmp_path, monkeypatch):
    """A harness job on the CPU under mpiexec: its own cache, one thread per rank."""
    pytest.importorskip("mpi4py")
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_cpu_profile_names_the_ops_that_ran_with_self_time():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    ops = profile_ops(lambda: [torch.mm(a, b) for _ in range(3)], on_gpu=False)
    mm = next(op for op in ops if op["name"] == "aten::mm")
    assert mm["calls"] == 3 and mm["us"] > 0
    assert [op["us"] for op in ops] == sorted((op["us"] for op in ops), reverse=True)
    text = format_table(ops, "three matmuls")
    assert text.startswith("three matmuls:") and "aten::mm" in text


@pytest.mark.mpi  # skipped without mpiexec (conftest.py)
def test_run_with_profile_ops_records_and_reports_the_table(tmp_path, cpu_job_env):
    assert harness_main(["run", "--engine", "reference", "--preset", "tiny", "--samples", "4", "--batch", "2",
                         "--ranks", "2", "--device", "cpu", "--profile-ops", "--out", str(tmp_path / "r"),
                         "--run-id", "p"]) == 0
    rec = json.loads(next((tmp_path / "r" / "p" / "records").glob("*.json")).read_text())
    assert rec["valid"] is True and rec["samples"] == 4  # the profiled forward is not a timed sample
    names = [op["name"] for op in rec["op_profile"]]
    assert any(n.startswith("aten::") for n in names)
    assert any("op profile: one forward of 2 samples" in n for n in rec["notes"])
    assert harness_main(["report", str(tmp_path / "r" / "p")]) == 0
    html = (tmp_path / "r" / "p" / "report.html").read_text()
    assert "Where the time goes" in html and "aten::" in html


@pytest.mark.mpi  # skipped without mpiexec (conftest.py)
def test_a_generate_run_with_profile_ops_profiles_one_decode_step(tmp_path, cpu_job_env):
    assert harness_main(["run", "--engine", "reference", "--preset", "tiny", "--workload", "generate",
                         "--max-new-tokens", "3", "--samples", "2", "--seq-len", "4", "--batch", "2", "--ranks", "1",
                         "--device", "cpu", "--profile-ops", "--out", str(tmp_path / "r"), "--run-id", "d"]) == 0
    rec = json.loads(next((tmp_path / "r" / "d" / "records").glob("*.json")).read_text())
    assert rec["valid"] is True and rec["samples"] == 2  # the profiled step is not a timed one
    assert any(op["name"].startswith("aten::") for op in rec["op_profile"])
    assert any("op profile: one decode step of 2 sequences" in n for n in rec["notes"])
