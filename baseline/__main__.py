"""Time the baseline engine on a synthetic or real checkpoint, outside the MPI harness.

    python -m baseline --preset tiny --seq-len 16 --repeat 5
    python -m baseline --checkpoint /path/to/hf-folder --seq-len 16 --repeat 1

Prints the median / min / max seconds of one forward (one sample; warm-up excluded) and the data
movement of one sample from the engine's counters. For the real benchmark (MPI, validation,
records), use `python -m harness`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m baseline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny", help="synthetic model of this preset (tiny, tiny-top3, small, ...)")
    src.add_argument("--checkpoint", help="a Hugging Face folder or model.bin instead of a synthetic model")
    ap.add_argument("--seq-len", type=int, default=16, help="tokens per prompt (default 16, the job's)")
    ap.add_argument("--repeat", type=int, default=5, help="timed forwards (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default 1)")
    ap.add_argument("--device", default="auto", help="GPU index, or 'auto' = MPI local rank (default)")
    ap.add_argument("--seed", type=int, default=0, help="weights seed of the synthetic model and of the prompt")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = ap.parse_args(argv)
    if args.seq_len < 1 or args.repeat < 1 or args.warmup < 0:
        ap.error("--seq-len and --repeat must be >= 1, --warmup >= 0")

    from harness.gpu import GPUUnavailable

    from .engine import BaselineEngine
    if args.checkpoint:
        from harness.checkpoints.open import open_checkpoint
        ckpt = open_checkpoint(args.checkpoint)
    else:
        from harness.config import get_preset
        from harness.checkpoints.synthetic import synthetic_checkpoint
        ckpt = synthetic_checkpoint(get_preset(args.preset), seed=args.seed)
    cfg = ckpt.config
    try:
        t0 = time.perf_counter()
        engine = BaselineEngine(ckpt, device=args.device)
        load_s = time.perf_counter() - t0
    except GPUUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokens = np.random.default_rng(args.seed).integers(0, cfg.vocab_size, size=(1, args.seq_len), dtype=np.int32)
    for _ in range(args.warmup):
        engine.forward(tokens)
    engine.synchronize()
    times = []
    for _ in range(args.repeat):
        engine.counters.reset()
        t0 = time.perf_counter()
        engine.forward(tokens)
        engine.synchronize()
        times.append(time.perf_counter() - t0)
    c = engine.counters.as_dict()  # of the last timed forward = one sample
    result = {
        "engine": engine.name, "model": cfg.name, "seq_len": args.seq_len, "device": engine.gpu.name,
        "load_s": load_s, "forward_s_median": float(np.median(times)), "forward_s_min": min(times),
        "forward_s_max": max(times), "repeat": args.repeat,
        "samples_per_s": 1 / float(np.median(times)), "tokens_per_s": args.seq_len / float(np.median(times)),
        **{f"per_sample_{k}": v for k, v in c.items()},
    }
    engine.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{engine.name} on {result['device']}, model {cfg.name}, seq_len {args.seq_len}: one forward "
              f"median {result['forward_s_median'] * 1e3:.2f} ms (min {result['forward_s_min'] * 1e3:.2f}, "
              f"max {result['forward_s_max'] * 1e3:.2f}, {args.repeat} runs); load {load_s:.2f} s")
        print(f"  {result['samples_per_s']:.2f} samples/s, {result['tokens_per_s']:.1f} tokens/s")
        print(f"  per sample: h2d {c['h2d_bytes'] / 1e6:.2f} MB ({c['h2d_copies']} copies, {c['h2d_seconds'] * 1e3:.1f} ms), "
              f"weights {c['weight_h2d_bytes'] / 1e6:.2f} MB (experts {c.get('expert_h2d_bytes', 0) / 1e6:.2f} MB), "
              f"d2h {c['d2h_bytes'] / 1e6:.3f} MB, {c['device_allocs']} cudaMallocs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
