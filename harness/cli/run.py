"""`run`: one variant under MPI, one JSON record."""
from __future__ import annotations

import argparse

from harness.cli.job_args import DEFAULT_SEQ_LEN, add_job_args, at_least, check_engine, check_job_args
from harness.cli.measure import measure, write_summary
from harness.cli.preflight import preflight
from harness.cli.run_folder import run_dir
from harness.engines.base import ENGINES
from harness.errors import UsageError
from harness.report.records import INTERRUPTED

EPILOG = """\
examples:
  python -m harness run --engine reference --preset tiny --samples 4 --ranks 2
  python -m harness run --engine baseline --data jobs/x/inputs.bin --answers jobs/x/answers.bin
  python -m harness run --engine hf --dtype bf16 --samples 64 --seq-len 16 --batch 64

The record lands in OUT/RUN_ID/records/<variant>.json (OUT is runs/ unless --out says), logs
beside it, summary.csv and report.html over every record in the folder. An existing run folder
is refused unless --resume (add this variant, or skip it if it finished there) or --force (start
afresh). The inputs, answers, checkpoint, engine and the machine's memory and disk are checked
before anything is written or launched. Ctrl-C (or SIGTERM) stops every rank within seconds and
marks the variant INTERRUPTED. Exit status: 0 when the variant ran and validated (or was not
validated), 1 when it failed or its outputs were INVALID, 2 on bad arguments or a failed check,
130 when interrupted.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run one engine under mpiexec and write its JSON record",
        description="Run one variant the way the original program ran: every rank loads the model, rank 0 "
                    "reads the inputs and broadcasts them, samples are split in contiguous ranges, a warm-up "
                    "(3 forwards of sample 0) precedes the timed region (two barriers after a device sync), "
                    "outputs come back to rank 0 and are validated against the answers (1e-3 absolute). "
                    "Engines: " + ", ".join(ENGINES) + " (baseline = phase 0).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, metavar="NAME", help="which variant: " + ", ".join(ENGINES))
    p.add_argument("--seq-len", type=int, help=f"tokens per synthetic prompt (default: {DEFAULT_SEQ_LEN}); "
                   "not with --data")
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks (default: 1); GPUs are assigned round-robin")
    p.add_argument("--outputs", metavar="OUTPUTS_BIN", help="also write the logits as outputs.bin "
                   "(the samples that ran, in order)")
    add_job_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.run.variant import Variant
    engine = check_engine(args.engine)
    at_least("--ranks", args.ranks, 1)
    at_least("--seq-len", args.seq_len, 1)
    check_job_args(args)
    if args.data and args.seq_len:
        raise UsageError("--seq-len comes from the --data file; give one or the other")
    folder = run_dir(args)
    seq_len = args.seq_len or DEFAULT_SEQ_LEN
    preflight(args, [engine], [args.ranks], [seq_len], "run")
    measured = measure(args, [seq_len], lambda jobs: [Variant(engine, job.seq_len, args.ranks, args.batch, args.dtype)
                                                       for job in jobs.values()], folder)
    for v, rec in measured.records:
        print(describe(rec))
        print(f"record: {folder / 'records' / (v.name + '.json')}")
    rc = write_summary(measured, args)
    if rc == 0 and any(rec.valid is False for _, rec in measured.records):
        return 1
    return rc


def describe(rec) -> str:
    """A few lines a person reads after a run."""
    if rec.error:
        return f"{rec.variant}: {'INTERRUPTED' if rec.status == INTERRUPTED else 'FAILED'}\n{rec.error}"
    status = {True: "VALID", False: "INVALID", None: "not validated"}[rec.valid]
    if rec.workload == "generate":
        floor = (f" ({rec.pct_of_decode_floor:.2g}% of the H100's decode floor)" if rec.pct_of_decode_floor is not None
                 else "")
        lines = [f"{rec.variant}: {rec.samples}/{rec.samples_requested} prompts on {rec.ranks} rank(s), "
                 f"{rec.max_new_tokens} new tokens each: TTFT {rec.ttft_ms:.4g} ms, inter-token p50 "
                 f"{rec.itl_p50_ms:.4g} / p90 {rec.itl_p90_ms:.4g} / p99 {rec.itl_p99_ms:.4g} ms, "
                 f"decode {rec.decode_tokens_per_s:.4g} tokens/s{floor}"
                 if rec.itl_p50_ms is not None else
                 f"{rec.variant}: {rec.samples} prompts, TTFT {rec.ttft_ms:.4g} ms (one new token: no decode steps)",
                 f"  {status}"]
    else:
        lines = [f"{rec.variant}: {rec.samples}/{rec.samples_requested} samples on {rec.ranks} rank(s), "
                 f"{rec.samples_per_s:.4g} samples/s, {rec.tokens_per_s:.4g} tokens/s, "
                 f"p50 {rec.latency_p50_ms:.4g} ms per call of {rec.batch_used}",
                 f"  {status}" + (f" (max abs err {rec.max_abs_err:.3g}, top-1 {100 * rec.top1_agreement:.1f}%)"
                                  if rec.valid is not None else "")]
    lines += [f"  note: {n}" for n in rec.notes]
    return "\n".join(lines)
