"""The fp32 engine's dense projections, y [M, N] = a [M, K] @ w [N, K]^T at the model's shapes: fp32
on CUDA cores, or on TF32 tensor cores at fp32 accuracy (the engine's option tf32x3).

versions:
  1 fp32   cuBLAS fp32 through torch.mm, TF32 off (the engine's default)
  2 tf32   one cuBLAS TF32 pass (allow_tf32): the speed to aim at, ~1e-3 off; too coarse for the job's 1e-3
  3 x3     optimized/split_tf32.py SplitTF32.mm: the activations split by split_tf32.cu into TF32 hi + lo,
           the weights split once (split_weight, 2x their bytes), ah.wl + al.wh in one GEMM, ah.wh in
           --chunks GEMMs from fresh accumulators (the tensor core's accumulation truncates)

  python -m bench.dense_fp32                              # every shape at 128, 1024 and 4096 rows
  python -m bench.dense_fp32 --shapes ffn_w2 --rows 1024 --chunks 1,8

shapes (N x K): conv_in 6144 x 2048, out_proj 2048 x 2048, attn_qkv 3072 x 2048, ffn_w13 14336 x 2048,
ffn_w2 2048 x 7168.

A CUDA graph holds 20 calls back to back. TFLOP/s: 2 M N K; GB/s: the weight bytes each version
reads (x3 reads 2x). Check: against float64, relative to the largest reference value (fp32 and x3
held to 5e-5; tf32 is shown against 5e-3). optimized/split_tf32.py's TF32X3_MIN_ROWS says where
the engine switches.
"""
from __future__ import annotations

import sys

from bench import common

VERSIONS = ["fp32", "tf32", "x3"]
SHAPES = {"conv_in": (6144, 2048), "out_proj": (2048, 2048), "attn_qkv": (3072, 2048), "ffn_w13": (14336, 2048),
          "ffn_w2": (2048, 7168)}
TOLERANCE = {"fp32": 5e-5, "tf32": 5e-3, "x3": 5e-5}


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.dense_fp32")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)} (default all)")
    ap.add_argument("--rows", default="128,1024,4096", help="comma-separated M (default 128,1024,4096)")
    ap.add_argument("--chunks", default="8", help="comma-separated K chunks of x3's big product (default 8, the engine's)")
    args = common.parse(ap, argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or set(shapes) - set(SHAPES):
        ap.error(f"--shapes: choose from {', '.join(SHAPES)}")
    rows, chunk_counts = common.int_list(ap, args.rows, "--rows"), common.int_list(ap, args.chunks, "--chunks")
    if args.quick:
        shapes, rows, args.trials = ["out_proj"], [128], 3
    versions = common.chosen(ap, VERSIONS, args.versions)

    dev = common.open_device(args.device)
    import torch

    from optimized.split_tf32 import SplitTF32, split_weight, tf32_matmul
    torch.backends.cuda.matmul.allow_tf32 = False  # as the engine keeps it
    split = {c: SplitTF32(dev.gpu, dev.stream, c) for c in chunk_counts}
    g = torch.Generator(device=dev.torch_device).manual_seed(0)
    lines = common.Lines(f"fp32 dense GEMMs, y = a @ w^T, on {dev.describe()}")
    for shape in shapes:
        N, K = SHAPES[shape]
        w = torch.randn(N, K, device=dev.torch_device, generator=g) * 0.02
        wx = split_weight(w)
        for M in rows:
            a = torch.randn(M, K, device=dev.torch_device, generator=g)
            want = a.double() @ w.double().t()
            out, scratch = torch.empty(M, N, device=dev.torch_device), torch.empty(2 * M * K, device=dev.torch_device)

            def tf32():
                with tf32_matmul():
                    torch.mm(a, w.t(), out=out)
            runs = {"fp32": [("fp32", lambda: torch.mm(a, w.t(), out=out), w.numel() * 4)],
                    "tf32": [("tf32", tf32, w.numel() * 4)],
                    "x3": [(f"x3 {c} chunks", lambda x=x: x.mm(a, wx, out, scratch), wx.numel() * 4)
                           for c, x in split.items()]}
            for n, version in enumerate(VERSIONS, 1):
                if version not in versions:
                    continue
                for label, run, nbytes in runs[version]:
                    common.poison(out)
                    dev.run(run)
                    err = common.max_err(out, want)
                    lines.line(f"v{n} {label} {shape} M={M}", dev.graph_ms(run, reps=20, trials=args.trials),
                               nbytes=nbytes, flops=2 * M * N * K, err=err, tol=TOLERANCE[version])
        torch.cuda.empty_cache()
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
