"""Files written whole or not at all.

The text goes to a hidden temporary name beside the target (`.<name>.partial-<pid>`), which is then
renamed over it (os.replace is atomic within one filesystem): a reader, or a rank polling for the
file, sees the old file or the new one, never half of one, and a killed writer leaves no file under
the real name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")
