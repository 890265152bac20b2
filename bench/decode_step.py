"""The decode step: one new token per sequence through every layer, a chain of ~200 small launches
(at batch 1 it is weight-bound: ~3.1 GB per token in bf16 on the full model, ~1 ms at HBM speed).

versions:
  1 eager   optimized/decode.py decode_body launched from Python kernel by kernel (the engine's first step)
  2 graph   the engine's CUDA graph of the same launches, replayed (every later step), with programmatic
            dependent launch between the kernels on sm_90 unless --no-pdl
then, unless --no-kernels, the links of the chain: one line per kernel of one eager step launched without
PDL (OptimizedEngine.profile_launches: GPU time summed over its launches in the step, each kernel's own),
their sum, and the gaps, the graph's step less that sum (what the launches between the links cost, less
what PDL overlaps).

  python -m bench.decode_step                         # the full model, random weights drawn on the GPU, B = 1
  python -m bench.decode_step --batch 1,64 --dtype fp32 --no-pdl

GB/s: the bytes the step must read (harness.measure.model_stats.decode_bytes_per_step: every non-expert
weight, the experts the batch touches, the caches) per second; the note gives the share of the HBM
ceiling. Check: the graph's logits equal the eager step's bit for bit (the same launches); the eager
step's against the engine's own forward of prompt + token (the prefill path: GEMMs, grouped MoE GEMMs,
prompt attention), relative to the largest logit; fp32 is held to 1e-3, bf16 only shown (on random
weights bf16 rounding flips routing choices; tests/gpu/test_optimized_decode.py says more).
"""
from __future__ import annotations

import sys

from bench import common

VERSIONS = ["eager", "graph"]
EAGER_CALLS, GRAPH_CALLS = 10, 20  # steps between the events of one trial


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.decode_step")
    ap.add_argument("--preset", default="lfm2-8b-a1b", help="model preset (default lfm2-8b-a1b, the real shape)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="engine dtype (default bf16)")
    ap.add_argument("--batch", default="1", help="comma-separated sequences per step (default 1)")
    ap.add_argument("--prompt-len", type=int, default=16, help="tokens prefilled before the steps (default 16)")
    ap.add_argument("--no-pdl", action="store_true", help="build the engine without programmatic dependent launch")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-kernel lines")
    args = common.parse(ap, argv)
    batches = common.int_list(ap, args.batch, "--batch")
    if args.quick:
        args.preset, batches, args.trials = "tiny", [1], 3
    versions = common.chosen(ap, VERSIONS, args.versions)
    from harness.config import ConfigError, get_preset
    try:
        cfg = get_preset(args.preset)
    except ConfigError as e:
        ap.error(str(e))
    steps = 3 + (1 + EAGER_CALLS * args.trials) + (1 + GRAPH_CALLS * args.trials) + 1
    if args.prompt_len < 1 or args.prompt_len + steps > 4096:
        ap.error(f"--prompt-len must be 1..{4096 - steps} (the caches hold 4096 positions, the timing takes {steps})")

    dev = common.open_device(args.device)
    import numpy as np
    import torch

    from harness.jobs.files import synthetic_prompts
    from harness.measure.model_stats import decode_bytes_per_step
    from optimized.decode import decode_body
    from optimized.engine import OptimizedEngine
    from optimized.gpu_synthetic import GPUSyntheticCheckpoint
    eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), dev.gpu.index, dtype=args.dtype, progress=False,
                          pdl=not args.no_pdl, max_batch=max(batches))
    lines = common.Lines(f"decode step, {cfg.name} {args.dtype}, prompts of {args.prompt_len}, "
                         f"PDL {'on' if eng.use_pdl else 'off'}, on {dev.describe()}")
    try:
        for B in batches:
            prompts = synthetic_prompts(cfg.vocab_size, B, args.prompt_len, seed=B + 11)
            tok = eng.prefill(prompts).argmax(1).astype(np.int32)
            eager = eng.decode(tok)  # eager, and captures the graph for the next steps
            eng.prefill(prompts)
            graphed = eng.decode(tok)  # a replay of that graph
            want = eng.forward(np.concatenate([prompts, tok[:, None]], axis=1))
            eager, graphed, want = (torch.from_numpy(np.asarray(a)) for a in (eager, graphed, want))
            D = eng._dec
            nbytes = decode_bytes_per_step(cfg, B, args.prompt_len + steps // 2, 4 if args.dtype == "fp32" else 2)
            ms = {}
            if "eager" in versions:
                ms["eager"] = common.events_ms(lambda: decode_body(eng, D), eng.tstream, EAGER_CALLS, args.trials)
                lines.line(f"v1 eager B={B}", ms["eager"], nbytes=nbytes, err=common.max_err(eager, want),
                           tol=1e-3 if args.dtype == "fp32" else None, note=common.hbm_share(nbytes, ms["eager"]))
            if "graph" in versions and D.graph is None:
                lines.skip(f"v2 graph B={B}", f"no graph: {eng.graph_error or 'graphs off'}")
            elif "graph" in versions:
                _on(eng, D.graph.replay)  # warm-up
                ms["graph"] = common.events_ms(D.graph.replay, eng.tstream, GRAPH_CALLS, args.trials)
                lines.line(f"v2 graph B={B}", ms["graph"], nbytes=nbytes,
                           err=common.mismatch(graphed, eager), tol=0, note=common.hbm_share(nbytes, ms["graph"]))
            if not args.no_kernels:
                step_ms = ms.get("graph", ms.get("eager"))
                _kernel_lines(lines, eng.profile_launches(lambda: decode_body(eng, D)), step_ms)
            D.active = False  # the timed steps moved the device's lengths on: the next prefill starts afresh
    finally:
        eng.close()
    return lines.exit_code()


def _on(eng, work) -> None:
    import torch
    with torch.cuda.stream(eng.tstream):
        work()


def _kernel_lines(lines, table: list[dict], step_ms: float | None) -> None:
    """One line per kernel name of the profiled step, their sum, and the step's gaps beside them."""
    total = sum(op["us"] for op in table) / 1e3
    for op in table:
        lines.line(f"  {op['name'][:34]} x{op['calls']}", op["us"] / 1e3, note=f"{100 * op['us'] / 1e3 / total:.0f}%")
    lines.line("  sum of the kernels", total)
    if step_ms is not None:
        lines.line("  gaps (step - kernels)", step_ms - total)


if __name__ == "__main__":
    sys.exit(main())
