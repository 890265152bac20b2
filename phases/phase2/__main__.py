"""Time phase 2 against phase 1 on a synthetic model, outside the MPI harness: the one thing the
phase changes (one MoE block: routing, the experts, the combine) and, with --forward, a whole
forward. Each line also gives the expert-weight bytes that crossed PCIe in one run of the part.

    python -m phases.phase2 --preset small --seq-len 16,128              # the MoE block alone
    python -m phases.phase2 --preset tiny --seq-len 16,128 --forward      # also whole forwards

Prints one JSON line per (engine, part, seq_len): median / min / max seconds over --repeat runs
after one warm-up. For the real benchmark use `python -m harness compare --phases 0-2`.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def timed(fn, repeat: int, sync) -> dict:
    """Median / min / max wall seconds of fn() (synchronised) over `repeat` runs after a warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": min(times), "max_s": max(times), "repeat": repeat}


def main(argv=None) -> int:
    from phases.part_timing import parse_part_timing, part_timing_parser
    args, seq_lens = parse_part_timing(part_timing_parser("python -m phases.phase2", __doc__, "16,128", 3), argv)

    from harness.config import get_preset
    from harness.gpu import GPUUnavailable
    from harness.checkpoints.synthetic import synthetic_checkpoint
    from phases.phase1.engine import Phase1Engine

    from .engine import Phase2Engine
    cfg = get_preset(args.preset)
    ckpt = synthetic_checkpoint(cfg, seed=0)
    layer = cfg.moe_layers[0]
    for cls in (Phase1Engine, Phase2Engine):
        try:
            engine = cls(ckpt, device=args.device, progress=False)
        except GPUUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rng = np.random.default_rng(0)  # the same inputs for both engines
        for S in seq_lens:
            h = rng.normal(size=(S, cfg.hidden_size)).astype(np.float32)
            tokens = rng.integers(0, cfg.vocab_size, size=(1, S), dtype=np.int32)
            parts = {"moe_block": lambda: engine.moe_block(layer, h)}
            if args.forward:
                parts["forward"] = lambda: engine.forward(tokens)
            for part, fn in parts.items():
                engine.counters.reset()
                fn()
                expert_bytes = engine.counters.extra.get("expert_h2d_bytes", 0)
                print(json.dumps({"engine": engine.name, "model": cfg.name, "part": part, "seq_len": S,
                                  "expert_h2d_bytes": expert_bytes, "device": engine.gpu.name,
                                  **timed(fn, args.repeat, engine.synchronize)}), flush=True)
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
