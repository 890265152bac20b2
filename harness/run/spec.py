"""WorkerSpec: everything one variant's ranks need, written by the launcher as spec.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.atomic import write_text_atomic


@dataclass
class WorkerSpec:
    """Everything one variant's ranks need; written by the launcher as spec.json."""
    engine: str
    model: str  # checkpoint path (HF folder or model.bin)
    inputs: str  # inputs.bin
    record: str  # where rank 0 writes the JSON record
    answers: str | None = None  # answers.bin; None: no validation
    samples: int | None = None  # first N samples of inputs.bin; None: all
    batch: int | None = None  # most samples per forward call; None: the engine's max_batch
    budget_s: float = 60.0
    warmup: int = 3
    device: str = "auto"  # auto | cpu | gpu
    options: dict = field(default_factory=dict)  # engine constructor keywords (e.g. dtype)
    outputs: str | None = None  # write outputs.bin here
    tol: float = 1e-3
    seq_len: int | None = None  # what the launcher expects (for records of runs that failed early)
    nvml_interval_s: float = 0.1
    run_id: str | None = None
    variant: str | None = None
    model_label: str | None = None
    workload: str = "prefill"  # "generate": harness.run.generate runs the timed part
    max_new_tokens: int = 32
    greedy_answers: str | None = None  # .npy of the reference's greedy tokens [n, steps]
    profile_ops: bool = False  # after the timed region, one forward under torch.profiler

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(asdict(self), indent=1))  # the ranks never read half a spec

    @classmethod
    def read(cls, path: str | Path) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


GROUP_KEY = "specs"  # a spec group file: {"specs": [spec.json paths]}, run in turn on one engine


def write_spec_group(path: str | Path, spec_paths: list[str | Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({GROUP_KEY: [str(Path(p).resolve()) for p in spec_paths]}, indent=1))
    return path


def read_specs(paths: list[str]) -> list[WorkerSpec]:
    """Spec files and spec group files, in order."""
    specs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if GROUP_KEY in data and "engine" not in data:
            specs += [WorkerSpec.read(p) for p in data[GROUP_KEY]]
        else:
            specs.append(WorkerSpec(**data))
    return specs


def check_one_engine(specs: list[WorkerSpec]) -> None:
    """Specs sharing an engine must agree on what builds it."""
    first = specs[0]
    for s in specs[1:]:
        for key in ("engine", "model", "device", "options"):
            if getattr(s, key) != getattr(first, key):
                raise ValueError(f"specs {first.variant} and {s.variant} differ in {key} "
                                 f"({getattr(first, key)!r} vs {getattr(s, key)!r}); one engine cannot run both")
