"""On the GPU: the harness measures for real. A tiny-preset comparison checks the GPU-only parts
of a record quickly (NVML series, PCIe counters, driver version); `compare --phases 0` on the
full synthetic model (slow: generates the 16.7 GB checkpoint once, then the reference answers)
must produce a real report. Each runs `python -m harness` in a subprocess, so this test process
holds no GPU memory the measured ranks would miss."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.mpi,
              pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                                 reason="no mpiexec")]


def _harness(*argv, timeout=3000) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})


def _check_gpu_row(row) -> None:
    assert row["valid"] == True, row["error"]  # noqa: E712 (numpy bool)
    assert row["samples"] >= 1 and row["tokens_per_s"] > 0
    assert row["h2d_bytes_per_sample"] > 0 and row["device_allocs_per_sample"] > 0  # the baseline's pattern
    assert pd.notna(row["gpu_util_mean"]) and pd.notna(row["gpu_mem_peak_gb"]), row["nvml_note"]
    assert pd.notna(row["driver_version"]) and pd.notna(row["pct_of_peak"])


def test_tiny_compare_on_gpu(gpu, tmp_path):
    out = _harness("compare", "--phases", "0", "--engines", "reference", "--preset", "tiny", "--samples", "4",
                   "--ranks", "1", "--budget-s", "20", "--out", str(tmp_path), "--run-id", "tiny", "--no-progress",
                   timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_csv(tmp_path / "tiny" / "summary.csv")
    _check_gpu_row(df[df["engine"] == "baseline"].iloc[0])


@pytest.mark.slow
def test_compare_phase0_full_model_report(gpu, tmp_path):
    out = _harness("compare", "--phases", "0", "--samples", "4", "--batch", "1", "--budget-s", "60", "--out", str(tmp_path),
                   "--run-id", "full", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "full"
    df = pd.read_csv(run / "summary.csv")
    assert list(df["variant"]) == ["baseline-s16-r1-b1"]
    _check_gpu_row(df.iloc[0])
    html = (run / "report.html").read_text()
    assert "baseline-s16-r1-b1" in html and html.count("data:image/png;base64,") >= 2  # + NVML over time
