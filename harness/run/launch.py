"""Launch the per-rank worker through the `mpiexec` on PATH, whatever MPI it belongs to.

Flavours differ in what they need:
  * MPICH (Hydra): nothing special; `-f HOSTFILE` names the hosts. Hydra binds nothing by default.
  * Open MPI: refuses to run as root without `--allow-run-as-root`; refuses more ranks than
    slots (cores) without `--oversubscribe`; binds each rank to one core by default, which
    would starve the multi-threaded CPU math of the baseline (numpy/torch), so `--bind-to none`.
    `--hostfile HOSTFILE` names the hosts.
Each launch writes its command line, stdout and stderr into the run's log folder. The launcher
watches the job (harness.run.rankboard): a rank that died ends the job within seconds, a timeout
ends a hung one, and Ctrl-C or SIGTERM ends it at once; in every case each process of the job
on this host is gone before launch_worker returns or re-raises (harness.run.procs).
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.run.interrupt import signals_deferred
from harness.run.procs import MARKER_ENV, end_processes, marked_pids, new_marker
from harness.run.rankboard import BOARD_ENV, LAUNCHER_ENV, RankBoard, launcher_identity, tail_of

MPICH, OPENMPI, UNKNOWN = "mpich", "openmpi", "unknown"


class MPILaunchError(RuntimeError):
    """No usable mpiexec (the message says how to get one)."""


def find_mpiexec() -> str:
    for name in ("mpiexec", "mpirun"):
        path = shutil.which(name)
        if path:
            return path
    raise MPILaunchError("no mpiexec on PATH. Install one: `pip install mpich` (CPU machines, CI) "
                         "or your cluster's Open MPI / MPICH module, and make sure mpi4py is built "
                         "against the same MPI.")


@functools.lru_cache(maxsize=8)
def detect_flavour(mpiexec: str) -> str:
    """'mpich', 'openmpi' or 'unknown', from `mpiexec --version`."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MPILaunchError(f"`{mpiexec} --version` failed: {e}") from None
    return flavour_from_version_text(text)


def flavour_from_version_text(text: str) -> str:
    if "Open MPI" in text or "OpenRTE" in text or "open-mpi" in text.lower():
        return OPENMPI
    if "HYDRA" in text or "MPICH" in text or "Intel(R) MPI" in text:
        return MPICH
    return UNKNOWN


# Open MPI forwards no environment to other nodes unless told (-x); Hydra forwards all of it.
FORWARDED_ENV = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "LFM2_CACHE", "CUDA_VISIBLE_DEVICES",
                 "OMP_NUM_THREADS", "LFM2_GIT_COMMIT", MARKER_ENV, BOARD_ENV, LAUNCHER_ENV)


def build_command(mpiexec: str, flavour: str, ranks: int, argv: list[str], *,
                  hostfile: str | None = None, cores: int | None = None,
                  is_root: bool | None = None, forward_env: list[str] | None = None,
                  extra: list[str] | None = None) -> list[str]:
    """The full command line that runs `argv` on `ranks` ranks. `forward_env`: variable names
    Open MPI must export to remote ranks (with a hostfile)."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if cores is None:
        cores = os.cpu_count() or 1
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    cmd = [mpiexec]
    if flavour == OPENMPI:
        if is_root:
            cmd.append("--allow-run-as-root")
        # With a hostfile the slots come from it; locally, more ranks than cores needs this.
        if hostfile is None and ranks > cores:
            cmd.append("--oversubscribe")
        cmd += ["--bind-to", "none"]
        if hostfile:
            cmd += ["--hostfile", hostfile]
            for name in forward_env or []:
                cmd += ["-x", name]
    elif hostfile:  # MPICH/Hydra and unknown flavours: the MPI-standard-ish spelling
        cmd += ["-f", hostfile]
    cmd += ["-n", str(ranks)]
    cmd += list(extra or [])
    cmd += list(argv)
    return cmd


@dataclass
class LaunchResult:
    ok: bool
    returncode: int | None  # None: killed (timeout, or a rank died and the job was stopped)
    elapsed_s: float
    command: list[str]
    stdout_path: Path
    stderr_path: Path
    stderr_tail: str
    timed_out: bool = False
    board: RankBoard | None = None
    dead_ranks: list[dict] = field(default_factory=list)  # ranks whose process ended without finishing

    def describe_failure(self) -> str:
        crashed = self.board.crashed() if self.board else []
        if self.timed_out:
            why = f"timed out after {self.elapsed_s:.1f} s (raise --timeout-s if it was only slow)"
        elif self.dead_ranks or crashed:
            why = _describe_ranks(self.dead_ranks, crashed, self.board,
                                  tail_of(self.stdout_path) + self.stderr_tail)
        else:
            why = f"mpiexec exited with status {self.returncode}"
        log, tail = self.output_log()
        return f"{why}; see {log}" + (f"\n{tail}" if tail else "")

    def output_log(self) -> tuple[Path, str]:
        """The log that holds the job's last words: stderr unless it is empty (Hydra, and ranks
        that print a traceback through mpiexec, often leave everything in stdout)."""
        tail = self.stderr_tail.strip()
        if tail:
            return self.stderr_path, tail
        return self.stdout_path, tail_of(self.stdout_path).strip()


def _describe_ranks(dead: list[dict], crashed: list[dict], board: RankBoard | None, launcher_text: str) -> str:
    """The rank that ended the job, its stage and its last output; the others are listed (Hydra
    kills the rest at once). The culprit: the one mpiexec's message names by pid, else one that
    exited with an error of its own, else the lowest dead rank."""
    named = {int(p) for p in re.findall(r"\bPID (\d+)", launcher_text)}
    ranks = sorted(crashed + dead, key=lambda s: (int(s["pid"]) not in named, s in dead, s.get("rank", 0)))
    first = ranks[0]
    size = first.get("size")
    who = f"rank {first['rank']}{f' of {size}' if size else ''} (pid {first['pid']} on {first['host']})"
    stage = first.get("stage", "?")
    if first in crashed:
        lines = [f"{who} exited with status {first.get('rc')} during {stage!r}"]
    else:
        lines = [f"{who} died during {stage!r} without finishing: killed by a signal (kill -9, the out-of-memory "
                 "killer) or a crash below Python"]
    if len(ranks) > 1:
        lines.append("ended with it: " + ", ".join(f"rank {s['rank']}" for s in ranks[1:]))
    words = board.last_words(first["rank"]) if board else ""
    lines.append(f"rank {first['rank']}'s last output: " + (f"\n{words}" if words else "(none)"))
    return "\n".join(lines)


def worker_env(marker: str | None = None, board: Path | None = None) -> dict:
    """The parent's environment, plus the repo on PYTHONPATH so every rank imports this checkout,
    plus Open MPI's root switches (harmless for other flavours; belt and braces for nested
    launches), plus the job's marker and rank board (harness.run.procs, harness.run.rankboard)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if marker:
        env[MARKER_ENV] = marker
    if board:
        env[BOARD_ENV] = str(Path(board).resolve())
        env[LAUNCHER_ENV] = launcher_identity()
    return env


POLL_S = 0.25  # how often the launcher looks at the job: a dead rank is seen within this
DEAD_GRACE_S = 3.0  # after a rank died, how long mpiexec gets to end the job itself
STOP_GRACE_S = 3.0  # SIGTERM to SIGKILL when the launcher ends a job


def launch_worker(spec_path: str | Path, ranks: int, log_dir: str | Path, name: str, *,
                  timeout_s: float = 3600.0, hostfile: str | None = None,
                  mpiexec: str | None = None, extra_args: list[str] | None = None) -> LaunchResult:
    """Run `python -m harness.run.worker --spec SPEC` on `ranks` ranks; logs go to log_dir/name.*

    The job ends with mpiexec, at the timeout, DEAD_GRACE_S after a rank died, or at once on
    Interrupted (Ctrl-C, SIGTERM), which is re-raised after every process of the job is gone."""
    mpiexec = mpiexec or find_mpiexec()
    flavour = detect_flavour(mpiexec)
    argv = [sys.executable, "-m", "harness.run.worker", "--spec", str(Path(spec_path).resolve())]
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    board = RankBoard(log_dir / f"{name}.ranks")
    marker = new_marker()
    env = worker_env(marker, board.prepare())
    cmd = build_command(mpiexec, flavour, ranks, argv, hostfile=hostfile,
                        forward_env=[v for v in FORWARDED_ENV if v in env], extra=extra_args)
    out_path, err_path = log_dir / f"{name}.stdout.log", log_dir / f"{name}.stderr.log"
    (log_dir / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # A session of its own: the terminal's Ctrl-C reaches the harness only, which ends the job.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env,
                                cwd=Path(__file__).resolve().parents[2], start_new_session=True)
        try:
            rc, timed_out, dead = _watch(proc, board, t0 + timeout_s)
        finally:  # normal end, timeout, dead rank or Interrupted: nothing of the job outlives this
            with signals_deferred():
                stop_job(proc, marker)
    return LaunchResult(ok=(rc == 0 and not dead), returncode=rc, elapsed_s=time.perf_counter() - t0, command=cmd,
                        stdout_path=out_path, stderr_path=err_path, stderr_tail=tail_of(err_path),
                        timed_out=timed_out, board=board, dead_ranks=dead)


def _watch(proc: subprocess.Popen, board: RankBoard, deadline: float) -> tuple[int | None, bool, list[dict]]:
    """Wait for mpiexec; (returncode, timed out, dead ranks). A rank that died while mpiexec ran
    on gets DEAD_GRACE_S for mpiexec to notice, then the job is ended here."""
    died_at = None
    dead: list[dict] = []
    while True:
        try:
            rc = proc.wait(timeout=POLL_S)
            return rc, False, dead or (board.unfinished() if rc else [])
        except subprocess.TimeoutExpired:
            pass
        now = time.perf_counter()
        if now > deadline:
            return None, True, dead
        if died_at is None:
            dead = board.unfinished()
            died_at = now if dead else None
        elif now - died_at > DEAD_GRACE_S:
            return None, False, dead


def stop_job(proc: subprocess.Popen, marker: str) -> None:
    """End mpiexec (its group: Hydra forwards SIGTERM to the ranks, and on other hosts only that
    works) and every process on this host that carries the job's marker, whatever its session."""
    def find():
        pids = marked_pids(marker)
        if proc.poll() is None:
            pids.append(-proc.pid)  # the process group
        return pids
    end_processes(find, grace_s=STOP_GRACE_S)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
