"""part.json: what a suite part folder holds beside its records, for `publish` and the report.

Written by `python -m harness suite` into results/<gpu>/<part>/ once the part has run: the exact
command, the commit measured, the date, the device, the duration, the model's configuration (for
the floors) and, per variant, the role it plays in the comparison (the engine the part planned,
which differs from the record's engine only when a stand-in ran, as in `suite --smoke`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.atomic import write_json_atomic

PART_FILE = "part.json"


@dataclass
class PartMeta:
    part: str
    what: str  # one line: what the part measures
    command: str  # the exact command line that made the folder
    commit: str | None
    date: str  # UTC, ISO 8601, when the part finished
    device: str  # the GPU's name (or the CPU's, for smoke runs)
    duration_s: float
    model: str  # how reports name the checkpoint
    model_config: dict = field(default_factory=dict)  # ModelConfig.to_hf_dict()
    kind: str = "throughput"  # or "accuracy": which headline the part publishes
    roles: dict = field(default_factory=dict)  # variant -> {"role": planned engine, "dtype": planned dtype}
    notes: list = field(default_factory=list)
    smoke: bool = False  # a stand-in engine on a test preset: never a published number
    definition: str | None = None  # harness.suite.parts.fingerprint of the part as it ran

    def commit_label(self) -> str:
        """The commit as people read it: 12 characters, or why there is none."""
        return self.commit[:12] if self.commit else "an unknown commit"

    def write(self, folder: str | Path) -> Path:
        return write_json_atomic(Path(folder) / PART_FILE, dataclasses.asdict(self), indent=1)

    @classmethod
    def read(cls, folder: str | Path) -> "PartMeta":
        path = Path(folder) / PART_FILE
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def config(self):
        """The measured model's ModelConfig, or None when the part did not record it."""
        from harness.config import ModelConfig
        return ModelConfig.from_hf_dict(self.model_config, name=self.model) if self.model_config else None


def read_part_meta(folder: str | Path) -> PartMeta | None:
    """The part.json of a run folder, or None for folders `run` and `compare` made."""
    return PartMeta.read(folder) if (Path(folder) / PART_FILE).is_file() else None
