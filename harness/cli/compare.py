"""`compare`: every variant in its own mpiexec job, then summary.csv and report.html."""
from __future__ import annotations

import argparse
import sys

from harness.cli.job_args import (DEFAULT_SEQ_LEN, add_job_args, check_engine, check_job_args, parse_int_list,
                                  parse_phases)
from harness.cli.measure import measure, write_summary
from harness.cli.preflight import preflight
from harness.cli.run_folder import run_dir
from harness.engines.base import ENGINES, PHASE_ENGINES
from harness.errors import UsageError

DEFAULT_BATCH = 1024  # one group key for all variants; a cap high enough that phase 5 and optimized batch fully

EPILOG = f"""\
examples:
  python -m harness compare                                   # phases 0-5 on the synthetic full model
  python -m harness compare --phases 0-5 --engines optimized,hf --seq-len 16,128,512 --ranks 1,2,4
  python -m harness compare --phases none --engines reference --preset tiny --ranks 1,2
  python -m harness compare --phases 0,5 --data jobs/x/inputs.bin --answers jobs/x/answers.bin

Variants = (phases + engines) x seq-len x ranks, each its own mpiexec job: a crash, a killed
rank or a hang in one becomes a FAILED row (valid=False, error text) and the rest still run.
Output in OUT/RUN_ID/ (OUT is runs/ unless --out says): summary.csv, report.html,
records/*.json (raw), logs/. Speedups are within a (seq_len, ranks, batch) group; --batch
(default {DEFAULT_BATCH}) caps samples per forward and engines that take fewer (phases 0-4 take 1)
get fewer, so phase 5's batching shows against phase 0.

Before anything is written or launched, the inputs, answers, checkpoint, engines (GPU engines
need a visible GPU) and the machine's memory and disk are checked. An existing run folder is
refused unless --resume (measure only the variants that did not finish) or --force (afresh).
Ctrl-C (or SIGTERM) stops the running variant's every rank within seconds, marks it
INTERRUPTED and still writes summary.csv and report.html for the variants that finished.
Exit status: 0 when every variant ran (INVALID outputs are reported, not fatal), 1 when any
failed, 2 on bad arguments or a failed check, 130 when interrupted. To gate CI on throughput
use `python -m harness regress`.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="run phases/engines over seq-lens and rank counts; write summary.csv + report.html",
        description="Measure several variants under MPI and report them side by side. With no --model/--data "
                    "it uses the synthetic lfm2-8b-a1b checkpoint and a seeded prompt set with reference "
                    "answers, both generated once and cached.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default="0-5", help="roadmap phases: a range 0-5, a list 0,2,4, one phase 3, "
                   "or none (default: %(default)s; 0 = baseline)")
    p.add_argument("--engines", default="", help="more engines, comma separated: " + ", ".join(
        e for e in ENGINES if e not in PHASE_ENGINES) + " (e.g. optimized,hf)")
    p.add_argument("--seq-len", help=f"prompt lengths, comma separated (default: {DEFAULT_SEQ_LEN}); not with --data")
    p.add_argument("--ranks", default="1", help="MPI rank counts, comma separated (default: %(default)s)")
    add_job_args(p, batch_default=DEFAULT_BATCH)
    p.set_defaults(func=main)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def variants_from(args) -> list[str]:
    engines = [PHASE_ENGINES[p] for p in parse_phases(args.phases)]
    for name in (x.strip() for x in args.engines.split(",")):
        if name:
            name = check_engine(name)
            if name not in engines:
                engines.append(name)
    if not engines:
        raise UsageError("nothing to run: --phases none and no --engines; e.g. --phases 0-5 or --engines reference")
    return engines


def main(args: argparse.Namespace) -> int:
    from harness.run.variant import Variant

    engines = variants_from(args)
    ranks_list = parse_int_list(args.ranks, "--ranks")
    if args.data and args.seq_len:
        raise UsageError("--seq-len comes from the --data file; give one or the other")
    seq_lens = parse_int_list(args.seq_len, "--seq-len") if args.seq_len else [DEFAULT_SEQ_LEN]
    check_job_args(args)
    folder = run_dir(args)
    preflight(args, engines, ranks_list, seq_lens, "compare")

    def plan_for(jobs):
        plan = [Variant(e, s, r, args.batch, args.dtype) for s in jobs for r in ranks_list for e in engines]
        print(f"run {args.run_id}: {len(plan)} variant(s) -> {folder}", file=sys.stderr)
        return plan
    return write_summary(measure(args, seq_lens, plan_for, folder, progress=not args.no_progress), args)
