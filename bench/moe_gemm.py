"""The grouped MoE GEMMs of a forward: one layer's gate/up and down over every routed (token,
expert) pair, at the real model's shapes (32 experts, top 4, hidden 2048, expert width 1792).

versions: (fixed numbers; a variant not built for --dtype or this GPU is skipped)
  1 torch       per expert: gather its rows, torch.mm gate/up, silu * up, torch.mm down, times the routing
                weight, scatter (cuBLAS; the grouping is computed once on the host, outside the timing)
  2..           optimized/kernels.py MOE_VARIANTS in its order: wmma128 (moe_gemm.cu), simt64 (fp32),
                mma<rows>[tag] (moe_stream.cu, mma.sync streaming tiles of <rows> rows), wg128 / wg256
                (moe_wgmma.cu, Hopper wgmma, bf16, sm_90); `--versions list` prints them

  python -m bench.moe_gemm                                  # 64, 1024 and 4096 tokens, bf16
  python -m bench.moe_gemm --tokens 1024 --versions torch,mma128xl,wg256
  python -m bench.moe_gemm --dtype fp32 --tokens 16,256

Each line is gate/up + down of one layer (the sort that builds the tile table runs once, before),
from a CUDA graph of 20 back-to-back pairs. TFLOP/s counts useful FLOPs, 2 x pairs x 3 x 2048 x
1792 (no tile padding); GB/s the weights of the experts the routing touched, each read once (the
least any kernel must read). The note marks the variant the engine picks for that token count
(kernels.moe_variant_for; its MOE_POLICY comment holds the measurements behind each choice).
Check: the pair outputs against float64 on the same inputs (random routing, distinct experts per
token), relative to the largest reference value.
"""
from __future__ import annotations

import sys

from bench import common

EXPERTS, TOP_K, HIDDEN, WIDTH = 32, 4, 2048, 1792
TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4}


def versions() -> list[str]:
    from optimized.kernels import MOE_VARIANTS
    return ["torch", *MOE_VARIANTS]


class Layer:
    """One MoE layer's weights and one batch's routed inputs, with the float64 reference outputs."""

    def __init__(self, dev, dtype, tokens: int):
        import torch
        d, H, N, E = dev.torch_device, HIDDEN, WIDTH, EXPERTS
        self.dtype, self.tokens, self.npairs = dtype, tokens, tokens * TOP_K
        self.h = torch.randn(tokens, H, device=d).to(dtype)
        self.w13 = (torch.randn(E, 2 * N, H, device=d) * 0.02).to(dtype)
        self.w2 = (torch.randn(E, H, N, device=d) * 0.02).to(dtype)
        self.idx = torch.rand(tokens, E, device=d).argsort(dim=1)[:, :TOP_K].to(torch.int32).contiguous()
        self.wts = (torch.rand(tokens, TOP_K, device=d) + 0.1).contiguous()
        flat = self.idx.view(-1).long()
        # per touched expert: its pairs p = t * TOP_K + j, their tokens t and routing weights [n, 1]
        self.groups = [(e, pairs, pairs // TOP_K, self.wts.view(-1)[pairs, None])
                       for e in range(E) if (pairs := (flat == e).nonzero().view(-1)).numel()]
        self.touched_bytes = len(self.groups) * 3 * H * N * self.w2.element_size()
        self.flops = 2 * self.npairs * 3 * H * N

    def reference(self):
        """ys [pairs, H] in float64: ys[p] = wts[p] * (silu(h[t] w1_e^T) * (h[t] w3_e^T)) w2_e^T."""
        import torch
        import torch.nn.functional as F
        ys = torch.empty(self.npairs, HIDDEN, dtype=torch.float64, device=self.h.device)
        for e, pairs, tok, wts in self.groups:
            x, w = self.h[tok].double(), self.w13[e].double()
            act = F.silu(x @ w[:WIDTH].t()) * (x @ w[WIDTH:].t())
            ys[pairs] = (act @ self.w2[e].double().t()) * wts.double()
        return ys

    def torch_launch(self, ys):
        import torch.nn.functional as F

        groups = [(e, pairs, tok, wts.to(self.dtype)) for e, pairs, tok, wts in self.groups]

        def run():
            for e, pairs, tok, wts in groups:
                gu = self.h[tok] @ self.w13[e].t()
                ys[pairs] = (F.silu(gu[:, :WIDTH]) * gu[:, WIDTH:]) @ self.w2[e].t() * wts
        return run

    def kernel_launch(self, K, variant: str, ys):
        """The tile table for `variant` (built now, once) and the gate/up + down launch."""
        import torch

        from optimized.kernels import max_gemm_tiles
        d, npairs = self.h.device, self.npairs
        i32 = dict(dtype=torch.int32, device=d)
        sorted_pair, offsets = torch.empty(npairs, **i32), torch.empty(EXPERTS + 1, **i32)
        tiles = torch.empty(3 * max_gemm_tiles(npairs, EXPERTS, self.dtype, K.moe_variant(variant).tile_rows), **i32)
        num_tiles = torch.empty(1, **i32)
        act = torch.empty(npairs, WIDTH, dtype=self.dtype, device=d)
        K.moe_sort(self.idx, EXPERTS, sorted_pair, offsets, tiles, num_tiles, variant=variant)

        def run():
            K.moe_gateup(self.h, self.w13, act, sorted_pair, tiles, num_tiles, npairs, TOP_K, variant=variant)
            K.moe_down(act, self.w2, ys, sorted_pair, tiles, num_tiles, self.wts, npairs, variant=variant)
        return run


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.moe_gemm")
    ap.add_argument("--tokens", default="64,1024,4096", help="comma-separated tokens per forward (default 64,1024,4096)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(TOLERANCE), help="storage dtype (default bf16)")
    args = common.parse(ap, argv)
    names = versions()
    if args.versions == "list":
        print("\n".join(f"{i} {v}" for i, v in enumerate(names, 1)))
        return 0
    token_counts = common.int_list(ap, args.tokens, "--tokens")
    if args.quick:
        token_counts, args.trials = [16], 3
    wanted = common.chosen(ap, names, args.versions)

    dev = common.open_device(args.device)
    import torch

    from optimized.kernels import MOE_VARIANTS, Kernels, moe_variant_for
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    K = Kernels(dev.gpu, dtype, stream=dev.stream)
    torch.manual_seed(0)
    lines = common.Lines(f"grouped MoE GEMMs, gate/up + down of one layer, {args.dtype}, on {dev.describe()}")
    for tokens in token_counts:
        layer = Layer(dev, dtype, tokens)
        want = layer.reference()
        pick = moe_variant_for(dtype, tokens, dev.gpu.arch)
        ys = torch.empty(layer.npairs, HIDDEN, dtype=dtype, device=dev.torch_device)
        for n, name in enumerate(names, 1):
            if name not in wanted:
                continue
            label = f"v{n} {name} {tokens} tokens"
            if name != "torch" and name not in K.moe:
                v = MOE_VARIANTS[name]
                lines.skip(label, f"built for {v.arch}" if dtype in v.dtypes else f"not built for {args.dtype}")
                continue
            run = layer.torch_launch(ys) if name == "torch" else layer.kernel_launch(K, name, ys)
            common.poison(ys)
            dev.run(run)
            err = common.max_err(ys, want)
            ms = dev.graph_ms(run, reps=20, trials=args.trials)
            lines.line(label, ms, nbytes=layer.touched_bytes, flops=layer.flops, err=err, tol=TOLERANCE[args.dtype],
                       note="engine's choice" if name == pick else "")
        del layer, want, ys
        torch.cuda.empty_cache()
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
