"""The forward's last step: float32 [B, V] logits from the GPU into a new host array (what
engine.forward returns). At fp32 64 x 16 that is 16.8 MB: a few ms at PCIe rates, on the clock of
every forward.

versions:
  1 pageable          logits.cpu(): torch's copy into a new pageable tensor
  2 pinned_dma        one DMA into a pinned buffer alone: the bus rate, no array handed over
  3 pinned            one DMA into the pinned buffer, then a numpy copy into a new array
  4 logits_download   optimized/logits_download.py LogitsDownload, all of it on the clock: above SMALL_BYTES
                      DMAs of ~2 MB of rows with an event each, each chunk copied out (torch's multi-threaded
                      copy) as soon as it lands, into an array whose pages prepare() faulted in; below it, 3
  5 prepared          the same with prepare() off the clock, as in the engine, which calls it while the GPU
                      still runs the forward

  python -m bench.logits_download                      # B = 64 and 1, V = 65536
  python -m bench.logits_download --rows 256 --trials 50

Host wall clock from the first DMA queued to the array in hand (the logits already computed), the
versions taking turns call by call; ms is the median. GB/s = B x V x 4 bytes per second. Check:
every array equals the device logits exactly (max err = the fraction of values that differ).
"""
from __future__ import annotations

import sys

from bench import common

VERSIONS = ["pageable", "pinned_dma", "pinned", "logits_download", "prepared"]
VOCAB = 65536


def downloads(logits, pinned):
    """(version -> a function that downloads `logits` and returns the host array or None, version ->
    what runs before each timed call, off the clock)."""
    import torch

    from optimized.logits_download import LogitsDownload
    done = torch.cuda.Event()
    whole, prepared = LogitsDownload(pinned), LogitsDownload(pinned)

    def pinned_dma():
        pinned.copy_(logits, non_blocking=True)
        done.record()
        done.synchronize()

    def pinned_copy():
        pinned_dma()
        return pinned.numpy().copy()

    def download_all():
        whole.enqueue(logits)
        whole.prepare()
        return whole.collect()

    def download_prepared():
        prepared.enqueue(logits)
        return prepared.collect()

    fns = {"pageable": lambda: logits.cpu().numpy(), "pinned_dma": pinned_dma, "pinned": pinned_copy,
           "logits_download": download_all, "prepared": download_prepared}
    return fns, {"prepared": prepared.prepare}


def main(argv=None) -> int:
    ap = common.parser(__doc__, "python -m bench.logits_download")
    ap.set_defaults(trials=20)
    ap.add_argument("--rows", default="64,1", help="comma-separated B, rows of V = 65536 logits (default 64,1)")
    args = common.parse(ap, argv)
    row_counts = common.int_list(ap, args.rows, "--rows")
    if args.quick:
        row_counts, args.trials = [4], 5
    versions = common.chosen(ap, VERSIONS, args.versions)

    dev = common.open_device(args.device)
    import numpy as np
    import torch
    torch.manual_seed(0)
    lines = common.Lines(f"logits download, float32 [B, {VOCAB}], device to a new host array, on {dev.describe()} "
                         f"(torch {torch.get_num_threads()} threads)")
    for B in row_counts:
        logits = torch.randn(B, VOCAB, device=dev.torch_device)
        want = logits.cpu().numpy()
        pinned = torch.empty(B, VOCAB, pin_memory=True)
        fns, before = downloads(logits, pinned)
        fns = {name: fns[name] for name in versions}
        errs = {}
        for name, fn in fns.items():
            if name in before:
                before[name]()
            pinned.fill_(float("nan"))
            got = fn()
            got = pinned.numpy() if got is None else got
            errs[name] = float(np.mean(got != want))
        ms = common.wall_ms(fns, torch.cuda.synchronize, args.trials, before=before)
        for n, name in enumerate(VERSIONS, 1):
            if name in fns:
                lines.line(f"v{n} {name} B={B}", ms[name], nbytes=logits.numel() * 4, err=errs[name], tol=0)
    return lines.exit_code()


if __name__ == "__main__":
    sys.exit(main())
