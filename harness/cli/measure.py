"""What `run` and `compare` share after their checks: prepare the job, measure each variant in
turn (skipping those a resumed run finished), stop cleanly on Ctrl-C or SIGTERM, and write
summary.csv and report.html for whatever was measured."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.cli.job_args import prepare_jobs, settings_from
from harness.cli.run_folder import DEFAULT_OUT, clear_for_fresh_run
from harness.errors import UsageError
from harness.run.interrupt import Interrupted, stop_on_signals


@dataclass
class Measured:
    folder: Path
    records: list = field(default_factory=list)  # (Variant, VariantRecord), in plan order
    kept: list = field(default_factory=list)  # names of the variants a resumed run had finished
    planned: int = 0
    interrupted: Interrupted | None = None

    @property
    def failed(self) -> list[str]:
        return [v.name for v, rec in self.records if rec.error]


def measure(args, seq_lens: list[int] | None, plan_for, folder: Path, progress: bool = False) -> Measured:
    """plan_for(jobs) -> the Variants to measure, in order. Interrupted is caught here, after
    the variant it stopped has its INTERRUPTED record."""
    from tqdm import tqdm

    from harness.run.variant import finished_record, run_variant
    settings = settings_from(args)
    clear_for_fresh_run(folder, args)
    out = Measured(folder)
    with stop_on_signals():
        try:
            jobs = prepare_jobs(args, seq_lens)
            plan = plan_for(jobs)
            out.planned = len(plan)
            bar = tqdm(plan, unit="variant", disable=not progress)
            for v in bar:
                bar.set_description(v.name)
                kept = finished_record(v, folder) if args.resume else None
                if kept is not None:
                    _check_same_job(kept, jobs[v.seq_len], settings.workload, v.name)
                    out.records.append((v, kept))
                    out.kept.append(v.name)
                    continue
                rec = run_variant(v, jobs[v.seq_len], folder, settings)
                out.records.append((v, rec))
                if rec.error and progress:
                    first = rec.error.strip().splitlines()[0] if rec.error.strip() else "failed"
                    tqdm.write(f"{v.name}: FAILED ({first}); logs in {folder / 'logs'}", file=sys.stderr)
            bar.close()
        except Interrupted as e:
            out.interrupted = e
            if getattr(e, "record", None) is not None:  # the variant it stopped (see run_variant)
                out.records.append((v, e.record))
    return out


def _check_same_job(rec, job, workload: str, name: str) -> None:
    """--resume keeps a record only if it measured this job; else the summary would mix two."""
    theirs = (rec.model, rec.samples_requested, rec.workload)
    ours = (job.model_label, job.samples, workload)
    if theirs != ours:
        raise UsageError(f"--resume: {name} was measured on {theirs[0]} with {theirs[1]} samples ({theirs[2]}), this "
                         f"run asks for {ours[0]} with {ours[1]} samples ({ours[2]}); use --force to start afresh or "
                         "another --run-id")


def write_summary(m: Measured, args) -> int:
    """summary.csv and report.html of the run folder, the terminal's table, and the exit status:
    128 + signal when interrupted, 1 when a variant failed, else 0."""
    from harness.report.html import short_table, write_report
    if m.kept:
        print(f"kept {len(m.kept)} variant(s) the earlier run finished: {', '.join(m.kept)}", file=sys.stderr)
    if (m.folder / "records").is_dir() and any((m.folder / "records").glob("*.json")):
        csv_path, html_path, df = write_report([m.folder])
        print(short_table(df))
        print(f"\nwrote {csv_path}\n      {html_path}")
    if m.interrupted is not None:
        print(_interrupted_text(m, args), file=sys.stderr)
        return m.interrupted.exit_status
    if m.failed:
        print(f"{len(m.failed)} variant(s) failed: {', '.join(m.failed)}", file=sys.stderr)
        return 1
    return 0


def _interrupted_text(m: Measured, args) -> str:
    name = m.interrupted.signame
    if not m.planned:
        return f"interrupted by {name} while preparing the job (model, prompts, answers): nothing was measured"
    stopped = getattr(m.interrupted, "record", None)
    left = m.planned - len(m.records)
    return (f"interrupted by {name}: every process of the job was stopped"
            + (f"; {stopped.variant} is marked INTERRUPTED" if stopped is not None else "")
            + (f"; {left} variant(s) not started" if left > 0 else "")
            + f". To measure the rest: the same command with --resume --run-id {args.run_id}"
            + (f" --out {args.out}" if args.out != DEFAULT_OUT else ""))
