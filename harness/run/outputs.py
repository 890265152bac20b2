"""How outputs reach rank 0 and are checked.

The collective runs INSIDE the timed region, after the last batch and before the closing barrier,
as the original program's MPI_Reduce did; its buffers are made (and their pages touched) before
the clock, as the original allocated its output array before timing:
  "reduce"  (phases 0-4: the original) every rank holds a full samples x vocab array with only its
            own rows filled, and MPI Reduce(SUM) adds them at rank 0 (x + 0 = x exactly, so the
            values equal the gathered ones): (ranks - 1) x samples x vocab x 4 bytes cross;
  "gather"  (phase 5 on, and engines that do not say) each rank's own rows by Gatherv: only the
            rows rank 0 does not hold cross, and nothing at all with one rank.
Then validation against answers.bin, and outputs.bin (outside the clock)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.jobs.files import read_logits, write_logits
from harness.jobs.gate import judge
from harness.jobs.prepare import gate_calibration


def output_collective(worker, engine) -> str:
    mode = worker.spec.options.get("output_collective") or getattr(engine, "output_collective", "gather")
    if mode not in ("reduce", "gather"):
        raise ValueError(f"output_collective={mode!r}: choose 'reduce' (full array, MPI Reduce) or 'gather' "
                         "(each rank's own rows, MPI Gatherv)")
    return mode


def touched_zeros(shape) -> np.ndarray:
    """float32 zeros whose pages are already mapped: np.zeros maps them lazily (calloc), which
    would move the page faults into the clock."""
    out = np.empty(shape, np.float32)
    out.fill(0.0)
    return out


class ReduceOutputs:
    """The original's collective. `rows` is this rank's slice of the full array, which the timed
    loop fills; collect() -> (full [n, vocab] array at rank 0 / None elsewhere, bytes this rank
    sent). Rank 0 picks the rows that ran (select) after the clock."""
    mode = "reduce"

    def __init__(self, worker, n: int, lo: int, hi: int, vocab: int):
        self.worker = worker
        self.full = touched_zeros((n, vocab))
        self.rows = self.full[lo:hi]

    def collect(self, ran: int):
        MPI, comm = self.worker.MPI, self.worker.comm
        if self.worker.rank == 0:
            comm.Reduce(MPI.IN_PLACE, self.full, op=MPI.SUM, root=0)
            return self.full, 0
        comm.Reduce(self.full, None, op=MPI.SUM, root=0)
        return None, self.full.nbytes

    @staticmethod
    def select(collected: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return collected[idx]


class GatherOutputs:
    """Each rank's own rows to rank 0 (Gatherv); they arrive in sample order because the ranges
    are contiguous and every rank ran a prefix of its range. collect() -> (the rows that ran, at
    rank 0 / None elsewhere, bytes this rank sent to another rank)."""
    mode = "gather"

    def __init__(self, worker, n: int, lo: int, hi: int, vocab: int):
        self.worker = worker
        self.rows = touched_zeros((hi - lo, vocab))
        alone = worker.size == 1
        self.recv = touched_zeros((n, vocab)) if worker.rank == 0 and not alone else None

    def collect(self, ran: int):
        MPI, comm = self.worker.MPI, self.worker.comm
        mine = self.rows[:ran]
        if self.worker.size == 1:
            return mine, 0
        counts = comm.gather(mine.size, root=0)
        if self.worker.rank == 0:
            arrived = self.recv[:sum(counts) // self.recv.shape[1]]
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
            comm.Gatherv(mine, [arrived, counts, displs, MPI.FLOAT], root=0)
            return arrived, 0
        comm.Gatherv(mine, None, root=0)
        return None, mine.nbytes

    @staticmethod
    def select(collected: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return collected


def output_buffers(worker, engine, n: int, lo: int, hi: int):
    """The collective the engine asks for (or --option output_collective=...), its buffers made."""
    cls = ReduceOutputs if output_collective(worker, engine) == "reduce" else GatherOutputs
    return cls(worker, n, lo, hi, engine.config.vocab_size)


def check_answers(worker, rec, outs, idx) -> None:
    if not worker.spec.answers:
        rec.notes.append("no answers given: not validated")
        return
    answers = read_logits(worker.spec.answers)
    if answers.shape[1] != outs.shape[1]:
        raise ValueError(f"answers have {answers.shape[1]} logits per sample, the model {outs.shape[1]}")
    spec = worker.spec  # the engine's dtype picks the gate: the fp32 contract, or bf16/fp16 calibrated
    calibration, note = gate_calibration(spec.model, spec.inputs, spec.answers, rec.dtype,
                                         "cpu" if worker.gpu is None else f"cuda:{worker.gpu}")
    v = judge(outs, answers[idx], rec.dtype, tol=spec.tol, calibration=calibration)
    rec.__dict__.update(v.record_columns())  # valid, gate, gate_limit, the accuracy statistics
    rec.invalid_sample_indices = [int(idx[r]) for r in v.beyond[:100]]
    if note:
        rec.notes.append(note)


def write_outputs(worker, rec, outs, n: int) -> None:
    """outputs.bin holds the rows that ran, in sample order (all n when the budget allowed)."""
    path = Path(worker.spec.outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write_logits(tmp, outs)
    os.replace(tmp, path)
    if len(outs) < n:
        rec.notes.append(f"outputs.bin holds the {len(outs)} of {n} samples that ran (indices in ran_indices)")
