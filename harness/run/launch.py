"""Launch the per-rank worker through the `mpiexec` on PATH, whatever MPI it belongs to.

Flavours differ in what they need:
  * MPICH (Hydra): nothing special; `-f HOSTFILE` names the hosts. Hydra binds nothing by default.
  * Open MPI: refuses to run as root without `--allow-run-as-root`; refuses more ranks than
    slots (cores) without `--oversubscribe`; binds each rank to one core by default, which
    would starve the multi-threaded CPU math of the baseline (numpy/torch), so `--bind-to none`.
    `--hostfile HOSTFILE` names the hosts.
Each launch writes its command line, stdout and stderr into the run's log folder, and a timeout
kills the whole process group so a hung rank cannot hang the comparison.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
                 "OMP_NUM_THREADS", "LFM2_GIT_COMMIT")


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
    returncode: int | None  # None: killed on timeout
    elapsed_s: float
    command: list[str]
    stdout_path: Path
    stderr_path: Path
    stderr_tail: str
    timed_out: bool = False

    def describe_failure(self) -> str:
        why = (f"timed out after {self.elapsed_s:.1f} s" if self.timed_out
               else f"mpiexec exited with status {self.returncode}")
        tail = self.stderr_tail.strip()
        return f"{why}; see {self.stderr_path}" + (f"\n{tail}" if tail else "")


def _tail(path: Path, max_chars: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def worker_env() -> dict:
    """The parent's environment, plus the repo on PYTHONPATH so every rank imports this checkout,
    plus Open MPI's root switches (harmless for other flavours; belt and braces for nested
    launches)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def launch_worker(spec_path: str | Path, ranks: int, log_dir: str | Path, name: str, *,
                  timeout_s: float = 3600.0, hostfile: str | None = None,
                  mpiexec: str | None = None, extra_args: list[str] | None = None) -> LaunchResult:
    """Run `python -m harness.run.worker --spec SPEC` on `ranks` ranks; logs go to log_dir/name.*"""
    mpiexec = mpiexec or find_mpiexec()
    flavour = detect_flavour(mpiexec)
    argv = [sys.executable, "-m", "harness.run.worker", "--spec", str(Path(spec_path).resolve())]
    env = worker_env()
    cmd = build_command(mpiexec, flavour, ranks, argv, hostfile=hostfile,
                        forward_env=[v for v in FORWARDED_ENV if v in env], extra=extra_args)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.stdout.log", log_dir / f"{name}.stderr.log"
    (log_dir / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
    t0 = time.perf_counter()
    timed_out = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # A session of its own, so a timeout can kill mpiexec and every rank it started.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env,
                                cwd=Path(__file__).resolve().parents[1], start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = None
    elapsed = time.perf_counter() - t0
    return LaunchResult(ok=(rc == 0), returncode=rc, elapsed_s=elapsed, command=cmd,
                        stdout_path=out_path, stderr_path=err_path,
                        stderr_tail=_tail(err_path), timed_out=timed_out)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the launch's process group, then SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
