"""`report`: rebuild summary.csv and report.html from saved JSON records."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

EPILOG = """\
examples:
  python -m harness report runs/20261124-101500               # rebuild in place
  python -m harness report runs/before runs/after --out runs/before-vs-after
  python -m harness report runs/phases0-3 runs/phases4-5 --merge --out runs/phases0-5

With one run folder the files are rewritten inside it (not in a suite part of results/: its report is
the suite's, so give --out); with several, into --out (default:
<first run's parent>/side-by-side-<timestamp>), one row per (run, variant) plus a tokens/s table with the runs
as columns. --merge instead reads several runs as one comparison (speedups across them, per
seq_len and rank count): for slow variants measured in separate calls. The HTML is self-contained (embedded PNG plots, no network).
Kernel microbenchmarks live apart: pytest tests/bench --benchmark-compare-fail=mean:5%
"""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild summary.csv + report.html from run folders' JSON records",
                       description="Read RUN_DIR/records/*.json of each run folder and write summary.csv and "
                                   "report.html (table, throughput, speedups, GPU utilization and PCIe over time, "
                                   "scaling with ranks).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s): runs/<run-id> (or --out/<run-id>)")
    p.add_argument("--out", metavar="DIR", help="where to write (default: the run folder, or a new "
                   "side-by-side folder for several)")
    p.add_argument("--merge", action="store_true", help="several runs are one comparison: speedup_vs_phase0 "
                   "and speedup_vs_prev across them, per (seq_len, ranks); each engine once per group")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    from harness.report.html import ReportError, short_table, write_report
    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        raise UsageError(f"no such run folder: {', '.join(missing)} (expected a run folder such as runs/<run-id>)")
    out = args.out
    if args.merge and len(args.run_dirs) < 2:
        raise UsageError("--merge needs two or more run folders")
    if out is None and len(args.run_dirs) > 1:
        kind = "merged" if args.merge else "side-by-side"
        out = Path(args.run_dirs[0]).parent / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    _refuse_suite_part(Path(out) if out is not None else Path(args.run_dirs[0]))
    try:
        csv_path, html_path, df = write_report(args.run_dirs, out, merge=args.merge)
    except ReportError as e:
        raise UsageError(str(e)) from None
    print(short_table(df))
    print(f"\nwrote {csv_path}\n      {html_path}")
    return 0


def _refuse_suite_part(dest: Path) -> None:
    """A suite part's summary.csv and report.html are what `suite` wrote on the commit its part.json
    names (results/ publishes them): rebuilding them with other code would change a published
    measurement, so `report` writes them only elsewhere."""
    from harness.errors import UsageError
    from harness.report.part_meta import read_part_meta
    meta = read_part_meta(dest)
    if meta is not None:
        raise UsageError(f"{dest} is the suite part {meta.part!r}, measured at {meta.commit_label()}: its report is "
                         f"the suite's and stays as written; give --out DIR to rebuild it elsewhere, or re-measure "
                         f"it with `{meta.command} --force`")
