"""The bf16 dense GEMMs of 5-64 rows (a decode step of 5-64 sequences, a prefill of up to 64
tokens) at the real model's shapes, against the HBM roofline: at these rows a projection is a
weight stream, so a version is as fast as it reads the weights.

versions:
  1 torch   cuBLAS through torch.mm (bf16 in, fp32 accumulation; the LM head with fp32 output):
            the engine's choice
  2 stream  dense_stream.cu beside this file: 128-column slabs, K split over blocks (plan_split),
            the weights' first stages loaded before the PDL wait, each slab's partials added in
            split order by its last block to arrive. It lost (H100, 64 rows: out_proj 20.0 us
            against cuBLAS's 5.2, the model's step 6.53 -> 7.20 ms): the last block reads
            slices x 64 rows x 128 columns of fp32 partials alone (256 KB at 8 slices), and with
            no split (ffn_w13, lm_head) it ties cuBLAS at 16 rows but trails at 64 (x re-read
            per slab). Kept as the measured baseline for the next try.

  python -m bench.dense                                  # every case at 16 and 64 rows
  python -m bench.dense --rows 64 --cases out_proj,lm_head --pdl

cases (N x K; the bytes are the weights, the least any version must read):
  out_proj   2048 x 2048    the attention / conv output projection
  in_proj    6144 x 2048    the ShortConv input projection (B, C, x)
  qkv        3072 x 2048    the attention's fused q, k, v projection
  ffn_w13   14336 x 2048    the dense FFN's gate and up (layers 0-1)
  ffn_w2     2048 x 7168    the dense FFN's down
  lm_head   65536 x 2048    the vocabulary (fp32 logits)

A CUDA graph holds 20 launches back to back, so a weight under ~40 MB is read from L2 after the
first launch (GB/s past 100 % of HBM): the engine reads each layer's weights once per step, from
HBM. GB/s is weight bytes per second: compare it with the HBM line of `python -m bench.hbm_read`
(about 3000 GB/s on an H100); the note gives the share of that ceiling and, for stream, its split
(slices of K x k-tiles each). Check: max error against float64 on the same bf16 inputs, relative
to the largest reference value (bf16 outputs round at ~4e-3).
"""
from __future__ import annotations

import sys
from pathlib import Path

from bench import common

HERE = Path(__file__).parent
MAX_ROWS = 64  # = 16 x the largest MT in dense_stream.cu
BN, BKB, THREADS = 128, 256, 128  # = DS_BN, DS_BKB, DS_THREADS
# plan_split's cost model: a block's fixed price in k-tiles of its own stream (the ramp before its
# first stage lands), and per slice at 64 rows the last block's read of 32 KB of partials
BLOCK_COST_TILES, PARTIAL_COST_TILES = 1.0, 0.3

VERSIONS = ["torch", "stream"]
CASES = {"out_proj": (2048, 2048), "in_proj": (6144, 2048), "qkv": (3072, 2048), "ffn_w13": (14336, 2048),
         "ffn_w2": (2048, 7168), "lm_head": (65536, 2048)}
TOLERANCE = 1.5e-2


def stages(mt: int) -> int:
    """= DS_STAGES(MT)."""
    return 4 if mt <= 2 else 3


def smem_bytes(mt: int) -> int:
    """Dynamic shared memory of dense_stream_m<mt>: STAGES x (BN + 16 mt) rows x (BKB + 16) bytes."""
    return stages(mt) * (BN + 16 * mt) * (BKB + 16)


def plan_split(N: int, K: int, sms: int, rows: int = MAX_ROWS) -> tuple[int, int]:
    """(k-tiles per slice, slices) for [rows, K] @ [N, K]^T on `sms` SMs (one block each: the shared
    memory allows no second): the least waves x (k-tiles per block + BLOCK_COST_TILES) + the
    partials' reading, fewer slices on a tie; every slice non-empty."""
    slabs, ktiles = -(-N // BN), -(-(K * 2) // BKB)
    best = None
    for want in range(1, ktiles + 1):
        per = -(-ktiles // want)
        slices = -(-ktiles // per)
        waves = -(-(slabs * slices) // sms)
        cost = waves * (per + BLOCK_COST_TILES) + (slices > 1) * PARTIAL_COST_TILES * slices * rows / 64
        if best is None or cost < best[0] - 1e-9:
            best = (cost, per, slices)
    return best[1], best[2]


class DenseStream:
    """Launcher of dense_stream.cu on torch CUDA tensors. The split's workspace (fp32 partials) and
    the slabs' arrival counts are sized by `reserve` for the (N, K) shapes to come, before a graph
    captures their address; `mm` refuses a shape that was not reserved."""

    def __init__(self, gpu, stream=None):
        import torch

        from harness.gpu import load_module
        from harness.gpu.context import import_driver
        self.stream, self.sms, self.dev = stream, gpu.multiprocessors, gpu.torch_device
        m = load_module(HERE / "dense_stream.cu", gpu, include_dirs=(HERE.parent / "optimized",))
        attr = import_driver().function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES
        self.k = {}  # (MT, output dtype) -> kernel
        for mt in range(1, MAX_ROWS // 16 + 1):
            for dt, sfx in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
                k = m.kernel(f"dense_stream_m{mt}_{sfx}")
                k.function.set_attribute(attr, smem_bytes(mt))  # past the 48 KB default
                self.k[mt, dt] = k
        self.pdl = False
        self.ws = torch.empty(0, dtype=torch.float32, device=self.dev)
        self.counts = torch.zeros(0, dtype=torch.int32, device=self.dev)

    def split(self, N: int, K: int) -> tuple[int, int]:
        return plan_split(N, K, self.sms)

    def _needs(self, N: int, K: int, rows: int = MAX_ROWS) -> tuple[int, int]:
        """(workspace floats, slab counts) of [rows, K] @ [N, K]^T."""
        _, slices = self.split(N, K)
        return (slices * rows * N, -(-N // BN)) if slices > 1 else (0, 0)

    def reserve(self, shapes) -> None:
        import torch
        floats = counts = 0
        for N, K in shapes:
            f, c = self._needs(N, K)
            floats, counts = max(floats, f), max(counts, c)
        if floats > self.ws.numel():
            self.ws = torch.empty(floats, dtype=torch.float32, device=self.dev)
        if counts > self.counts.numel():
            self.counts = torch.zeros(counts, dtype=torch.int32, device=self.dev)

    @staticmethod
    def takes(x, w, y) -> bool:
        """bf16 x [1..64, K] (unit column stride, rows on 16 bytes), w [N, K] contiguous with N and K
        multiples of 8, y [rows, N] contiguous in bf16 or fp32."""
        import torch

        from optimized.gemv import _aligned, _rows_ok
        return (x.dtype == w.dtype == torch.bfloat16 and y.dtype in (torch.bfloat16, torch.float32) and x.is_cuda
                and 1 <= x.shape[0] <= MAX_ROWS and w.dim() == 2 and w.is_contiguous() and _aligned(w)
                and w.shape[1] % 8 == 0 and w.shape[0] % 8 == 0 and _rows_ok(x, w.shape[1])
                and y.is_contiguous() and _aligned(y) and y.shape == (x.shape[0], w.shape[0]))

    def mm(self, x, w, y) -> None:
        """y [M, N] = x [M, K] @ w [N, K]^T for M <= 64."""
        from harness.gpu import launch
        from optimized.kernels import i32, ptr
        if not self.takes(x, w, y):
            raise ValueError(f"dense_stream takes x [1..{MAX_ROWS}, K] bf16 (unit column stride, rows on 16 bytes), "
                             f"w [N, K] contiguous bf16 with N, K % 8 == 0 and y [rows, N] contiguous bf16 or float32; "
                             f"got x {tuple(x.shape)} {x.dtype} stride {x.stride()}, w {tuple(w.shape)} {w.dtype}, "
                             f"y {tuple(y.shape)} {y.dtype}")
        (M, K), N = x.shape, w.shape[0]
        per, slices = self.split(N, K)
        floats, counts = self._needs(N, K, M)
        if floats > self.ws.numel() or counts > self.counts.numel():
            raise ValueError(f"dense_stream: [{N}, {K}] at {M} rows splits K {slices} ways and needs {floats} "
                             f"workspace floats and {counts} counts, {self.ws.numel()} and {self.counts.numel()} "
                             "reserved; call reserve() with this weight's shape first")
        mt = -(-M // 16)
        launch(self.k[mt, y.dtype], (-(-N // BN), slices), (THREADS,),
               (ptr(x), i32(x.stride(0)), ptr(w), ptr(y), ptr(self.ws), ptr(self.counts), i32(M), i32(N), i32(K),
                i32(per)), shapes={"x": (M, K), "w": (N, K)}, shared=smem_bytes(mt), stream=self.stream,
               pdl=self.pdl)


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.dense")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)} (default all)")
    ap.add_argument("--rows", default="16,64", help="comma-separated row counts, 1-64 (default 16,64)")
    ap.add_argument("--pdl", action="store_true", help="launch the stream kernel with programmatic dependent launch, "
                    "as the engine does on sm_90 (its first weight stages load while the launch before finishes)")
    args = common.parse(ap, argv)
    cases = common.name_list(ap, args.cases, CASES)
    rows = common.int_list(ap, args.rows, "--rows")
    if any(not 1 <= r <= 64 for r in rows):
        ap.error(f"--rows: each must be 1-64 (more rows are cuBLAS's in the engine); got {args.rows}")
    if args.quick:
        cases, rows, args.trials = ["out_proj", "lm_head"], [64], 3
    versions = common.chosen(ap, VERSIONS, args.versions)

    dev = common.open_device(args.device)
    import torch

    DS = DenseStream(dev.gpu, stream=dev.stream)
    DS.pdl = args.pdl
    DS.reserve(CASES[c] for c in cases)
    torch.manual_seed(0)
    d = dev.torch_device
    lines = common.Lines(f"dense GEMMs of few rows, bf16{', PDL' if args.pdl else ''}, on {dev.describe()}")
    for case in cases:
        N, K = CASES[case]
        w = (torch.randn(N, K, device=d) * K ** -0.5).to(torch.bfloat16)
        out_dtype = torch.float32 if case == "lm_head" else torch.bfloat16
        per, slices = DS.split(N, K)
        for M in rows:
            x = torch.randn(M, K, device=d).to(torch.bfloat16)
            outs = {v: torch.empty(M, N, dtype=out_dtype, device=d) for v in VERSIONS}
            def cublas(x=x, out=outs["torch"]):
                if out.dtype == torch.bfloat16:
                    torch.mm(x, w.t(), out=out)
                else:  # fp32 logits from bf16 operands, as the engine's LM head (torch >= 2.8)
                    torch.mm(x, w.t(), out_dtype=torch.float32, out=out)
            launches = {"torch": cublas, "stream": lambda x=x, out=outs["stream"]: DS.mm(x, w, out)}
            want = x.double() @ w.double().t()
            nbytes = w.numel() * w.element_size()
            for n, name in enumerate(VERSIONS, 1):
                if name not in versions:
                    continue
                common.poison(outs[name])
                dev.run(launches[name])
                err = common.max_err(outs[name], want)
                ms = dev.graph_ms(launches[name], reps=20, trials=args.trials)
                note = common.hbm_share(nbytes, ms) + (f", {slices} x {per} k-tiles" if name == "stream" else "")
                lines.line(f"v{n} {name} {case} {M}x{N}x{K}", ms, nbytes=nbytes, flops=2 * M * N * K, err=err,
                           tol=TOLERANCE, note=note)
            del x, outs, launches, want
        del w
        torch.cuda.empty_cache()
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
