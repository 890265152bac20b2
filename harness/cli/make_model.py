"""`python -m harness make-model`: write a synthetic checkpoint to disk."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.checkpoints.modelbin import write_model_bin
from harness.checkpoints.staging import holds_checkpoint_files_only, staged_folder
from harness.atomic import write_json_atomic
from harness.checkpoints.synthetic import (SyntheticCheckpoint, cache_folder, cache_root, cached_synthetic, is_complete,
                                           write_synthetic)
from harness.config import PRESETS, get_preset
from harness.errors import UsageError

DESCRIPTION = """\
Write a synthetic LFM2-MoE checkpoint: random weights with the exact names, shapes and dtypes of
the real one (bf16 weights, fp32 expert_bias), generated from a seed. Benchmarks, phase engines
and tests run on it when the real LiquidAI/LFM2-8B-A1B download is not at hand. The work per
token is that of the real model (only which experts each token picks differs, see --skew); the
logits are meaningless as text, but every engine is checked against the reference on the same
weights, so correctness checks stay exact.

Each tensor depends only on (seed, tensor name), drawn with torch's CPU generator: the same seed
gives the same bytes on every machine (checked across torch 2.11 and 2.13, so answers computed
on one machine hold for weights regenerated on another). --skew > 0 biases the router
(expert_bias) so a few experts receive most tokens, to study load imbalance across GPUs.

Formats:
  hf         a Hugging Face folder: config.json, model*.safetensors (+ index when sharded),
             synthetic.json. Loads with transformers' Lfm2MoeForCausalLM.from_pretrained.
  model-bin  the original C++/CUDA program's float32 model.bin, plus config.json beside it.

Generation streams tensor by tensor (memory of one tensor), into a temporary folder beside the
destination that is renamed into place when complete: an interrupted make-model leaves no
folder that looks like a checkpoint. The full lfm2-8b-a1b preset is
16.7 GB in hf format and 33.4 GB as model-bin; about a minute each on 2 cores (disk-bound),
with ~0.3 GB (hf) / ~0.8 GB (model-bin) of memory on top of torch itself.
"""

EPILOG = """\
where it goes:
  Without --out, the hf folder goes to the cache (--cache-dir, else $LFM2_CACHE, else
  ~/.cache/lfm2-infer) as <preset>-seed<seed>-skew<skew>-bf16/ and is reused when complete
  (harness.checkpoints.synthetic.cached_synthetic(preset, seed, skew) returns the same folder from Python).
  model-bin without --out goes to <cache>/<preset>-seed<seed>-skew<skew>-fp32-modelbin/.
  An --out folder that holds a checkpoint already is replaced only with --force.

pointing the harness at it:
  Give the printed path to any command as --model PATH (a Hugging Face folder or a model.bin).
  Commands given --preset P [--seed N] [--skew X] instead use, and if needed generate, the
  cached hf folder of exactly this command without --out, so running make-model first is optional.

examples:
  python -m harness make-model --preset tiny
  python -m harness run --engine reference --preset tiny      # uses the cached folder above
  python -m harness make-model --preset lfm2-8b-a1b --skew 1.0
  python -m harness make-model --preset small --format model-bin --out /scratch/small-bin
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("make-model", help="write a synthetic checkpoint (random weights, real shapes)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=main)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lfm2-8b-a1b", choices=list(PRESETS),
                   help="model shape (default: %(default)s, the real model; tiny/small for tests)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--skew", type=float, default=0.0,
                   help="router imbalance: 0 = even routing; ~0.5-2 = a few experts dominate (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the cache folder for preset/seed/skew, see below)")
    p.add_argument("--format", choices=["hf", "model-bin"], default="hf",
                   help="hf = safetensors folder (bf16); model-bin = original program's float32 model.bin "
                        "(default: %(default)s)")
    p.add_argument("--shard-gb", type=float, default=5.0,
                   help="hf format: largest safetensors shard in GiB; 0 = one file (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache root when --out is not given (default: $LFM2_CACHE or ~/.cache/lfm2-infer)")
    p.add_argument("--force", action="store_true", help="regenerate even if a complete cached copy exists, and "
                   "replace the checkpoint an existing --out folder holds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_out(out: Path | None, force: bool) -> None:
    """--out must be a new or empty folder, or (with --force) one that holds only a checkpoint."""
    if out is None or not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file; make-model writes a folder (config.json and the weights): "
                         "give a folder path")
    if not any(p for p in out.iterdir() if not p.name.startswith(".")):
        return
    if not holds_checkpoint_files_only(out):
        raise UsageError(f"--out {out} holds files that are not a checkpoint's; make-model replaces the whole "
                         "folder: give a new or empty one")
    if not force:
        raise UsageError(f"--out {out} already holds a checkpoint; add --force to replace it, or give another folder")


def main(args: argparse.Namespace) -> int:
    cfg = get_preset(args.preset)
    check_out(args.out, args.force)
    progress = not args.quiet
    shard_bytes = int(args.shard_gb * 2**30) if args.shard_gb > 0 else None
    t0 = time.perf_counter()
    reused = False
    if args.format == "hf" and args.out is None:
        folder = cache_folder(args.preset, args.seed, args.skew, args.cache_dir)
        reused = not args.force and is_complete(folder, cfg, args.seed, args.skew)
        out = where = cached_synthetic(args.preset, args.seed, args.skew, args.cache_dir, progress=progress,
                                       force=args.force, shard_bytes=shard_bytes)
    elif args.format == "hf":
        out = where = write_synthetic(cfg, args.out, args.seed, args.skew, shard_bytes=shard_bytes, progress=progress)
    else:
        out = args.out or cache_root(args.cache_dir) / f"{args.preset}-seed{args.seed}-skew{args.skew:g}-fp32-modelbin"
        where = out / "model.bin"
        reused = args.out is None and not args.force and where.is_file() and (out / "config.json").is_file()
        if not reused:
            with staged_folder(out) as tmp:  # model.bin and its config.json appear together
                write_model_bin(SyntheticCheckpoint(cfg, args.seed, args.skew), tmp / "model.bin", progress=progress)
                write_json_atomic(tmp / "config.json", cfg.to_hf_dict())
    how = "reused the complete copy in the cache" if reused else f"wrote in {time.perf_counter() - t0:.1f} s"
    print(f"{args.format} checkpoint ({args.preset}, seed {args.seed}, skew {args.skew:g}): {how}")
    print(f"path: {where}")
    print(f"size: {_size(out) / 1e9:.3f} GB")
    return 0


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.cli.make_model", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_cli())
