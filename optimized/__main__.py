"""Time and check the optimized engine on one GPU, without the MPI harness.

  python -m optimized --preset small --dtype bf16 --shapes 1x16,64x16,8x512
  python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16,8x512,16x512 --accuracy 8x16
  python -m optimized --preset lfm2-8b-a1b --dtype fp32 --shapes 64x16 --accuracy 8x16 --json out.json
  python -m optimized --preset lfm2-8b-a1b --shapes 64x16 --moe-variants auto,mma64,mma128,wmma128

For each BxS shape: a warm-up forward (it captures the CUDA graph), then --iters timed forwards
(host clock around engine.forward, which ends with a stream synchronize and includes the ids
upload and logits download); prints the median ms, the spread, tokens/s, samples/s and the
achieved TFLOP/s from harness.measure.model_stats (useful FLOPs: LM head on the last position only).
--accuracy BxS compares the engine's logits with the float32 reference (GPU, TF32 off; float64
on the CPU for presets with a vocabulary under 10k): max abs error, top-1 agreement, VALID at 1e-3.
--weights gpu draws random weights on the GPU (optimized.gpu_synthetic: seconds, no disk);
cpu uses harness.checkpoints.synthetic in memory. --moe-variants times every shape once per grouped MoE GEMM
variant (optimized.kernels.MOE_VARIANTS; "auto" = the engine's choice by token count), one engine.
--profile BxS runs one eager forward of that shape under torch.profiler and prints its GPU kernels
grouped by name (calls, total and share of the kernel time), PyCUDA's and cuBLAS's alike.
--decode LIST times greedy decode steps (CUDA graph replays) at each batch size after a 16-token
prefill: median ms per step, tokens/s and the share of the decode floor (harness.run.generation), and
beside them the streamed ms per token (harness.run.generation.greedy_generate over greedy_steps: the
spacing of token arrivals with one step queued ahead on the GPU);
--decode-profile B prints one eager decode step's kernels the way --profile does. --no-gemv
builds the engine without the small-batch GEMV and router kernels (optimized/gemv.py, router.py),
--no-pdl without programmatic dependent launch, to compare. --option KEY=VALUE passes any other
engine option (optimized/engine.py's docstring lists them), e.g. --option tf32x3=true for 3xTF32
dense GEMMs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        try:
            b, s = part.lower().split("x")
            out.append((int(b), int(s)))
        except ValueError:
            raise SystemExit(f"--shapes: {part!r} is not BxS (e.g. 64x16)") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m optimized", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model preset (default: small)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--weights", default="gpu", choices=["gpu", "cpu"], help="where random weights are drawn")
    ap.add_argument("--shapes", default="1x16,64x16,8x512", help="comma-separated BxS to time")
    ap.add_argument("--iters", type=int, default=10, help="timed forwards per shape (default: 10)")
    ap.add_argument("--no-graphs", action="store_true", help="run eagerly (no CUDA graph)")
    ap.add_argument("--no-pdl", action="store_true", help="launch every kernel the ordinary way (no PDL)")
    ap.add_argument("--no-gemv", action="store_true", help="keep cuBLAS and the grouped MoE GEMM at 1-4 tokens "
                    "(no optimized/gemv.py or router.py kernels)")
    ap.add_argument("--accuracy", metavar="BxS", help="compare BxS random prompts with the reference")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--moe-variants", default="auto", metavar="LIST",
                    help="comma-separated MoE GEMM variants to time (default: auto = by token count); the names are "
                         "optimized/kernels.py's MOE_VARIANTS, e.g. mma16, mma64, mma256wl, and wg256 (wgmma, H100 only)")
    ap.add_argument("--profile", metavar="BxS", action="append", default=[],
                    help="print the GPU kernels of one eager forward of BxS by time (repeatable)")
    ap.add_argument("--decode", metavar="LIST", default="", help="batch sizes whose decode steps to time, e.g. 1,64")
    ap.add_argument("--decode-profile", metavar="B", type=int, action="append", default=[],
                    help="print the GPU kernels of one eager decode step at batch B (repeatable)")
    ap.add_argument("--option", action="append", metavar="KEY=VALUE", default=[],
                    help="an engine option, value read as JSON when it parses (e.g. tf32x3=true; repeatable)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from harness.cli.job_args import UsageError, parse_options
    try:
        options = parse_options(args.option)
    except UsageError as e:
        raise SystemExit(str(e)) from None
    check_variants(args.moe_variants, args.dtype)  # before the minute a full model takes to load

    import torch
    from harness.config import get_preset
    from harness.measure.model_stats import model_stats

    from .engine import OptimizedEngine
    from .gpu_synthetic import GPUSyntheticCheckpoint

    cfg = get_preset(args.preset)
    if args.weights == "gpu":
        ckpt = GPUSyntheticCheckpoint(cfg, seed=0)
    else:
        from harness.checkpoints.synthetic import synthetic_checkpoint
        ckpt = synthetic_checkpoint(cfg, seed=0)
    result = {"preset": args.preset, "dtype": args.dtype, "graphs": not args.no_graphs, "gemv": not args.no_gemv,
              "pdl": not args.no_pdl, "options": options, "device": torch.cuda.get_device_name(0), "shapes": []}
    ref = reference_for(ckpt, args.accuracy) if args.accuracy else None  # before the engine takes the GPU memory

    t = time.perf_counter()
    eng = OptimizedEngine(ckpt, 0, dtype=args.dtype, graphs=not args.no_graphs, gemv=not args.no_gemv,
                          pdl=not args.no_pdl, progress=False, **options)
    load_s = time.perf_counter() - t
    print(f"engine {args.dtype} loaded in {load_s:.1f} s; weights {eng.W.nbytes() / 1e9:.2f} GB on the GPU", flush=True)
    result["load_s"] = load_s
    if ref is not None:
        result["accuracy"] = check_accuracy(eng, ckpt, args.accuracy, *ref)

    stats = model_stats(cfg)
    rows = []
    variants = [v.strip() for v in args.moe_variants.split(",") if v.strip()]
    for name in variants:
        try:
            eng.set_moe_variant(None if name == "auto" else name)
        except ValueError as e:
            raise SystemExit(f"--moe-variants: {e}") from None
        for B, S in parse_shapes(args.shapes):
            rows.append(time_shape(eng, cfg, stats, B, S, args.iters, name))
    result["shapes"] = rows
    eng.set_moe_variant(None)
    result["profiles"] = {}
    for text in args.profile:
        try:
            result["profiles"][text] = profile_forward(eng, cfg, *parse_shapes(text)[0])
        except Exception as e:  # the profiler is a diagnostic: report, keep the timings
            print(f"--profile {text} failed: {type(e).__name__}: {e}")
    result["decode"] = [time_decode(eng, cfg, int(b), args.iters * 5) for b in filter(None, args.decode.split(","))]
    for B in args.decode_profile:
        try:
            result["profiles"][f"decode-{B}"] = profile_decode(eng, cfg, B)
        except Exception as e:
            print(f"--decode-profile {B} failed: {type(e).__name__}: {e}")
    result["graph_error"] = eng.graph_error
    if eng.graph_error:
        print(f"graph capture failed: {eng.graph_error}")
    eng.close()
    if args.json:
        write_json(args.json, result)
    return 0


def reference_for(ckpt, shape: str):
    """(tokens, logits, kind): the reference logits of `shape` (BxS) random prompts, in float64 on
    the CPU for vocabularies under 10k, else in float32 on the GPU (TF32 off)."""
    import torch
    from harness.jobs.files import synthetic_prompts
    from harness.engines.reference import reference_logits
    cfg = ckpt.config
    (ab, as_), = parse_shapes(shape)
    tokens = synthetic_prompts(cfg.vocab_size, ab, as_, seed=1234)
    t = time.perf_counter()
    if cfg.vocab_size < 10_000:
        ref = reference_logits(ckpt, tokens, dtype=torch.float64, device="cpu")
        kind = "float64 CPU"
    else:
        ref = reference_logits(ckpt, tokens, dtype=torch.float32, device="cuda")
        kind = "float32 GPU (TF32 off)"
    print(f"reference ({kind}) for {shape}: {time.perf_counter() - t:.1f} s", flush=True)
    torch.cuda.empty_cache()
    return tokens, ref, kind


def check_accuracy(eng, ckpt, shape: str, tokens, ref, kind: str) -> dict:
    """The engine's logits of `tokens` against the reference `ref`; in bf16 also what the reference
    itself loses run in plain torch bf16 (what bf16 costs anyway)."""
    import numpy as np
    import torch
    from harness.jobs.files import validate
    from harness.engines.reference import reference_logits
    got = eng.forward(tokens)
    v = validate(got, ref)
    err = np.abs(got.astype(np.float64) - ref)
    out = {"shape": shape, "reference": kind, "max_abs_err": v.max_abs_err, "mean_abs_err": float(err.mean()),
           "top1": v.top1_agreement, "valid_1e-3": v.valid}
    print(f"accuracy vs {kind}: {v}; mean abs err {err.mean():.3g}", flush=True)
    if eng.dtype == "bf16":
        plain = reference_logits(ckpt, tokens, dtype=torch.bfloat16, device="cuda")
        pv = validate(plain, ref)
        perr = float(np.abs(plain.astype(np.float64) - ref).mean())
        agree = float(np.mean(plain.argmax(1) == got.argmax(1)))
        out["plain_torch_bf16"] = {"max_abs_err": pv.max_abs_err, "mean_abs_err": perr, "top1": pv.top1_agreement,
                                   "top1_vs_engine": agree}
        print(f"plain torch bf16 reference vs {kind}: {pv}; mean abs err {perr:.3g}; "
              f"engine/plain-bf16 top-1 agreement {100 * agree:.1f}%", flush=True)
    return out


def write_json(path: str, result: dict) -> None:
    """`result` to `path` through a temporary file, so that a reader never sees half of it."""
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, path)


def check_variants(text: str, dtype: str) -> None:
    """Refuse (SystemExit) --moe-variants names that do not exist or are not built for `dtype`."""
    from optimized.engine import DTYPES
    from optimized.kernels import variants_built_for
    built = variants_built_for(DTYPES[dtype])
    for name in filter(None, (v.strip() for v in text.split(","))):
        if name != "auto" and name not in built:
            raise SystemExit(f"--moe-variants: {name!r} is not built for {dtype}; choose auto or one of {built}")


def time_shape(eng, cfg, stats, B: int, S: int, iters: int, variant: str) -> dict:
    from harness.jobs.files import synthetic_prompts
    tokens = synthetic_prompts(cfg.vocab_size, B, S, seed=B * 1000 + S)
    t = time.perf_counter()
    eng.forward(tokens)  # warm-up: plan buffers, eager run, graph capture
    first_s = time.perf_counter() - t
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        eng.forward(tokens)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    used = eng.moe_variant_name(B * S)
    row = {"B": B, "S": S, "moe_variant": used, "asked": variant, "ms_median": med * 1e3, "ms_min": min(times) * 1e3,
           "ms_max": max(times) * 1e3, "tokens_per_s": B * S / med, "samples_per_s": B / med,
           "tflops": B * stats.job_flops(S) / med / 1e12, "first_call_s": first_s}
    print(f"{B:>4}x{S:<5} {used:>8} {row['ms_median']:9.3f} ms  [{row['ms_min']:.3f}..{row['ms_max']:.3f}]  "
          f"{row['tokens_per_s']:>11,.0f} tok/s  {row['samples_per_s']:>9,.1f} samples/s  "
          f"{row['tflops']:7.1f} TFLOP/s  (first call {first_s:.2f} s)", flush=True)
    return row


def time_decode(eng, cfg, B: int, steps: int, prompt_len: int = 16) -> dict:
    """Median decode step (graph replay after the first, eager one) at batch B."""
    from harness.run.generation import HBM_BYTES_PER_S
    from harness.jobs.files import synthetic_prompts
    from harness.measure.model_stats import decode_bytes_per_step
    prompts = synthetic_prompts(cfg.vocab_size, B, prompt_len, seed=B + 11)
    nxt = eng.prefill(prompts, max_new_tokens=steps + 1).argmax(1)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        nxt = eng.decode_greedy(nxt)  # as the harness's greedy_generate: ids, not logits, come back
        if i:  # the first step runs eagerly and records the graph
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    streamed = _streamed_ms(eng, prompts, steps)
    floor_s = decode_bytes_per_step(cfg, B, prompt_len + steps // 2, 4 if eng.dtype == "fp32" else 2) / HBM_BYTES_PER_S
    row = {"B": B, "ms_median": med * 1e3, "ms_min": min(times) * 1e3, "tokens_per_s": B / med,
           "pct_of_floor": 100 * floor_s / med, "streamed_ms_median": streamed, "gpu_ms": _graph_ms(eng)}
    extra = f"; streamed {streamed:.3f} ms/token" if streamed else ""
    extra += f"; GPU alone {row['gpu_ms']:.3f} ms/step" if row["gpu_ms"] else ""
    print(f"decode B={B:<4} {row['ms_median']:8.3f} ms/step [{row['ms_min']:.3f} min]  {row['tokens_per_s']:>9,.0f} "
          f"tok/s  {row['pct_of_floor']:5.1f}% of the decode floor ({floor_s * 1e3:.3f} ms){extra}", flush=True)
    return row


def _streamed_ms(eng, prompts, steps: int) -> float | None:
    """Median ms between token arrivals of the harness's streamed generation (greedy_generate over
    greedy_steps) of `steps` decode steps; None when the engine does not stream."""
    from harness.run.generation import greedy_generate
    run = greedy_generate(eng, prompts, steps + 1)
    return statistics.median(run.step_s) * 1e3 if run.mode == "streamed" and run.step_s else None


def _graph_ms(eng, reps: int = 20) -> float | None:
    """The decode graph replayed `reps` times back to back between CUDA events: the step's GPU time
    without the host's launch, synchronize and copy per token. The replays advance the device's
    lengths past the host's copy, so the generation is not continued afterwards."""
    import torch
    D = eng._dec
    if D is None or D.graph is None:
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(eng.tstream):
        start.record(eng.tstream)
        t = time.perf_counter()
        for _ in range(reps):
            D.graph.replay()
        launch_ms = (time.perf_counter() - t) * 1e3 / reps
        end.record(eng.tstream)
    end.synchronize()
    D.active = False  # lengths moved on without the host: a new prefill must start the next generation
    print(f"  decode graph: host launch {launch_ms:.3f} ms per replay", flush=True)
    return start.elapsed_time(end) / reps


def profile_decode(eng, cfg, B: int) -> list[dict]:
    """One decode step's kernels after a 16-token prefill of B prompts (OptimizedEngine.profile_decode)."""
    from harness.jobs.files import synthetic_prompts
    from harness.measure.op_profile import format_table
    table = eng.profile_decode(synthetic_prompts(cfg.vocab_size, B, 16, seed=5))
    print(format_table(table, f"profile decode step B={B} (eager)"), flush=True)
    return table


def profile_forward(eng, cfg, B: int, S: int) -> list[dict]:
    """The forward's kernels (one eager run, the same launches the graph holds) by GPU time."""
    from harness.jobs.files import synthetic_prompts
    tokens = synthetic_prompts(cfg.vocab_size, B, S, seed=7)
    from harness.measure.op_profile import format_table
    table = eng.profile(tokens)  # OptimizedEngine.profile: the eager launches the graph holds
    print(format_table(table, f"profile {B}x{S} (eager, moe variant {eng.moe_variant_name(B * S)})"), flush=True)
    return table


if __name__ == "__main__":
    sys.exit(main())
