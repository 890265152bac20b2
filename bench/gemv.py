"""The batch-1 decode step's weight streams: one token's GEMVs at the real model's shapes, against
the HBM roofline. At one token every weight byte is used once, so a GEMV is as fast as it reads.

versions:
  1 torch   cuBLAS through torch: torch.mm for a projection; for the MoE, per expert torch.mm
            gate/up, silu * up, torch.mm down, times the routing weight (bf16 output throughout)
  2 gemv    optimized/gemv.py GemvKernels: gemv (the LM head writes fp32 logits), and for the MoE
            moe_gateup + moe_down, one GEMV per (token, expert) pair

  python -m bench.gemv                                   # every case, bf16
  python -m bench.gemv --cases lm_head,moe_4_experts --dtype fp32 --pdl

cases (N x K; the bytes are the weights, the least any version must read):
  out_proj       2048 x 2048    the attention / conv output projection
  in_proj        6144 x 2048    the ShortConv input projection (B, C, x)
  lm_head       65536 x 2048    the vocabulary
  moe_4_experts  4 experts of w13 [2 x 1792, 2048] + w2 [2048, 1792]: one MoE layer at one token

A CUDA graph holds 20 launches back to back (launched one by one from Python, a 5 us kernel is
bound by the host). GB/s is weight bytes per second: compare it with the HBM line of
`python -m bench.hbm_read` (about 3000 GB/s on an H100); the note gives the share of that ceiling.
Check: max error of the output against float64 on the same bf16/fp32 inputs, relative to the
largest reference value (bf16 outputs round at ~4e-3).
"""
from __future__ import annotations

import sys

from bench import common

VERSIONS = ["torch", "gemv"]
CASES = {"out_proj": (2048, 2048), "in_proj": (6144, 2048), "lm_head": (65536, 2048), "moe_4_experts": (1792, 2048)}
EXPERTS, TOPK = 32, (3, 11, 17, 29)  # the model's 32 experts; the four one token routes to
TOLERANCE = {"bf16": 1.5e-2, "fp32": 1e-4}


def dense_case(dev, G, dtype, N: int, K: int, fp32_out: bool):
    """(launchers by version, their outputs, the float64 reference, weight bytes, FLOPs) for y = x @ w^T."""
    import torch
    x = torch.randn(1, K, device=dev.torch_device).to(dtype)
    w = (torch.randn(N, K, device=dev.torch_device) * 0.02).to(dtype)
    outs = {"torch": torch.empty(1, N, dtype=dtype, device=dev.torch_device),
            "gemv": torch.empty(1, N, dtype=torch.float32 if fp32_out else dtype, device=dev.torch_device)}
    launches = {"torch": lambda: torch.mm(x, w.t(), out=outs["torch"]),
                "gemv": lambda: G.gemv(x, w, outs["gemv"])}
    return launches, outs, x.double() @ w.double().t(), w.numel() * w.element_size(), 2 * N * K


def moe_case(dev, G, dtype, N: int, K: int):
    """The same for one token's MoE: ys [4, K] = wts[j] * (silu(x w1_e^T) * (x w3_e^T)) w2_e^T."""
    import torch
    import torch.nn.functional as F
    d = dev.torch_device
    x = torch.randn(1, K, device=d).to(dtype)
    w13 = (torch.randn(EXPERTS, 2 * N, K, device=d) * 0.02).to(dtype)
    w2 = (torch.randn(EXPERTS, K, N, device=d) * 0.02).to(dtype)
    idx = torch.tensor([TOPK], dtype=torch.int32, device=d)
    wts = torch.rand(1, len(TOPK), device=d) + 0.1
    act = torch.empty(len(TOPK), N, dtype=dtype, device=d)
    outs = {v: torch.empty(len(TOPK), K, dtype=dtype, device=d) for v in VERSIONS}

    def torch_moe():
        for j, e in enumerate(TOPK):
            gu = torch.mm(x, w13[e].t())
            outs["torch"][j:j + 1] = torch.mm(F.silu(gu[:, :N]) * gu[:, N:], w2[e].t()) * wts[0, j]

    def gemv_moe():
        G.moe_gateup(x, w13, act, idx, len(TOPK))
        G.moe_down(act, w2, outs["gemv"], idx, wts)

    x64, want = x.double(), []
    for j, e in enumerate(TOPK):
        w = w13[e].double()
        a = F.silu(x64 @ w[:N].t()) * (x64 @ w[N:].t())
        want.append(wts[0, j].double() * (a @ w2[e].double().t()))
    weights = len(TOPK) * 3 * N * K
    return {"torch": torch_moe, "gemv": gemv_moe}, outs, torch.cat(want), weights * w2.element_size(), 2 * weights


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.gemv")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)} (default all)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(TOLERANCE), help="weight dtype (default bf16)")
    ap.add_argument("--pdl", action="store_true", help="launch the GEMVs with programmatic dependent launch, "
                    "as the engine does on sm_90 (each starts while the one before it finishes)")
    args = common.parse(ap, argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.quick:
        cases, args.trials = ["out_proj", "moe_4_experts"], 3
    versions = common.chosen(ap, VERSIONS, args.versions)

    dev = common.open_device(args.device)
    import torch

    from optimized.gemv import GemvKernels
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    G = GemvKernels(dev.gpu, dtype, stream=dev.stream)
    G.pdl = args.pdl
    torch.manual_seed(0)
    lines = common.Lines(f"one-token GEMVs, {args.dtype} weights{', PDL' if args.pdl else ''}, on {dev.describe()}")
    for case in cases:
        N, K = CASES[case]
        if case == "moe_4_experts":
            launches, outs, want, nbytes, flops = moe_case(dev, G, dtype, N, K)
        else:
            launches, outs, want, nbytes, flops = dense_case(dev, G, dtype, N, K, fp32_out=case == "lm_head")
        for n, name in enumerate(VERSIONS, 1):
            if name not in versions:
                continue
            common.poison(outs[name])
            dev.run(launches[name])
            err = common.max_err(outs[name], want)
            ms = dev.graph_ms(launches[name], reps=20, trials=args.trials)
            lines.line(f"v{n} {name} {case} {N}x{K}", ms, nbytes=nbytes, flops=flops, err=err,
                       tol=TOLERANCE[args.dtype], note=common.hbm_share(nbytes, ms))
        del launches, outs, want
        torch.cuda.empty_cache()
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
