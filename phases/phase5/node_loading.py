"""Plan 4.1: one rank per node reads the weights, the node's other ranks receive them.

`NodeTensorSource.tensors(names, owner)` yields (name, float32 host array) for the tensors THIS
rank needs, every rank walking the same names in the same order:

    mode "bcast"  local rank 0 reads each tensor from the checkpoint once and sends its STORED
                  bytes (bf16 for the HF checkpoints: half of fp32): a tensor every rank needs by
                  MPI Bcast over the node, a tensor only one rank needs (an expert under expert
                  parallelism) by a point-to-point Send to it; each rank converts to fp32 itself.
    mode "each"   every rank reads what it needs itself (the original program: every rank loads
                  the whole model from disk), for comparison.

`owner(name)` says which rank needs a tensor: None = every rank. In a group of one (no MPI, or
one rank on the node) both modes are a plain read.

What it cost is kept in `stats` (the engine copies them into counters.extra):
    load_bytes_read     bytes of the checkpoint's stored tensors this rank read
    load_bytes_sent     stored bytes this rank sent to other ranks (counted once per receiver)
    load_bytes_received stored bytes it received instead of reading
    load_read_seconds / load_comm_seconds / load_convert_seconds
                        reading (incl. the mmap page-in) / inside MPI calls / to fp32
No GPU and no torch CUDA here: the CPU tests run it under a real mpiexec.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from harness.checkpoints.base import expected_shapes

MODES = ("bcast", "each")


class NodeTensorSource:
    def __init__(self, checkpoint, group, mode: str = "bcast"):
        if mode not in MODES:
            raise ValueError(f"load={mode!r}: choose 'bcast' (one rank per node reads, the others receive) "
                             "or 'each' (every rank reads the checkpoint itself)")
        self.checkpoint = checkpoint
        self.group = group
        self.mode = mode
        self.shapes = expected_shapes(checkpoint.config)
        self.stats = {"load_mode": mode, "load_ranks_on_node": group.size, "load_bytes_read": 0,
                      "load_bytes_sent": 0, "load_bytes_received": 0, "load_read_seconds": 0.0,
                      "load_comm_seconds": 0.0, "load_convert_seconds": 0.0}

    def tensors(self, names, owner=None):
        g = self.group
        owner = owner or (lambda name: None)
        shared = self.mode == "bcast" and g.size > 1
        for name in names:
            who = owner(name)
            needed = who is None or who == g.rank
            if not shared or who == 0:  # a plain read (on the reader, when only it needs the tensor)
                if needed:
                    yield name, self.fp32(self.read(name))
                continue
            if not (needed or g.is_root):
                continue
            stored = self.share(self.read(name) if g.is_root else None, to=who)
            if needed:
                yield name, self.fp32(stored.reshape(self.shapes[name]))

    def read(self, name: str) -> torch.Tensor:
        """One tensor as the checkpoint stores it, in writable memory (a memory-mapped source is
        paged in here: that is the read)."""
        t0 = time.perf_counter()
        raw = self.checkpoint.raw(name).contiguous()
        stored = np.require(raw.reshape(-1).view(torch.uint8).numpy(), np.uint8, ["C", "W"])
        self.stats["load_bytes_read"] += stored.nbytes
        self.stats["load_read_seconds"] += time.perf_counter() - t0
        return torch.from_numpy(stored).view(raw.dtype).reshape(raw.shape)

    def share(self, stored: torch.Tensor | None, to: int | None) -> torch.Tensor:
        """The reader's stored tensor, as bytes, to every rank of the node (to=None: Bcast) or to
        rank `to` (Send); every rank involved gets it back (flat on the receivers)."""
        g = self.group
        t0 = time.perf_counter()
        header = buf = None
        if g.is_root:
            header = (str(stored.dtype).removeprefix("torch."), stored.numel() * stored.element_size())
            buf = stored.reshape(-1).view(torch.uint8).numpy()
        if to is None:
            header = g.bcast_object(header)
            buf = buf if g.is_root else np.empty(header[1], np.uint8)
            g.bcast(buf)
        elif g.is_root:
            g.send_object(header, dest=to)
            g.send(buf, dest=to)
        else:
            header = g.recv_object(source=0)
            buf = np.empty(header[1], np.uint8)
            g.recv(buf, source=0)
        self.stats["load_comm_seconds"] += time.perf_counter() - t0
        if g.is_root:
            self.stats["load_bytes_sent"] += buf.nbytes * (g.size - 1 if to is None else 1)
            return stored
        self.stats["load_bytes_received"] += buf.nbytes
        return torch.from_numpy(buf).view(getattr(torch, header[0]))

    def fp32(self, stored: torch.Tensor) -> np.ndarray:
        t0 = time.perf_counter()
        arr = np.require(stored.to(torch.float32).numpy(), np.float32, ["C", "W"])
        self.stats["load_convert_seconds"] += time.perf_counter() - t0
        return arr
