"""Time phase 1 against phase 0 on a synthetic model, outside the MPI harness: the two things the
phase changes (one attention block, one norm) and, with --forward, a whole forward.

    python -m phases.phase1 --preset small --seq-len 16,512             # the blocks alone
    python -m phases.phase1 --preset tiny --seq-len 16,512 --forward     # also whole forwards

Prints one JSON line per (engine, part, seq_len): median / min / max seconds over --repeat runs
after one warm-up, the two engines interleaved run by run on the same inputs; with --breakdown,
also the seconds each model step (norm, attention_block, moe_block, ...) took in one forward
(steps nest: lm_head includes its norm).
For the real benchmark use `python -m harness compare --phases 0,1`.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


STEPS = ("embed", "norm", "attention_block", "conv_block", "moe_block", "dense_block", "lm_head")


def timed_pair(engines, make_fn, repeat: int) -> list[dict]:
    """Seconds of make_fn(engine)() for each engine, interleaved run by run (so drift in clocks or
    host load hits both alike), after one warm-up each."""
    fns = [make_fn(e) for e in engines]
    times = [[] for _ in engines]
    for rnd in range(repeat + 1):
        for i, (engine, fn) in enumerate(zip(engines, fns)):
            t0 = time.perf_counter()
            fn()
            engine.synchronize()
            if rnd:  # round 0 is the warm-up
                times[i].append(time.perf_counter() - t0)
    return [{"median_s": float(np.median(t)), "min_s": min(t), "max_s": max(t), "repeat": repeat} for t in times]


def step_breakdown(engine, tokens) -> dict:
    """Seconds per model step (summed over layers) in one forward, by wrapping the engine's steps."""
    spent = dict.fromkeys(STEPS, 0.0)
    for step in STEPS:
        original = getattr(engine, step)

        def wrapper(*a, _step=step, _fn=original, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_step] += time.perf_counter() - t0
        setattr(engine, step, wrapper)
    try:
        t0 = time.perf_counter()
        engine.forward(tokens)
        engine.synchronize()
        total = time.perf_counter() - t0
    finally:
        for step in STEPS:
            delattr(engine, step)  # back to the class's methods
    return {"total_s": total, **{f"{k}_s": v for k, v in spent.items()}}


def main(argv=None) -> int:
    from phases.part_timing import parse_part_timing, part_timing_parser
    ap = part_timing_parser("python -m phases.phase1", __doc__, "16,512", 5)
    ap.add_argument("--breakdown", action="store_true", help="also print seconds per model step of one forward")
    args, seq_lens = parse_part_timing(ap, argv)

    from baseline.engine import BaselineEngine
    from harness.config import get_preset
    from harness.gpu import GPUUnavailable
    from harness.checkpoints.synthetic import synthetic_checkpoint

    from .engine import Phase1Engine
    cfg = get_preset(args.preset)
    ckpt = synthetic_checkpoint(cfg, seed=0)
    rng = np.random.default_rng(0)
    layer = cfg.attention_layers[0]
    try:
        engines = [cls(ckpt, device=args.device) for cls in (BaselineEngine, Phase1Engine)]
    except GPUUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for S in seq_lens:
        h = rng.normal(size=(S, cfg.hidden_size)).astype(np.float32)
        tokens = rng.integers(0, cfg.vocab_size, size=(1, S), dtype=np.int32)
        parts = {"attention_block": lambda e: lambda: e.attention_block(layer, h, np.arange(S)),
                 "norm": lambda e: lambda: e.norm(h, "layers.0.operator_norm.weight")}
        if args.forward:
            parts["forward"] = lambda e: lambda: e.forward(tokens)
        for part, make_fn in parts.items():
            for engine, result in zip(engines, timed_pair(engines, make_fn, args.repeat)):
                print(json.dumps({"engine": engine.name, "model": cfg.name, "part": part, "seq_len": S,
                                  "device": engine.gpu.name, **result}), flush=True)
        if args.breakdown:
            for engine in engines:
                print(json.dumps({"engine": engine.name, "model": cfg.name, "part": "breakdown", "seq_len": S,
                                  **step_breakdown(engine, tokens)}), flush=True)
    for engine in engines:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
