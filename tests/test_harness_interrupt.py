"""Ctrl-C, SIGTERM and a killed rank under a real mpiexec: the harness runs as a separate process
(as from a terminal), the test signals it or one of its ranks, then looks through /proc for any
process that carries the test's marker in its environment (every process the harness starts
inherits it) and reads what was written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from harness.run.procs import marked_pids

pytestmark = pytest.mark.mpi  # skipped without mpiexec (conftest.py)
pytest.importorskip("mpi4py")

ROOT = Path(__file__).resolve().parents[1]
MARK = "LFM2_TEST_MARK"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("interrupt-cache")


def start(args: list[str], cache: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """The harness in a session of its own, like a command typed at a terminal."""
    mark = uuid.uuid4().hex
    env = dict(os.environ, LFM2_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **{MARK: mark})
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args, "--preset", "tiny", "--samples", "4",
                             "--out", str(out), "--run-id", "r"], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, mark


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> dict:
    """A rank's status file once it is there (the rank runs, MPI is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        assert proc.poll() is None, f"the harness ended early:\n{proc.stdout.read()}"
        time.sleep(0.05)
    raise AssertionError(f"no {path} after {timeout_s} s")


def survivors(mark: str, harness_pid: int) -> list[str]:
    return [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for p in marked_pids(mark, MARK) if p != harness_pid]


def test_ctrl_c_ends_every_rank_marks_the_variant_and_writes_the_summary(cache, tmp_path):
    proc, mark = start(["run", "--engine", "reference", "--ranks", "2", "--warmup", "100000"], cache, tmp_path)
    board = tmp_path / "r" / "logs" / "reference-s16-r2-bmax.ranks"
    wait_for(board / "rank-0.json", proc)
    wait_for(board / "rank-1.json", proc)
    assert len(survivors(mark, proc.pid)) >= 3  # mpiexec, its proxy, the ranks: the marker reaches them all
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal's Ctrl-C does to its foreground process group
    t0 = time.monotonic()
    while survivors(mark, proc.pid) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    gone_after = time.monotonic() - t0
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert survivors(mark, proc.pid) == []
    assert gone_after < 8, f"the job's processes took {gone_after:.1f} s to go"
    rec = json.loads((tmp_path / "r" / "records" / "reference-s16-r2-bmax.json").read_text())
    assert rec["status"] == "interrupted" and "SIGINT" in rec["error"] and rec["valid"] is False
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert list(summary["status"]) == ["interrupted"]
    assert (tmp_path / "r" / "report.html").exists()
    assert "INTERRUPTED" in out and "--resume --run-id r" in out


def test_sigterm_mid_comparison_keeps_the_finished_variants_and_resume_measures_the_rest(cache, tmp_path):
    args = ["compare", "--phases", "none", "--engines", "reference", "--ranks", "1,2", "--no-progress"]
    proc, mark = start(args, cache, tmp_path)
    run = tmp_path / "r"
    wait_for(run / "logs" / "reference-s16-r2-b1024.ranks" / "rank-1.json", proc)  # the first variant is done
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert survivors(mark, proc.pid) == []
    summary = pd.read_csv(run / "summary.csv").set_index("variant")
    assert summary.loc["reference-s16-r1-b1024", "valid"] == True  # noqa: E712 (a numpy bool)
    assert summary.loc["reference-s16-r2-b1024", "status"] == "interrupted"
    finished = (run / "records" / "reference-s16-r1-b1024.json").stat().st_mtime_ns

    again, _ = start(args, cache, tmp_path)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 2 and "--resume" in out  # an existing run folder is not written into
    again, _ = start(args + ["--resume"], cache, tmp_path)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    assert "kept 1 variant(s)" in out
    assert (run / "records" / "reference-s16-r1-b1024.json").stat().st_mtime_ns == finished
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary["status"]) == ["ok", "ok"] and summary["valid"].all()


def test_a_killed_rank_fails_its_variant_in_seconds_and_the_next_variant_runs(cache, tmp_path):
    proc, mark = start(["compare", "--phases", "none", "--engines", "reference", "--ranks", "2,1", "--no-progress",
                        "--timeout-s", "600"], cache, tmp_path)
    run = tmp_path / "r"
    victim = wait_for(run / "logs" / "reference-s16-r2-b1024.ranks" / "rank-1.json", proc)
    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    record = run / "records" / "reference-s16-r2-b1024.json"
    while not record.exists() and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    noticed_after = time.monotonic() - t0
    out, _ = proc.communicate(timeout=180)
    assert noticed_after < 10, f"a dead rank took {noticed_after:.1f} s to fail its variant (timeout: 600 s)"
    assert proc.returncode == 1, out
    assert survivors(mark, proc.pid) == []
    summary = pd.read_csv(run / "summary.csv").set_index("variant")
    failed = summary.loc["reference-s16-r2-b1024"]
    assert failed["status"] == "failed" and failed["valid"] == False  # noqa: E712
    assert f"rank 1 of 2 (pid {victim['pid']}" in failed["error"] and "died" in failed["error"]
    assert summary.loc["reference-s16-r1-b1024", "valid"] == True  # noqa: E712
