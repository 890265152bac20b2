"""One variant = one `mpiexec` job: write its spec, launch the ranks, return its record.

Whatever happens to the job (a crash, a rank killed, a hang past the timeout, an engine that is
not built yet), the caller gets a VariantRecord: the worker's own, or one made here with
valid=False and the tail of the job's output, so a comparison carries on and reports the
failure as a row. Ctrl-C or SIGTERM (harness.run.interrupt.Interrupted) is the exception: the
job is ended, an INTERRUPTED record is written, and Interrupted goes on to the command.

Run folder layout (runs/<run-id>/ by default):
    records/<variant>.json   the raw JSON record, one per variant (what `report` rebuilds from)
    specs/<variant>.json     what the ranks were told
    logs/<variant>.{cmd,stdout.log,stderr.log}, logs/<variant>.ranks/ (each rank's status and output)
    summary.csv, report.html (written by harness.report.html)
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.jobs.prepare import PreparedJob
from harness.report.metrics import failure_record
from harness.report.records import INTERRUPTED, VariantRecord
from harness.run.interrupt import Interrupted
from harness.run.launch import MPILaunchError, launch_worker
from harness.run.worker import WorkerSpec


@dataclass(frozen=True)
class Variant:
    engine: str
    seq_len: int
    ranks: int
    batch: int | None = None  # most samples per forward; None: the engine's own max_batch
    dtype: str | None = None  # None: the engine's default
    # Engine options of this variant alone, over the run's (e.g. (("expert_parallel", True),)):
    # they end its name, so two variants of one engine differing only in them keep two records.
    options: tuple = ()

    @property
    def name(self) -> str:
        parts = [self.engine] + ([self.dtype] if self.dtype else [])
        parts += [f"s{self.seq_len}", f"r{self.ranks}", f"b{self.batch}" if self.batch else "bmax"]
        parts += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.options]
        return "-".join(parts)


@dataclass
class RunSettings:
    run_id: str
    budget_s: float = 60.0
    warmup: int = 3
    device: str = "auto"
    options: dict = field(default_factory=dict)
    hostfile: str | None = None
    mpiexec_args: list[str] = field(default_factory=list)
    timeout_s: float | None = None  # None: budget + a generous allowance for load and warm-up
    outputs: str | None = None  # write outputs.bin (run only)
    workload: str = "prefill"  # or "generate"
    max_new_tokens: int = 32
    profile_ops: bool = False

    def launch_timeout(self) -> float:
        return self.timeout_s if self.timeout_s else self.budget_s + 1800.0


def run_variant(variant: Variant, job: PreparedJob, run_dir: Path, settings: RunSettings) -> VariantRecord:
    run_dir = Path(run_dir)
    record_path = run_dir / "records" / f"{variant.name}.json"
    record_path.unlink(missing_ok=True)  # a stale record must not pass for this run's
    options = {**settings.options, **dict(variant.options)}
    if variant.dtype:
        options["dtype"] = variant.dtype
    spec = WorkerSpec(
        engine=variant.engine, model=str(job.model), inputs=str(job.inputs), record=str(record_path.resolve()),
        answers=str(job.answers) if job.answers else None, samples=job.samples, batch=variant.batch,
        budget_s=settings.budget_s, warmup=settings.warmup, device=settings.device, options=options,
        outputs=str(Path(settings.outputs).resolve()) if settings.outputs else None,
        seq_len=job.seq_len, run_id=settings.run_id, variant=variant.name, model_label=job.model_label,
        workload=settings.workload, max_new_tokens=settings.max_new_tokens,
        greedy_answers=str(job.greedy_answers) if job.greedy_answers else None,
        profile_ops=settings.profile_ops,
    )
    spec_path = spec.write(run_dir / "specs" / f"{variant.name}.json")
    started = time.monotonic()
    try:
        result = launch_worker(spec_path, variant.ranks, run_dir / "logs", variant.name,
                               timeout_s=settings.launch_timeout(), hostfile=settings.hostfile,
                               extra_args=settings.mpiexec_args)
    except MPILaunchError as e:
        return _failed(spec, variant, str(e), record_path)
    except Interrupted as e:  # the job is gone already (launch_worker ended it)
        e.record = _failed(spec, variant, f"INTERRUPTED by {e.signame} after {time.monotonic() - started:.1f} s, "
                           "before the variant finished; `--resume` measures it again", record_path,
                           status=INTERRUPTED)
        raise
    if record_path.exists():
        rec = VariantRecord.read(record_path)
        if not result.ok and not rec.error:
            rec.error = result.describe_failure()
            rec.write(record_path)
        return rec
    return _failed(spec, variant, result.describe_failure(), record_path)


def _failed(spec: WorkerSpec, variant: Variant, message: str, record_path: Path, **known) -> VariantRecord:
    rec = failure_record(spec, message, ranks=variant.ranks, **known)
    rec.write(record_path)
    return rec


def finished_record(variant: Variant, run_dir: Path) -> VariantRecord | None:
    """The variant's record in run_dir when it ran to the end (valid or not), else None: what
    `--resume` skips. FAILED and INTERRUPTED variants run again."""
    path = Path(run_dir) / "records" / f"{variant.name}.json"
    try:
        rec = VariantRecord.read(path)
    except (OSError, ValueError, TypeError):
        return None
    return rec if rec.error is None else None
