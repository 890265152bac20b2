"""Each optimization phase against the phase before it, outside the MPI harness: the part of the
model the phase changes, run on both engines with the same inputs, timed, and checked against each
other.

phases (python -m bench.phase_parts --phase N; the parts, then the two engines):
  1  attention_block (one attention layer), norm (one RMSNorm)               phase 0 (baseline) vs 1
  2  moe_block (routing, the experts, the combine of one MoE layer)          phase 1 vs 2
  3  conv_block (one ShortConv layer), embed (the token embedding)           phase 2 vs 3
  4  forward of --batch prompts, one per model forward (weights resident)    phase 3 vs 4
  5  forward of --batch prompts in one model forward (sample batching)       phase 4 vs 5
--forward adds whole forwards to phases 1-3.

  python -m bench.phase_parts --phase 1 --seq-len 16,512
  python -m bench.phase_parts --phase 3 --seq-len 16,512 --trials 30
  python -m bench.phase_parts --phase 5 --batch 16 --seq-len 16

One line per engine, part and length. ms: the median host wall time of one call over --trials,
the two engines taking turns call by call after a warm-up call each (these parts copy to and from
the host, so no CUDA graph can hold them). GB/s: the bytes the call moved over PCIe (the engine's
transfer counters, weights and activations both ways; the note gives them) per second, what
phases 2-4 cut. TFLOP/s: forwards only (harness.measure.model_stats). max err: the phase's
output against the previous phase's on the same inputs, relative to its largest value. The
synthetic model's weights are random (harness.checkpoints.synthetic); the `small` preset has the
real hidden size and expert count on 4 layers. For the real benchmark: python -m harness compare.
"""
from __future__ import annotations

import sys

from bench import common

PARTS = {1: ("attention_block", "norm"), 2: ("moe_block",), 3: ("conv_block", "embed"), 4: ("forward",),
         5: ("forward",)}
TOLERANCE = 1e-3  # fp32 on both sides; the phases reorder sums, never change the math


def part_call(engine, part: str, cfg, h, ids, tokens):
    """A function running `part` of `engine` on the given inputs, returning its output."""
    if part == "attention_block":
        import numpy as np
        return lambda: engine.attention_block(cfg.attention_layers[0], h, np.arange(len(h)))
    if part == "norm":
        return lambda: engine.norm(h, "layers.0.operator_norm.weight")
    if part == "moe_block":
        return lambda: engine.moe_block(cfg.moe_layers[0], h)
    if part == "conv_block":
        return lambda: engine.conv_block(cfg.conv_layers[0], h)
    if part == "embed":
        return lambda: engine.embed(ids)
    return lambda: engine.forward(tokens)


def pcie_bytes(engine, fn) -> int:
    """Bytes one call of fn moved between host and device, from the engine's counters."""
    engine.counters.reset()
    fn()
    engine.synchronize()
    return engine.counters.h2d_bytes + engine.counters.d2h_bytes


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.phase_parts")
    ap.add_argument("--phase", type=int, required=True, choices=sorted(PARTS), help="the phase to time (1-5)")
    ap.add_argument("--preset", default="small", help="synthetic model preset: tiny, tiny-top3, small (default), "
                    "lfm2-8b-a1b")
    ap.add_argument("--seq-len", default="16,128", help="comma-separated prompt lengths (default 16,128)")
    ap.add_argument("--batch", type=int, help="prompts per forward (phases 4 and 5; default 1, and 16 for phase 5)")
    ap.add_argument("--forward", action="store_true", help="phases 1-3: also time whole forwards of one prompt")
    args = common.parse(ap, argv)
    seq_lens = common.int_list(ap, args.seq_len, "--seq-len")
    batch = args.batch or (16 if args.phase == 5 else 1)
    if batch < 1:
        ap.error("--batch must be >= 1")
    if args.quick:
        args.preset, seq_lens, batch, args.trials = "tiny", [8], min(batch, 2), 2
    from harness.config import ConfigError, get_preset
    try:
        cfg = get_preset(args.preset)
    except ConfigError as e:
        ap.error(str(e))
    parts = PARTS[args.phase] + (("forward",) if args.forward and args.phase <= 3 else ())
    versions = common.chosen(ap, [f"phase{args.phase - 1}", f"phase{args.phase}"], args.versions)

    dev = common.open_device(args.device)
    import numpy as np
    import torch

    from harness.checkpoints.synthetic import synthetic_checkpoint
    from harness.engines.base import PHASE_ENGINES, engine_class
    from harness.measure.model_stats import model_stats
    ckpt = synthetic_checkpoint(cfg, seed=0)
    names = PHASE_ENGINES[args.phase - 1:args.phase + 1]
    engines = [engine_class(n)(ckpt, device=dev.gpu.index, progress=False, max_batch=batch) for n in names]
    rng = np.random.default_rng(0)
    lines = common.Lines(f"phase {args.phase} ({names[1]}) against {names[0]}, {cfg.name}, on {dev.describe()}")
    try:
        for S in seq_lens:
            h = rng.normal(size=(S, cfg.hidden_size)).astype(np.float32)
            ids = rng.integers(0, cfg.vocab_size, size=S, dtype=np.int32)
            tokens = rng.integers(0, cfg.vocab_size, size=(batch if args.phase >= 4 else 1, S), dtype=np.int32)
            for part in parts:
                calls = {f"phase{args.phase - 1 + i}": part_call(e, part, cfg, h, ids, tokens)
                         for i, e in enumerate(engines)}
                outs = {v: np.asarray(fn()) for v, fn in calls.items()}
                moved = {v: pcie_bytes(e, calls[v]) for v, e in zip(calls, engines)}
                ms = common.wall_ms({v: calls[v] for v in versions}, lambda: [e.synchronize() for e in engines],
                                    args.trials)
                flops = len(tokens) * model_stats(cfg).job_flops(S) if part == "forward" else None
                reference = torch.from_numpy(outs[f"phase{args.phase - 1}"])
                for v in versions:
                    err = None if v == f"phase{args.phase - 1}" else common.max_err(torch.from_numpy(outs[v]), reference)
                    rows = f"B={len(tokens)} S={S}" if part == "forward" else f"S={S}"
                    lines.line(f"{v} {part} {rows}", ms[v], nbytes=moved[v], flops=flops, err=err, tol=TOLERANCE,
                               note=f"PCIe {moved[v] / 1e6:.1f} MB")
    finally:
        for e in engines:
            e.close()
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
