"""How much memory and disk this machine can give a job, for the checks made before one starts."""
from __future__ import annotations

import shutil
from pathlib import Path


def available_memory_bytes() -> int | None:
    """Memory a new process can use without swapping: the kernel's MemAvailable, lowered to
    what the cgroup (a container's limit) has left. None when neither can be read."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            left = max(0, int(limit) - used)
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def free_disk_bytes(path: str | Path) -> int:
    """Free bytes on the file system that `path` is (or would be created) on."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
