"""`make-data`: a seeded prompt set (inputs.bin) and the reference's answers (answers.bin)."""
from __future__ import annotations

import argparse
from pathlib import Path

from harness.jobs.files import make_job
from harness.cli.model_args import add_model_args, open_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "make-data", help="write inputs.bin + answers.bin (reference logits) for a seeded prompt set",
        description="Generate a job: NUM_SAMPLES prompts of SEQ_LEN random token ids (BOS first, seeded), "
                    "written as inputs.bin in the original program's format, and the reference forward's "
                    "last-position logits as answers.bin, against which every engine is validated "
                    "(1e-3 absolute). The reference runs in float64 on the CPU, or float32 on a GPU.",
        epilog="example: python -m harness make-data --preset tiny --samples 8 --seq-len 16 --out jobs/tiny")
    add_model_args(p)
    p.add_argument("--samples", type=int, default=8, help="number of prompts (default: 8)")
    p.add_argument("--seq-len", type=int, default=16, help="tokens per prompt (default: 16)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the prompts (default: 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where the reference runs (default: cuda if present)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for inputs.bin and answers.bin")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    if args.samples < 1 or args.seq_len < 1:
        raise UsageError("--samples and --seq-len must be at least 1")
    ckpt = open_model(args)
    inputs, answers = make_job(ckpt, args.samples, args.seq_len, args.data_seed, Path(args.out), device=args.device)
    print(f"wrote {inputs} ({args.samples} x {args.seq_len} tokens) and {answers} "
          f"({args.samples} x {ckpt.config.vocab_size} logits)")
    return 0
