"""Bookkeeping of the expert-parallel token exchange (pure numpy; the CPU tests simulate G ranks).

Positions: experts sorted by (shard, id) (placement.shard_order); shard s holds positions
first[s] .. first[s+1]-1. Every rank groups its (token, slot) rows by position, so the rows for
shard s are one contiguous block, and all ranks know `everyone` [G, E]: rows rank r sends to
position p (an Allgather of each rank's counts).

Receive side of rank `me`: the Alltoallv delivers rank-major blocks (rank 0's rows, then rank
1's, ...), each in position order. To run each local expert once over all ranks' rows, the rows
are copied to the device expert-major: for each local position j (ascending expert id), for each
source rank r, one segment of everyone[r, j] rows. The results go back to the same host rows,
so the return Alltoallv sends each block back exactly where it came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def shard_rows(counts, first) -> np.ndarray:
    """Rows per shard, from counts per position [E] and the shard bounds first [G + 1]."""
    counts = np.asarray(counts, np.int64)
    return np.array([counts[first[s]:first[s + 1]].sum() for s in range(len(first) - 1)], np.int64)


@dataclass
class ReceivePlan:
    recv_rows: np.ndarray  # [G] rows arriving from each rank
    expert_rows: np.ndarray  # [my experts] rows each local expert runs, in position order
    segments: list  # (device row, host row, n): expert-major device row <-> rank-major host row

    @property
    def total(self) -> int:
        return int(self.recv_rows.sum())


def receive_plan(everyone, first, me: int) -> ReceivePlan:
    everyone = np.asarray(everyone, np.int64)
    seg = everyone[:, first[me]:first[me + 1]]  # [G, my experts]
    recv_rows = seg.sum(axis=1)
    rank_base = np.concatenate([[0], np.cumsum(recv_rows)[:-1]])
    host_row = rank_base[:, None] + np.cumsum(seg, axis=1) - seg  # start of each (rank, expert) block
    segments, row = [], 0
    for j in range(seg.shape[1]):
        for r in range(seg.shape[0]):
            n = int(seg[r, j])
            if n:
                segments.append((row, int(host_row[r, j]), n))
                row += n
    return ReceivePlan(recv_rows, seg.sum(axis=0), segments)
