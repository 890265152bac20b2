"""Command-line options shared by the phases' own timing tools (`python -m phases.phaseN`), which
time the part a phase changes against the phase before it, outside the MPI harness."""
from __future__ import annotations

import argparse


def part_timing_parser(prog: str, doc: str, seq_default: str, repeat_default: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="synthetic model preset (tiny, tiny-top3, small; default small)")
    ap.add_argument("--seq-len", default=seq_default, help=f"comma-separated prompt lengths (default {seq_default})")
    ap.add_argument("--repeat", type=int, default=repeat_default, help=f"timed runs of each part (default {repeat_default})")
    ap.add_argument("--forward", action="store_true", help="also time whole forwards (slow on big presets)")
    ap.add_argument("--device", default="auto", help="GPU index, or 'auto' = MPI local rank (default)")
    return ap


def parse_part_timing(ap: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, list[int]]:
    """Parse, and check --seq-len / --repeat, failing the way argparse does (exit 2, a message)."""
    args = ap.parse_args(argv)
    try:
        seq_lens = [int(s) for s in args.seq_len.split(",")]
    except ValueError:
        ap.error(f"--seq-len must be comma-separated integers, got {args.seq_len!r}")
    if min(seq_lens) < 1 or args.repeat < 1:
        ap.error("every --seq-len and --repeat must be >= 1")
    return args, seq_lens
