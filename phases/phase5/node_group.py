"""The ranks of one node, as phase 5 uses them: the weight broadcast and the expert-parallel group.

Built from MPI.COMM_WORLD split by shared memory (MPI.COMM_TYPE_SHARED), so on a cluster each
node forms its own group. Without MPI, or with one rank on the node, it is a group of one and
every collective is a local no-op, so the same engine code runs in a plain process (tests, the
timing tools) and under mpiexec.

MPI is only used when the process already initialised it (the harness worker imports mpi4py.MPI
before building an engine) or a communicator is passed in: importing mpi4py.MPI here would start
an MPI singleton in processes that never asked for one.
"""
from __future__ import annotations

import sys

import numpy as np


def world_comm(comm=None):
    """The communicator to split: `comm` if given, else MPI.COMM_WORLD when mpi4py.MPI is loaded."""
    if comm is not None:
        return comm
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi.COMM_WORLD if mpi is not None else None


class NodeGroup:
    def __init__(self, comm=None):
        world = world_comm(comm)
        self.comm = None
        self.rank, self.size = 0, 1
        if world is not None and world.Get_size() > 1:
            from mpi4py import MPI
            self.MPI = MPI
            self.comm = world.Split_type(MPI.COMM_TYPE_SHARED)
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            if self.size == 1:  # alone on this node: nothing to share
                self.comm.Free()
                self.comm = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # ----- collectives (no-ops in a group of one) ---------------------------------------------------
    def allreduce_max(self, value: int) -> int:
        if self.comm is None:
            return int(value)
        return int(self.comm.allreduce(int(value), op=self.MPI.MAX))

    def allgather_counts(self, counts: np.ndarray) -> np.ndarray:
        """Each rank's int32 [E] -> [size, E] on every rank."""
        return self.allgather_array(counts, np.int32)

    def allgather_floats(self, values) -> np.ndarray:
        """Each rank's float64 [n] -> [size, n] on every rank."""
        return self.allgather_array(values, np.float64)

    def allgather_array(self, values, dtype) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=dtype)
        if self.comm is None:
            return values[None, :].copy()
        out = np.empty((self.size, values.size), dtype=dtype)
        self.comm.Allgather(values, out)
        return out

    def alltoallv_rows(self, send: np.ndarray, send_rows, recv: np.ndarray, recv_rows, width: int) -> None:
        """Rows [n, width] float32: send_rows[s] consecutive rows of `send` go to rank s (in rank
        order); recv gets recv_rows[s] rows from rank s, in rank order."""
        if self.comm is None:
            n = int(send_rows[0])
            recv[:n] = send[:n]
            return
        sc = [int(r) * width for r in send_rows]
        rc = [int(r) * width for r in recv_rows]
        sd = np.concatenate([[0], np.cumsum(sc)[:-1]]).astype(np.int64).tolist()
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]]).astype(np.int64).tolist()
        F = self.MPI.FLOAT
        self.comm.Alltoallv([send, (sc, sd), F], [recv, (rc, rd), F])

    def bcast(self, array: np.ndarray) -> None:
        if self.comm is not None:
            self.comm.Bcast(array, root=0)

    def bcast_object(self, obj):
        return obj if self.comm is None else self.comm.bcast(obj, root=0)

    def gather_object(self, obj) -> list | None:
        """Every rank's obj, in rank order, at rank 0 (None elsewhere)."""
        return [obj] if self.comm is None else self.comm.gather(obj, root=0)

    def allgather_object(self, obj) -> list:
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def send_object(self, obj, dest: int, tag: int = 0) -> None:
        self.comm.send(obj, dest=dest, tag=tag)

    def recv_object(self, source: int, tag: int = 0):
        return self.comm.recv(source=source, tag=tag)

    def send(self, array: np.ndarray, dest: int, tag: int = 0) -> None:
        self.comm.Send(array, dest=dest, tag=tag)

    def recv(self, array: np.ndarray, source: int, tag: int = 0) -> None:
        self.comm.Recv(array, source=source, tag=tag)

    def free(self) -> None:
        if self.comm is not None:
            self.comm.Free()
            self.comm = None
