"""The launcher's watch over a job, with a stand-in mpiexec that behaves as a careless launcher
would: it starts its "ranks" in sessions of their own (as Hydra does) and never notices one
dying. The launcher itself must see the dead rank, end the job in seconds, and leave nothing."""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.run import launch
from harness.run.procs import is_alive, marked_pids

# `fake-mpiexec --version` says Hydra; `fake-mpiexec -n N ...` starts N ranks in new sessions, each
# reporting on the rank board like the real worker, and waits for all of them, whatever happens.
FAKE_MPIEXEC = textwrap.dedent("""\
    #!{python}
    import os, subprocess, sys
    if "--version" in sys.argv:
        print("HYDRA build details: fake"); sys.exit(0)
    n = int(sys.argv[sys.argv.index("-n") + 1])
    rank = '''
    import os, sys, time
    from harness.run.rankboard import RankReporter
    r = RankReporter(int(sys.argv[1]), int(sys.argv[2])).start()
    r.stage("pretending to work")
    print(f"rank {{sys.argv[1]}} is working", flush=True)
    time.sleep(float(os.environ.get("FAKE_RANK_SLEEP", "600")))
    r.done(0)
    '''
    print("all ranks started", flush=True)
    procs = [subprocess.Popen([sys.executable, "-c", rank, str(i), str(n)], start_new_session=True)
             for i in range(n)]
    for p in procs:
        p.wait()
    """)


@pytest.fixture
def fake_mpiexec(tmp_path):
    path = tmp_path / "fake-mpiexec"
    path.write_text(FAKE_MPIEXEC.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _launch_in_thread(fake, tmp_path, **kw):
    import threading
    out = {}

    def go():
        out["result"] = launch.launch_worker(tmp_path / "spec.json", 2, tmp_path / "logs", "v", mpiexec=fake, **kw)
    t = threading.Thread(target=go)
    t.start()
    return t, out


def _board(tmp_path, rank: int, timeout_s: float = 30) -> dict:
    path = tmp_path / "logs" / "v.ranks" / f"rank-{rank}.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            status = json.loads(path.read_text())
            if status["stage"] == "pretending to work":
                return status
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never reported on {path.parent}")


def test_a_rank_killed_under_a_launcher_that_does_not_notice_ends_the_job_in_seconds(fake_mpiexec, tmp_path):
    thread, out = _launch_in_thread(fake_mpiexec, tmp_path, timeout_s=600)
    victim = _board(tmp_path, 1)
    _board(tmp_path, 0)
    os.kill(victim["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    thread.join(timeout=60)
    took = time.monotonic() - t0
    assert not thread.is_alive(), "the launcher hung on a dead rank"
    result = out["result"]
    assert took < launch.DEAD_GRACE_S + launch.STOP_GRACE_S + 5, f"took {took:.1f} s to notice a dead rank"
    assert not result.ok and not result.timed_out
    assert [s["rank"] for s in result.dead_ranks] == [1]
    text = result.describe_failure()
    assert "rank 1 of 2" in text and "pretending to work" in text and "rank 1 is working" in text
    survivor = _board(tmp_path, 0)["pid"]
    assert not is_alive(survivor)  # the other rank, in a session of its own, is gone too (or a zombie)


def test_every_process_of_the_job_carries_the_marker_and_none_survives_the_launcher(fake_mpiexec, tmp_path,
                                                                                    monkeypatch):
    seen = {}
    real_stop = launch.stop_job

    def spying_stop(proc, marker):
        seen["before"] = marked_pids(marker)
        real_stop(proc, marker)
        seen["after"] = marked_pids(marker)
    monkeypatch.setattr(launch, "stop_job", spying_stop)
    thread, out = _launch_in_thread(fake_mpiexec, tmp_path, timeout_s=3)  # the ranks sleep 600 s: a timeout
    thread.join(timeout=60)
    result = out["result"]
    assert result.timed_out and "timed out after" in result.describe_failure()
    assert len(seen["before"]) == 3  # the fake mpiexec and its two ranks, each in its own session
    assert seen["after"] == []


def test_the_failure_message_points_at_the_log_that_holds_the_output(fake_mpiexec, tmp_path):
    thread, out = _launch_in_thread(fake_mpiexec, tmp_path, timeout_s=2)
    thread.join(timeout=60)
    result = out["result"]
    assert result.stderr_path.read_text() == ""  # everything went to stdout, as with Hydra
    text = result.describe_failure()
    assert f"see {result.stdout_path}" in text and "all ranks started" in text


def test_a_clean_job_leaves_a_done_board(fake_mpiexec, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RANK_SLEEP", "0")
    result = launch.launch_worker(tmp_path / "spec.json", 2, tmp_path / "logs", "v", mpiexec=fake_mpiexec)
    assert result.ok and result.dead_ranks == []
    states = [json.loads(p.read_text()) for p in sorted((tmp_path / "logs" / "v.ranks").glob("rank-*.json"))]
    assert [(s["rank"], s["state"], s["rc"]) for s in states] == [(0, "done", 0), (1, "done", 0)]
    assert Path(tmp_path / "logs" / "v.ranks" / "rank-0.log").read_text().strip() == "rank 0 is working"


def test_the_rank_that_ended_the_job_is_described_first(tmp_path):
    from harness.run.rankboard import RankBoard
    board = RankBoard(tmp_path)
    (tmp_path / "rank-2.log").write_text("Traceback ...\nValueError: bad shard\n")
    rank = {r: {"rank": r, "size": 4, "pid": 100 + r, "host": "h", "stage": "loading the engine"} for r in range(4)}
    hydra = "BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n=   PID 103 RUNNING AT h\n"
    text = launch._describe_ranks([rank[0], rank[3]], [], board, hydra)  # mpiexec names the first to die
    assert text.startswith("rank 3 of 4 (pid 103 on h) died during 'loading the engine'")
    assert "ended with it: rank 0" in text and "rank 3's last output: (none)" in text
    crashed = dict(rank[2], state="done", rc=1)
    text = launch._describe_ranks([rank[0], rank[1]], [crashed], board, "")  # an error of its own comes first
    assert text.startswith("rank 2 of 4 (pid 102 on h) exited with status 1 during 'loading the engine'")
    assert "ended with it: rank 0, rank 1" in text and "ValueError: bad shard" in text
