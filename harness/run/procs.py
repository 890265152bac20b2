"""The processes of one launched job, found by a marker in their environment, and how they end.

Killing mpiexec's process group is not enough: MPICH's Hydra starts its proxy and every rank in
a session of its own (setsid), and Open MPI's daemons do likewise, so a rank survives a signal
to mpiexec's group. Every process of a job inherits the launcher's environment, so the launcher
puts a marker variable in it and finds the job's processes on this host through
/proc/<pid>/environ (processes on other hosts end through mpiexec's own signal forwarding).
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

MARKER_ENV = "LFM2_JOB_MARKER"


def new_marker() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def marked_pids(marker: str, variable: str = MARKER_ENV) -> list[int]:
    """Live processes on this host whose environment holds variable=marker (never this one)."""
    needle = f"{variable}={marker}".encode()
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if needle in env.split(b"\0") and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def start_ticks_of(pid: int) -> int:
    """A process's start time in clock ticks since boot (0 when it is gone): with the pid, its identity."""
    state = proc_state(pid)
    return state[1] if state else 0


def is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Running (not a zombie), and the same process when its start time is given (pids recycle)."""
    state = proc_state(pid)
    if state is None or state[0] in ("Z", "X"):
        return False
    return start_ticks is None or state[1] == start_ticks


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_processes(find, grace_s: float = 3.0, poll_s: float = 0.05) -> list[int]:
    """SIGTERM every process `find()` returns (it is asked again and again: a dying proxy may
    reveal nothing new, but a late-starting rank is caught), SIGKILL those still running after
    `grace_s`. Returns the pids that needed SIGKILL."""
    deadline = time.monotonic() + grace_s
    pids = find()
    while pids and time.monotonic() < deadline:
        _signal_all(pids, signal.SIGTERM)
        time.sleep(poll_s)
        pids = find()
    killed = list(pids)
    end = time.monotonic() + grace_s
    while pids and time.monotonic() < end:
        _signal_all(pids, signal.SIGKILL)
        time.sleep(poll_s)
        pids = find()
    return killed
