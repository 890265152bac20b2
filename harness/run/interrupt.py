"""Ctrl-C and `kill` as one exception, so `run` and `compare` stop their MPI job and still write
what they measured.

Inside `stop_on_signals()`, SIGINT and SIGTERM raise `Interrupted` in the main thread wherever it
is (most often waiting on mpiexec). The launcher catches it, ends the job's every process and
re-raises; the variant being measured gets an INTERRUPTED record; the command writes
summary.csv and report.html for the rest and exits 128 + the signal's number (130 for Ctrl-C).
SIGINT is handled explicitly even when the shell started the harness with it ignored (a
background job), so `kill -INT` always works.
"""
from __future__ import annotations

import contextlib
import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the harness; `signame` says which."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signame}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM raise Interrupted inside the block; the previous handlers come back after.
    Outside the main thread (where Python cannot set handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred():
    """Let a cleanup finish: a second Ctrl-C during it is remembered and raised after, not inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if pending and previous.get(pending[0]) is _raise:
        raise Interrupted(pending[0])
