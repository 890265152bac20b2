"""`python -m harness COMMAND`: make a model and a job, run and compare the engines, report, gate.

A first session on a CPU machine:
    python -m harness make-model --preset tiny --out models/tiny
    python -m harness make-data --model models/tiny --samples 4 --seq-len 16 --out jobs/tiny
    python -m harness run --engine reference --model models/tiny --data jobs/tiny/inputs.bin
On a GPU machine, the whole comparison (synthetic full-size model, generated and cached):
    python -m harness compare --phases 0-5
"""
from __future__ import annotations

import argparse
import importlib
import sys

# One module of harness.cli per subcommand; each has add_parser(subparsers) which sets func=main.
COMMANDS = ["make_model", "make_data", "info", "run", "compare", "suite", "report", "publish", "regress", "explain"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"harness.cli.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from harness.errors import UserError
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
