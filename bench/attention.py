"""Causal GQA attention of one layer at the real model's heads (32 query heads, 8 key/value heads,
head_dim 64) over a whole prompt (the forward's attention; the decode step's is decode.cu's).

versions:
  1 sdpa   torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True): the yardstick
           (its output is [B, nh, S, hd]; the kernels write [B*S, nh*hd], the layout out_proj reads)
  2 simt   optimized/attention.cu: CUDA cores, 32 query rows per block (Kernels.attn_variant = "simt")
  3 mma    optimized/attention_mma.cu: tensor cores (mma.sync), 64 query rows per block; bf16 with
           head_dim 64 only (Kernels.attn_variant = "mma", the engine's choice where it applies)

  python -m bench.attention                           # 64x16, 16x128, 8x512 and 1x16 (B x S), bf16
  python -m bench.attention --shapes 16x512 --versions sdpa,mma

A CUDA graph holds 20 launches back to back. TFLOP/s counts the causal half: B x 4 x nh x hd x
S(S+1)/2; GB/s the q, k, v read and the output written once. Check: the output against float64
attention on the same inputs, relative to the largest reference value.
"""
from __future__ import annotations

import sys

from bench import common

VERSIONS = ["sdpa", "simt", "mma"]
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 64
TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4}


def shapes(ap, text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        b, _, s = part.lower().partition("x")
        if not (b.isdigit() and s.isdigit() and int(b) > 0 and int(s) > 0):
            ap.error(f"--shapes: {part!r} is not BxS (e.g. 64x16)")
        out.append((int(b), int(s)))
    return out


def reference(q, k, v):
    """float64 causal attention, each kv head shared by nh / nkv query heads -> [B, nh, S, hd]."""
    import torch
    group = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    S = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores.masked_fill_(torch.ones(S, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


class Case:
    """One layer's q [B, nh, S, hd], k, v [B, nkv, S, hd] (random) and the kernels' output o [B*S, nh*hd]."""

    def __init__(self, dev, dtype, B: int, S: int):
        import torch
        d, nh, nkv, hd = dev.torch_device, HEADS, KV_HEADS, HEAD_DIM
        self.B, self.S = B, S
        self.q = torch.randn(B, nh, S, hd, device=d).to(dtype)
        self.k, self.v = (torch.randn(B, nkv, S, hd, device=d).to(dtype) for _ in range(2))
        self.o = torch.empty(B * S, nh * hd, dtype=dtype, device=d)
        self.flops = B * 4 * nh * hd * S * (S + 1) / 2
        self.nbytes = (self.q.numel() + self.k.numel() + self.v.numel() + self.o.numel()) * self.q.element_size()

    def sdpa(self):
        import torch.nn.functional as F
        return F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=True, enable_gqa=True)

    def kernel_launch(self, K, variant: str):
        """Kernels.attention with attn_variant `variant` ("simt" or "mma") into self.o."""
        def run():
            K.attn_variant = variant
            K.attention(self.q, self.k, self.v, self.o, self.B, self.S, HEADS, KV_HEADS, HEAD_DIM)
        return run

    def output(self):
        """self.o as [B, nh, S, hd], sdpa's layout."""
        return self.o.view(self.B, self.S, HEADS, HEAD_DIM).transpose(1, 2)


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.attention")
    ap.add_argument("--shapes", default="64x16,16x128,8x512,1x16", help="comma-separated BxS (default 64x16,16x128,8x512,1x16)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(TOLERANCE), help="dtype (default bf16)")
    args = common.parse(ap, argv)
    todo = shapes(ap, args.shapes)
    if args.quick:
        todo, args.trials = [(4, 64)], 3
    versions = common.chosen(ap, VERSIONS, args.versions)

    dev = common.open_device(args.device)
    import torch

    from optimized.kernels import Kernels
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    K = Kernels(dev.gpu, dtype, stream=dev.stream)
    torch.manual_seed(0)
    lines = common.Lines(f"causal attention, nh {HEADS}, nkv {KV_HEADS}, hd {HEAD_DIM}, {args.dtype}, "
                         f"on {dev.describe()}")
    for B, S in todo:
        case = Case(dev, dtype, B, S)
        want = reference(case.q, case.k, case.v)
        for n, name in enumerate(VERSIONS, 1):
            if name not in versions:
                continue
            label = f"v{n} {name} {B}x{S}"
            if name == "mma" and HEAD_DIM not in K.k_attn_mma:
                lines.skip(label, f"no tensor-core kernel for {args.dtype} head_dim {HEAD_DIM}")
                continue
            if name == "sdpa":
                run, got = case.sdpa, case.sdpa()
            else:
                run = case.kernel_launch(K, name)
                common.poison(case.o)
                dev.run(run)
                got = case.output()
            err = common.max_err(got, want)
            lines.line(label, dev.graph_ms(run, reps=20, trials=args.trials), nbytes=case.nbytes, flops=case.flops,
                       err=err, tol=TOLERANCE[args.dtype])
        del case, want
        torch.cuda.empty_cache()
    K.attn_variant = "mma"
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
