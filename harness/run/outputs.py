"""How outputs reach rank 0 and are checked: the engine's collective ("reduce", the original's MPI
Reduce(SUM) of a full samples x vocab array with other ranks' rows zeroed; or "gather", each rank's
own rows by Gatherv), validation against answers.bin, and outputs.bin."""
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

def gather_outputs(worker, outputs, vocab: int):
    """Each rank's own rows to rank 0 (Gatherv); rows arrive in sample order because the
    ranges are contiguous and every rank ran a prefix of its range.
    -> (rows at rank 0 / None elsewhere, bytes this rank sent to another rank)."""
    MPI, comm = worker.MPI, worker.comm
    mine = np.ascontiguousarray(np.concatenate(outputs) if outputs else np.zeros((0, vocab), np.float32))
    counts = comm.gather(mine.size, root=0)
    if worker.rank == 0:
        recv = np.empty(sum(counts), dtype=np.float32)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        comm.Gatherv(mine, [recv, counts, displs, MPI.FLOAT], root=0)
        return recv.reshape(-1, vocab), 0
    comm.Gatherv(mine, None, root=0)
    return None, mine.nbytes

def reduce_outputs(worker, outputs, vocab: int, n: int):
    """The original's collective: every rank holds a full [n, vocab] array with only its own
    rows filled, and MPI Reduce(SUM) adds them at rank 0 (x + 0 = x exactly, so the values
    equal the gathered ones). -> (full array at rank 0 / None elsewhere, bytes this rank sent)."""
    MPI, comm = worker.MPI, worker.comm
    full = np.zeros((n, vocab), np.float32)
    lo = worker.info["first_sample"]
    if outputs:
        mine = np.concatenate(outputs)
        full[lo:lo + len(mine)] = mine
    if worker.rank == 0:
        comm.Reduce(MPI.IN_PLACE, full, op=MPI.SUM, root=0)
        return full, 0
    comm.Reduce(full, None, op=MPI.SUM, root=0)
    return None, full.nbytes


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
