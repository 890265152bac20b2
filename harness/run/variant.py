"""One variant = one `mpiexec` job: write its spec, launch the ranks, return its record. Or a group
of variants that share an engine (same engine, dtype, ranks, options; other shapes) = one job that
loads the engine once (run_group).

Whatever happens to the job (a crash, a rank killed, a hang past the timeout, an engine that is
not built yet), the caller gets a VariantRecord: the worker's own, or one made here with
valid=False and the tail of the job's output, so a comparison carries on and reports the
failure as a row. Ctrl-C or SIGTERM (harness.run.interrupt.Interrupted) is the exception: the
job is ended, an INTERRUPTED record is written, and Interrupted goes on to the command.

Run folder layout (runs/<run-id>/ by default):
    records/<variant>.json   the raw JSON record, one per variant (what `report` rebuilds from)
    specs/<variant>.json     what the ranks were told (specs/<group>.group.json for a group)
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
from harness.run.spec import WorkerSpec, write_spec_group

LOAD_ALLOWANCE_S = 1800.0  # beyond the timed budget: start-up, the engine's load and warm-up, the report


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
    label: str | None = None  # a short name for a run's own options instead (the suite's "ep")

    @property
    def name(self) -> str:
        parts = [self.engine] + ([self.dtype] if self.dtype else [])
        parts += [f"s{self.seq_len}", f"r{self.ranks}", f"b{self.batch}" if self.batch else "bmax"]
        parts += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.options]
        return "-".join(parts + ([self.label] if self.label else []))


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
    nvml_interval_s: float = 0.1  # NVML sampling period in the timed region

    def launch_timeout(self) -> float:
        return self.timeout_s if self.timeout_s else self.budget_s + LOAD_ALLOWANCE_S


def worker_spec(variant: Variant, job: PreparedJob, run_dir: Path, settings: RunSettings) -> WorkerSpec:
    """What the variant's ranks are told; a stale record at its path is removed first (it must not
    pass for this run's)."""
    record_path = Path(run_dir) / "records" / f"{variant.name}.json"
    record_path.unlink(missing_ok=True)
    options = {**settings.options, **dict(variant.options)}
    if variant.dtype:
        options["dtype"] = variant.dtype
    return WorkerSpec(
        engine=variant.engine, model=str(job.model), inputs=str(job.inputs), record=str(record_path.resolve()),
        answers=str(job.answers) if job.answers else None, samples=job.samples, batch=variant.batch,
        budget_s=settings.budget_s, warmup=settings.warmup, device=settings.device, options=options,
        outputs=str(Path(settings.outputs).resolve()) if settings.outputs else None,
        seq_len=job.seq_len, run_id=settings.run_id, variant=variant.name, model_label=job.model_label,
        workload=settings.workload, max_new_tokens=settings.max_new_tokens,
        greedy_answers=str(job.greedy_answers) if job.greedy_answers else None,
        profile_ops=settings.profile_ops, nvml_interval_s=settings.nvml_interval_s,
    )


def run_variant(variant: Variant, job: PreparedJob, run_dir: Path, settings: RunSettings) -> VariantRecord:
    run_dir = Path(run_dir)
    spec = worker_spec(variant, job, run_dir, settings)
    record_path = Path(spec.record)
    spec_path = spec.write(run_dir / "specs" / f"{variant.name}.json")
    started = time.monotonic()
    try:
        result = launch_worker(spec_path, variant.ranks, run_dir / "logs", variant.name,
                               timeout_s=settings.launch_timeout(), hostfile=settings.hostfile,
                               extra_args=settings.mpiexec_args)
    except MPILaunchError as e:
        return _failed(spec, variant, str(e), record_path)
    except Interrupted as e:  # the job is gone already (launch_worker ended it)
        e.record = _interrupted(spec, variant, e, started, record_path)
        raise
    if record_path.exists():
        rec = VariantRecord.read(record_path)
        if not result.ok and not rec.error:
            rec.error = result.describe_failure()
            rec.write(record_path)
        return rec
    return _failed(spec, variant, result.describe_failure(), record_path)


def run_group(members: list[tuple[Variant, PreparedJob, RunSettings]], run_dir: Path, name: str) -> list[VariantRecord]:
    """Several variants of one engine, dtype, rank count and options (shapes: seq_len, batch,
    samples, budget, warm-up) as ONE mpiexec job whose ranks load the engine once and run each in
    turn. One record per member, in order; a member left without one (the job crashed or timed out
    before it) gets a failure record with the job's output. Records written before a crash stand;
    on Ctrl-C the members without a record are marked INTERRUPTED and Interrupted goes on."""
    run_dir = Path(run_dir)
    first, _, base = members[0]
    for v, _, s in members[1:]:
        if (v.engine, v.dtype, v.ranks, v.options) != (first.engine, first.dtype, first.ranks, first.options) or \
                (s.options, s.device, s.hostfile, s.mpiexec_args) != (base.options, base.device, base.hostfile,
                                                                       base.mpiexec_args):
            raise ValueError(f"{v.name} cannot share an engine with {first.name}: engine, dtype, ranks, options, "
                             "device and MPI settings must be the same")
    specs = [worker_spec(v, job, run_dir, s) for v, job, s in members]
    group = write_spec_group(run_dir / "specs" / f"{name}.group.json",
                             [spec.write(run_dir / "specs" / f"{v.name}.json") for spec, (v, _, _) in zip(specs, members)])
    timeout = base.timeout_s or sum(s.budget_s for _, _, s in members) + LOAD_ALLOWANCE_S
    started = time.monotonic()
    try:
        result = launch_worker(group, first.ranks, run_dir / "logs", name, timeout_s=timeout,
                               hostfile=base.hostfile, extra_args=base.mpiexec_args)
        failure = None if result.ok else result.describe_failure()
    except MPILaunchError as e:
        failure = str(e)
    except Interrupted as e:
        for spec, (v, _, _) in zip(specs, members):
            if not Path(spec.record).exists():
                e.record = _interrupted(spec, v, e, started, Path(spec.record))
        raise
    records = []
    for spec, (v, _, _) in zip(specs, members):
        path = Path(spec.record)
        if path.exists():
            records.append(VariantRecord.read(path))
        else:
            records.append(_failed(spec, v, failure or "the group's job ended without this variant's record", path))
    return records


def _interrupted(spec: WorkerSpec, variant: Variant, e: Interrupted, started: float, path: Path) -> VariantRecord:
    return _failed(spec, variant, f"INTERRUPTED by {e.signame} after {time.monotonic() - started:.1f} s, before "
                   "the variant finished; `--resume` measures it again", path, status=INTERRUPTED)


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
