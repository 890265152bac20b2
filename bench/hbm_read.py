"""HBM read ceiling: how fast one launch streams a window of bytes out of HBM, the floor every
memory-bound kernel here (the batch-1 GEMVs, the decode step) is judged against.

versions:
  1 torch_copy  torch's device-to-device copy of the window into a second buffer (read + write, both counted)
  2 ldg4        each lane issues 4 16-byte loads before using any: 16 KB per block of 256 threads
  3 ldg8        8 loads per lane: 32 KB per block
  4 ldg16       16 loads per lane: 64 KB per block, 2 blocks per SM (gemv.cu streams its weights this way)
  5 bulk32      one thread per block issues TMA bulk copies (cp.async.bulk) of 32 KB into shared memory,
                the block then reads them there (sm_90)
  6 bulk64      64 KB per block (sm_90)

  python -m bench.hbm_read                          # 88 MB windows: one batch-1 MoE layer's 4 experts in bf16
  python -m bench.hbm_read --window-mb 16 --versions ldg16,bulk64

A CUDA graph holds one launch per window, each on the next window of a --buffer-mb buffer (default
2048 MB, so no window is still in the 50 MB L2 when its turn comes again). GB/s counts the bytes
read (and, for torch_copy, written). Check: each block writes the xor of its slice's 32-bit words,
compared with torch's xor of the same bytes (max err = the fraction of blocks that differ). On an
H100 every version reads at about 3.0 TB/s: register loads already reach the ceiling, and the
ceiling is harness.run.generation.HBM_BYTES_PER_S.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

from bench import common

KERNELS = Path(__file__).with_name("hbm_read.cu")
THREADS = 256
# version -> (kernel, bytes per block, dynamic shared memory, oldest arch)
KERNEL_VERSIONS = {"ldg4": ("ldg4", 16 << 10, 0, 70), "ldg8": ("ldg8", 32 << 10, 0, 70),
                   "ldg16": ("ldg16", 64 << 10, 0, 70), "bulk32": ("bulk32", 32 << 10, 32 << 10, 90),
                   "bulk64": ("bulk64", 64 << 10, 64 << 10, 90)}
VERSIONS = ["torch_copy", *KERNEL_VERSIONS]
SLICE = 64 << 10  # windows are whole multiples of the largest per-block slice


def xor_per_block(words, blocks: int):
    """torch reference: the xor of each block's slice of int32 `words` (slices of 2^n words)."""
    x = words.view(blocks, -1)
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        x = x[:, :half] ^ x[:, half:]
    return x[:, 0]


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.hbm_read")
    ap.add_argument("--window-mb", type=float, default=88.0, help="bytes one launch reads, in MiB (default 88)")
    ap.add_argument("--buffer-mb", type=int, default=2048, help="the buffer the windows walk through (default 2048)")
    args = common.parse(ap, argv)
    if args.quick:
        args.window_mb, args.buffer_mb, args.trials = 8.0, 64, 3
    window = int(args.window_mb * 2**20) // SLICE * SLICE
    if window < SLICE or args.buffer_mb * 2**20 < window:
        ap.error(f"--window-mb must be at least {SLICE >> 10} KB and at most --buffer-mb")
    versions = common.chosen(ap, VERSIONS, args.versions)

    dev = common.open_device(args.device)
    import torch

    from harness.gpu import launch, load_module
    from harness.run.generation import HBM_BYTES_PER_S
    from optimized.kernels import ptr
    nwords = args.buffer_mb * 2**20 // 4
    buf = torch.randint(-2**31, 2**31 - 1, (nwords,), dtype=torch.int32, device=dev.torch_device)
    windows = nwords * 4 // window
    out = torch.empty(window // (16 << 10), dtype=torch.int32, device=dev.torch_device)
    module = load_module(KERNELS, dev.gpu)
    arch = int(dev.gpu.arch.split("_")[1])
    lines = common.Lines(f"HBM read of {window / 2**20:.1f} MiB windows of a {args.buffer_mb} MiB buffer on "
                         f"{dev.describe()}; the H100's ceiling: {HBM_BYTES_PER_S / 1e9:.0f} GB/s")
    for n, name in enumerate(VERSIONS, 1):
        if name not in versions:
            continue
        label = f"v{n} {name}"
        turn = itertools.count()
        if name == "torch_copy":
            dst = torch.empty(window // 4, dtype=torch.int32, device=dev.torch_device)

            def run(at=None):
                w = (next(turn) % windows) if at is None else at
                dst.copy_(buf[w * window // 4:(w + 1) * window // 4])
            common.poison(dst)
            dev.run(lambda: run(0))
            err = common.mismatch(dst, buf[:window // 4])
            lines.line(label, dev.graph_ms(run, reps=40, trials=args.trials), nbytes=2 * window, err=err, tol=0)
            del dst
            continue
        kname, per_block, smem, oldest = KERNEL_VERSIONS[name]
        if arch < oldest:
            lines.skip(label, f"needs sm_{oldest}, this GPU is {dev.gpu.arch}")
            continue
        kernel = module.kernel(kname)
        if smem > 48 << 10:  # above the default limit a block must ask for its shared memory
            kernel.function.set_attribute(dev.gpu.cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        blocks = window // per_block

        def run(at=None, kernel=kernel, blocks=blocks, smem=smem, turn=turn):
            w = (next(turn) % windows) if at is None else at
            launch(kernel, (blocks,), (THREADS,), (ptr(buf[w * window // 4:]), ptr(out)), shared=smem,
                   stream=dev.stream)
        common.poison(out)
        dev.run(lambda: run(0))
        err = common.mismatch(out[:blocks], xor_per_block(buf[:window // 4], blocks))
        lines.line(label, dev.graph_ms(run, reps=40, trials=args.trials), nbytes=window, err=err, tol=0,
                   note=f"{per_block >> 10} KB/block")
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
