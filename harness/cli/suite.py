"""`suite`: the canonical measurements, each part into results/<gpu>/<part>/."""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from harness.report.part_meta import PART_FILE, PartMeta
from harness.suite.parts import PARTS, fingerprint


def _measured(name: str, results: Path = Path("results")) -> str:
    """How long the part took where it was last measured, from its part.json under results/<gpu>/."""
    lines = []
    for meta_path in sorted(results.glob(f"*/{name}/{PART_FILE}")):
        try:
            meta = PartMeta.read(meta_path.parent)
        except (OSError, ValueError, TypeError):
            continue  # an unreadable part.json leaves the estimate alone
        changed = "; the part's definition has changed since, so re-run it" if _redefined(meta, PARTS[name]) else ""
        lines.append(f"measured: {meta.duration_s / 60:.1f} min on {meta.device} at {meta.commit_label()} "
                     f"({meta_path.parent}{changed})")
    return "; ".join(lines)


def _redefined(meta: PartMeta, part) -> bool:
    """The published part was measured under another definition than `part`'s: its fingerprint, or
    for part.json files from before the fingerprint, its description."""
    if meta.definition:
        return meta.definition != fingerprint(part)
    return meta.what != part.what


def _parts_text() -> str:
    def wrap(text: str) -> str:
        return textwrap.fill(text, 100, initial_indent=" " * 16, subsequent_indent=" " * 16)
    return "\n".join(f"  {p.name:<13} " + wrap(p.cost)[16:] + "\n" + wrap(p.what)
                     + (("\n" + wrap(m)) if (m := _measured(p.name)) else "") for p in PARTS.values())


def _epilog() -> str:
    return f"""\
parts (estimated time on one H100, the synthetic full-size model cached; a fresh machine adds ~75 s
to generate it, and the first part of each prompt length ~20 s for the reference's answers; where
results/ holds the part, the time it took there, and whether the part has been redefined since):
{_parts_text()}

examples:
  LFM2_GIT_COMMIT=$(git rev-parse --short=12 HEAD) python -m harness suite --part prefill --part sweep
  python -m harness suite --part ladder-16 --force      # measure again, replacing results/h100/ladder-16
  python -m harness suite --smoke --part sweep          # CPU: the reference stands in, tiny model, runs/

Each part runs its variants as groups: one mpiexec job per engine (dtype, ranks, options) loads
the model once and measures each of its shapes in turn. Answers for every shape come from the
reference (fp32 on the GPU), cached by prompt length. A part writes into a hidden folder and
renames it to results/<gpu>/<part>/ (summary.csv, report.html, records/, part.json: command,
commit, date, device, duration) only when it is complete; it refuses to replace an existing one
without --force. Then `python -m harness publish` regenerates results/README.md and the README's
table from every part folder. results/ holds only this command's output.
Exit status: 0 when every variant ran (INVALID outputs are reported, not fatal), 1 when any
failed, 2 on bad arguments.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("suite", help="run the canonical measurements (parts) into results/<gpu>/<part>/",
                       description="Measure the published numbers on a GPU: the optimization ladder, optimized "
                                   "beside hf in prefill and decode, bf16 accuracy, and a roofline sweep, on the "
                                   "synthetic full-size lfm2-8b-a1b checkpoint (generated once and cached).",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", action="append", choices=list(PARTS), metavar="NAME",
                   help="a part to run (repeatable; default: all, in the order listed below)")
    p.add_argument("--out", help="root of the part folders (default: results, or runs/smoke with --smoke)")
    p.add_argument("--force", action="store_true", help="replace part folders that exist (only once the new one "
                   "is complete)")
    p.add_argument("--smoke", action="store_true", help="check the flow on a CPU in seconds: the tiny preset, the "
                   "reference engine standing in for every engine, a few samples per shape; never a published number")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.report.frame import records_frame, short_table
    from harness.suite.runner import check_free, commit_warning, run_part, this_device

    parts = [PARTS[n] for n in dict.fromkeys(args.part or PARTS)]
    out = Path(args.out or ("runs/smoke" if args.smoke else "results"))
    device = this_device(args.smoke)
    check_free(out, parts, device, args.force)
    warning = commit_warning()
    if warning and not args.smoke:
        print(f"warning: {warning}", file=sys.stderr)
    failed = []
    t0 = time.time()
    for part in parts:
        folder, records = run_part(part, out, device, args.smoke, say=lambda m: print(m, file=sys.stderr, flush=True))
        failed += [f"{part.name}/{r.variant}" for r in records if r.error]
        print(f"\n== {part.name} ({folder}) ==\n{short_table(records_frame(records))}")
    print(f"\n{len(parts)} part(s) in {(time.time() - t0) / 60:.1f} min; next: python -m harness publish"
          + (f" --results {out}" if out != Path("results") else ""))
    if failed:
        print(f"{len(failed)} variant(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
