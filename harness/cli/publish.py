"""`publish`: regenerate results/README.md and the README's results table from the part folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  python -m harness publish                 # after `python -m harness suite`: rewrite both files
  python -m harness publish --check         # CI: exit 1 when either file differs from the results

Reads results/<gpu>/<part>/part.json and records/ of every part `python -m harness suite` wrote,
and writes results/README.md (one row per measurement: part, shape, engine vs peer, ratio, % of
the floor, validity, device, commit, date; the exact command of each part) and the block of
README.md between the lines <!-- suite-table:begin --> and <!-- suite-table:end --> (the
headline rows). The output depends on the part folders only, so a test can regenerate it.
Exit status: 0 written (or, with --check, up to date), 1 --check found a stale file, 2 bad
arguments (no README markers, a --smoke part under results/, unreadable records).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("publish", help="regenerate results/README.md and README.md's results table from results/",
                       description="Turn the suite's part folders into the published tables.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="root of the part folders (default: %(default)s)")
    p.add_argument("--readme", default="README.md", help="the README holding the marker lines (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs from what "
                   "publish would write")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.atomic import write_text_atomic
    from harness.suite.publish import render
    outputs = render(Path(args.results), Path(args.readme))
    stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} differs from what `python -m harness publish` makes of {args.results}/", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        write_text_atomic(path, outputs[path])
    print("\n".join(f"wrote {p}" for p in stale) or "both files were up to date")
    return 0
