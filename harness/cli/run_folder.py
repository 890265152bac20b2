"""Where `run` and `compare` write (OUT/RUN_ID), and what they do when it exists already.

An existing run folder is never written into silently: `--resume` keeps it and skips the
variants whose record says they ran to the end, `--force` removes what an earlier run wrote
there (records, specs, logs, summary.csv, report.html; nothing else) and starts afresh.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from harness.errors import UsageError

DEFAULT_OUT = "runs"  # git-ignored; the benchmark suite alone writes the committed results/
RUN_OUTPUTS = ("records", "specs", "logs", "summary.csv", "report.html")  # what a run writes into its folder


def add_run_folder_args(group) -> None:
    group.add_argument("--out", default=DEFAULT_OUT, help="parent folder of the run folders (default: %(default)s/, "
                       "ignored by git)")
    group.add_argument("--run-id", help="sub-folder of --out for this run (default: a timestamp)")
    again = group.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="the run folder exists: keep the variants that ran "
                       "to the end, measure the others (failed, interrupted or not yet run)")
    again.add_argument("--force", action="store_true", help="the run folder exists: delete what the earlier run "
                       "wrote there and start afresh")


def run_dir(args) -> Path:
    """OUT/RUN_ID, checked: a plain name, and an existing folder only with --resume or --force.
    Nothing is created or deleted here (see clear_for_fresh_run): checks come first."""
    run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S")
    if "/" in run_id or run_id in (".", ".."):
        raise UsageError(f"--run-id {run_id!r}: must be a plain folder name")
    args.run_id = run_id
    folder = Path(args.out) / run_id
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; give another --out or --run-id")
    if getattr(args, "resume", False):
        if not folder.is_dir():
            raise UsageError(f"--resume: there is no run folder {folder} to resume; leave --resume out to start it")
        return folder
    earlier = [name for name in RUN_OUTPUTS if (folder / name).exists()]
    if earlier and not getattr(args, "force", False):
        raise UsageError(f"{folder} holds an earlier run ({', '.join(earlier)}); add --resume to measure only "
                         "what did not finish, --force to start afresh, or choose another --run-id")
    return folder


def clear_for_fresh_run(folder: Path, args) -> None:
    """With --force, remove what an earlier run wrote into the folder (only that)."""
    if not getattr(args, "force", False):
        return
    for name in RUN_OUTPUTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
