"""`regress`: exit non-zero when throughput fell or validation failed (what CI calls)."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  python -m harness regress runs/today --against results/last-release
  python -m harness regress runs/today/summary.csv --against baseline-summary.csv --max-drop 3%

Rows match on (engine, dtype, seq_len, ranks, batch); tokens_per_s is compared. Exit status:
0 all matched variants within the threshold; 1 a drop beyond it, a variant that failed to run,
or one that is INVALID, of any dtype (each dtype has a gate it can pass: fp32 at 1e-3, bf16/fp16
against plain torch in that dtype, harness.jobs.gate); 2 bad arguments, a folder that holds no run
(no summary.csv or readable records), or nothing in common. A variant INTERRUPTED in CURRENT fails
(it was not measured); one in REFERENCE counts as absent. Variants only in the reference are listed as missing
(--require-all makes that a failure). Throughput is noisy: choose --max-drop above the spread of
two runs of the same commit on the same machine.

Kernel-level regressions: the pytest-benchmark microbenchmarks under tests/bench,
  pytest tests/bench --benchmark-save=ref                       (on the reference commit)
  pytest tests/bench --benchmark-compare --benchmark-compare-fail=mean:5%
"""


def add_parser(sub) -> None:
    p = sub.add_parser("regress", help="fail (exit 1) when a variant's throughput dropped or validation failed",
                       description="Compare a run with a reference run and exit 1 on a regression.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("current", metavar="CURRENT", help="run folder (runs/<run-id>) or summary.csv to check")
    p.add_argument("--against", required=True, metavar="REFERENCE", help="run folder or summary.csv to compare with")
    p.add_argument("--max-drop", default="5%", help="largest tolerated fall in tokens/s: 5%% or 0.05 "
                   "(default: %(default)s)")
    p.add_argument("--require-all", action="store_true", help="also fail when a reference variant is missing")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.report.regress import RegressError, compare, load_summary, parse_drop
    try:
        max_drop = parse_drop(args.max_drop)
        verdict = compare(load_summary(args.current), load_summary(args.against), max_drop, args.require_all)
    except RegressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in verdict.passes:
        print(f"ok    {line}")
    for line in verdict.warnings:
        print(f"note  {line}")
    for line in verdict.failures:
        print(f"FAIL  {line}")
    print(f"\n{'PASS' if verdict.ok else 'REGRESSION'}: {len(verdict.passes)} within {100 * max_drop:g}%, "
          f"{len(verdict.failures)} failing, {len(verdict.warnings)} note(s)")
    return 0 if verdict.ok else 1
