"""Checkpoint folders appear whole or not at all.

A checkpoint is written into `.<name>.partial-<pid>` beside its destination and renamed into
place when its last file is written, so an interrupted write (Ctrl-C, a full disk, kill -9)
never leaves a folder that looks like a checkpoint but is not one. A folder it replaces is
renamed away first and deleted after; leftovers of a writer that died are removed by the next.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from harness.checkpoints.safetensors_stream import INDEX_FILE, SINGLE_FILE

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(partial|old)-(?P<pid>\d+)$")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
CHECKPOINT_FILES = {"config.json", "synthetic.json", SINGLE_FILE, INDEX_FILE, "model.bin"}


def holds_checkpoint_files_only(folder: Path) -> bool:
    """Every visible file of `folder` is one a checkpoint is made of (what may be replaced)."""
    names = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    return bool(names) and all(n in CHECKPOINT_FILES or _SHARD.match(n) for n in names)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(dest: Path) -> None:
    """Delete `.<name>.partial-<pid>` / `.old-<pid>` folders of dest whose writer is gone."""
    if not dest.parent.is_dir():
        return
    for p in dest.parent.iterdir():
        m = _LEFTOVER.match(p.name)
        if m and m["name"] == dest.name and p.is_dir() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(dest: str | Path):
    """Yield an empty folder to write into; on leaving the block normally it becomes `dest`
    (replacing what was there), on an exception it is deleted and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
