"""Each rank's own status file and output, so the launcher can tell a dead rank from a slow one.

MPI launchers differ in what they do when a rank dies: Hydra kills the others at once, other
launchers (or a rank that dies inside a collective) can leave the rest waiting forever. So every
rank reports into a folder the launcher watches (the board, `<logs>/<variant>.ranks/`):
    rank-<r>.json   {rank, size, pid, start (clock ticks since boot), host, state, stage}
                    state: running, then done with the exit status when the rank returns
    rank-<r>.log    what the rank printed (its Python stdout and stderr, copied as written)
A rank whose file says running but whose process is gone (on this host) died: killed by a
signal, the out-of-memory killer, or a crash below Python. The launcher then ends the job within
seconds and reports the rank, its last stage and its last words.

The ranks also watch the launcher: when the launching process is gone (e.g. killed with -9, so
it could not stop the job) a rank on its host exits, and mpiexec ends the others.
"""
from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
from pathlib import Path

from harness.atomic import write_text_atomic
from harness.run.procs import is_alive, start_ticks_of

BOARD_ENV = "LFM2_RANK_BOARD"  # the board folder, set by the launcher
LAUNCHER_ENV = "LFM2_LAUNCHER"  # host:pid:start of the launching process
RUNNING, DONE = "running", "done"
LAUNCHER_POLL_S = 1.0


def launcher_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{start_ticks_of(os.getpid())}"


def tail_of(path: Path, max_chars: int = 4000) -> str:
    """The last max_chars of a log ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class _Tee(io.TextIOBase):
    """A text stream that writes to the original stream and to the rank's log file."""

    def __init__(self, original, log):
        self.original, self.log = original, log

    def write(self, s: str) -> int:
        self.original.write(s)
        self.original.flush()
        try:
            self.log.write(s)
            self.log.flush()
        except (OSError, ValueError):  # a full disk or a closed log must not stop the rank
            pass
        return len(s)

    def flush(self) -> None:
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self):
        return getattr(self.original, "encoding", "utf-8")


class RankReporter:
    """The rank's side: `start` once its rank is known, `stage` as it goes, `done` at the end.
    Without the board variable (a worker run by hand) every call does nothing."""

    def __init__(self, rank: int, size: int, folder: str | None = None):
        folder = folder if folder is not None else os.environ.get(BOARD_ENV)
        self.folder = Path(folder) if folder else None
        self.status = {"rank": rank, "size": size, "pid": os.getpid(), "host": socket.gethostname(),
                       "start": start_ticks_of(os.getpid()), "state": RUNNING, "stage": "starting"}

    def start(self) -> "RankReporter":
        if self.folder is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / f"rank-{self.status['rank']}.log", "a", encoding="utf-8")
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        self._save()
        _watch_launcher(os.environ.get(LAUNCHER_ENV))
        return self

    def stage(self, name: str) -> None:
        self.status["stage"] = name
        self._save()

    def done(self, rc: int) -> None:
        self.status.update(state=DONE, rc=rc)
        self._save()

    def _save(self) -> None:
        if self.folder is not None:
            try:
                write_text_atomic(self.folder / f"rank-{self.status['rank']}.json", json.dumps(self.status))
            except OSError:
                pass


def _watch_launcher(identity: str | None) -> None:
    """Exit this rank when the launching process (on this host) is gone."""
    if not identity:
        return
    host, pid, start = identity.rsplit(":", 2)
    if host != socket.gethostname():
        return

    def watch():
        stop = threading.Event()
        while not stop.wait(LAUNCHER_POLL_S):
            if not is_alive(int(pid), int(start) or None):
                print("[harness] the launching process is gone: this rank exits", file=sys.__stderr__, flush=True)
                os._exit(3)
    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


class RankBoard:
    """The launcher's side: read the ranks' status files, find the dead ones, quote their output."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.host = socket.gethostname()

    def prepare(self) -> Path:
        """An empty board (a rerun of the variant must not read the last run's files)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for f in self.folder.glob("rank-*"):
            f.unlink()
        return self.folder

    def ranks(self) -> list[dict]:
        out = []
        for f in sorted(self.folder.glob("rank-*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):  # being replaced right now: the next poll reads it
                continue
        return sorted(out, key=lambda s: s.get("rank", 0))

    def unfinished(self) -> list[dict]:
        """Ranks on this host that said running and whose process is gone."""
        return [s for s in self.ranks() if s.get("state") == RUNNING and s.get("host") == self.host
                and not is_alive(int(s["pid"]), int(s.get("start") or 0) or None)]

    def crashed(self) -> list[dict]:
        """Ranks that returned with an error of their own (a Python exception outside the stages)."""
        return [s for s in self.ranks() if s.get("state") == DONE and s.get("rc")]

    def last_words(self, rank: int, max_chars: int = 1500) -> str:
        return tail_of(self.folder / f"rank-{rank}.log", max_chars).strip()
