"""`--model DIR | --preset P [--seed N] [--skew X]`: one way for every command to name a checkpoint."""
from __future__ import annotations

import argparse

from harness.checkpoints.base import Checkpoint
from harness.checkpoints.open import open_checkpoint
from harness.config import PRESETS

DEFAULT_PRESET = "lfm2-8b-a1b"


def add_model_args(p: argparse.ArgumentParser, default_preset: str | None = DEFAULT_PRESET) -> None:
    g = p.add_argument_group("model (a real or synthetic checkpoint)")
    g.add_argument("--model", metavar="DIR", help="a Hugging Face folder (config.json + *.safetensors) or a "
                   "model.bin; overrides --preset")
    g.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                   help="use the synthetic checkpoint of this shape, generated once and cached "
                        "(default: %(default)s; cache in $LFM2_CACHE or ~/.cache/lfm2-infer)")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic checkpoint (default: 0)")
    g.add_argument("--skew", type=float, default=0.0,
                   help="synthetic only: >0 makes routing uneven so a few experts are much busier")


def model_path(args) -> str:
    """The checkpoint folder the arguments name, generating the synthetic one if needed."""
    if args.model:
        return args.model
    from harness.checkpoints.synthetic import cached_synthetic
    return str(cached_synthetic(args.preset, seed=args.seed, skew=args.skew))


def open_model(args) -> Checkpoint:
    return open_checkpoint(model_path(args))
