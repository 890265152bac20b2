"""The per-rank program: `mpiexec -n R python -m harness.run.worker --spec spec.json [spec.json ...]`.

What every rank does (the original program's job contract, plus what the harness measures):
  1. MPI init; the rank's place on its node picks its GPU round-robin (GPU engines only) and
     its share of the node's CPU threads.
  2. Rank 0 reads inputs.bin and broadcasts it; samples are split into contiguous ranges.
  3. Load: open the checkpoint, build the engine (all outside the timed region).
  4. Warm-up: `warmup` forwards of sample 0 at the batch size of the timed loop.
  5. Calibration (engines that define `calibrate(tokens, batch)`, e.g. phase 5 placing its
     experts by measured load): the rank's own samples in timed order, outside the clock.
  6. Counters reset; device sync; barrier; start clock; forward this rank's samples in batches
     of `batch_used` (each call timed after a device sync); device sync; the outputs reach rank
     0; barrier; stop clock. A budget (`budget_s`) stops ranks from *starting* batches once the
     next one would not fit (all ranks agree each step, so every rank runs the same number of
     steps; one at least). An engine whose forwards are collective across ranks
     (`collective_forward`, e.g. phase 5's expert parallelism) is called with zero rows on steps
     where its rank has no batch left.
     Outputs reach rank 0 by the engine's `output_collective`, inside the clock as the original's
     did: "reduce" (phases 0-4, as the original: MPI Reduce(SUM) of a full samples x vocab array
     with the other ranks' rows zeroed) or "gather" (phase 5 on, and engines that do not say:
     each rank's own rows, Gatherv); `--option output_collective=...` overrides it. The bytes
     each rank sent and its seconds in the collective go into its per-rank record
     (mpi_output_bytes, output_s).
  7. Rank 0 validates the rows that ran against the answers and writes one JSON record; an
     engine with `record_fields(ranks_info)` adds its own fields to it (phase 5: the expert
     placement and the per-rank load it predicted and measured).
Errors are agreed on collectively at each stage, so a failure on one rank ends every rank
cleanly with a record that names the rank and the error instead of a hang. A rank that dies
without a word (kill -9, the out-of-memory killer) is seen by the launcher through the rank's
status file (harness.run.rankboard), which also holds the stage the rank was in.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time

# Only light modules at the top: numpy and torch read their thread counts when first imported,
# which must come after main() has given this rank its share of the node's cores.
from harness.run.rankboard import RankReporter
from harness.run.ranks import engine_runs_on_gpu, limit_threads, select_gpu, split_range
from harness.run.spec import WorkerSpec, check_one_engine, read_specs, write_spec_group
from harness.run.stages import StageFailed, err_text

__all__ = ["Worker", "WorkerSpec", "main", "write_spec_group"]


class Worker:
    def __init__(self, spec: WorkerSpec, comm):
        from mpi4py import MPI
        self.MPI = MPI
        self.spec = spec
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.host = socket.gethostname()
        self.info: dict = {"rank": self.rank, "host": self.host, "local_rank": self.local_rank}
        self.reporter = RankReporter(self.rank, self.size)  # the launcher's view of this rank

    # ---- collective error agreement --------------------------------------------------------
    def stage(self, name: str, fn):
        """Run fn on every rank; if any rank raised, every rank raises StageFailed."""
        err = None
        out = None
        self.reporter.stage(name)
        try:
            out = fn()
        except Exception as e:
            err = err_text(e)
            print(f"[rank {self.rank}] {name} failed: {err}", file=sys.stderr, flush=True)
        errs = self.comm.allgather(err)
        bad = [(r, e.strip()) for r, e in enumerate(errs) if e]
        if bad:
            first = bad[0][1].splitlines()[0]
            raise StageFailed(f"{name} failed on {len(bad)} of {self.size} rank(s): {first}\n"
                              + "\n".join(f"rank {r}: {e}" for r, e in bad))
        return out

    # ---- stages ------------------------------------------------------------------------------
    def read_inputs(self):
        import numpy as np

        from harness.jobs.files import read_inputs
        spec = self.spec
        if self.rank == 0:
            tokens = np.ascontiguousarray(read_inputs(spec.inputs), dtype=np.int32)
            if tokens.ndim != 2:
                raise ValueError(f"{spec.inputs}: expected [samples, seq_len] ids, got shape {tokens.shape}")
            if spec.samples is not None:
                if spec.samples > tokens.shape[0]:
                    raise ValueError(f"{spec.inputs} holds {tokens.shape[0]} samples; {spec.samples} were asked for")
                tokens = np.ascontiguousarray(tokens[: spec.samples])
            shape = tokens.shape
        else:
            tokens, shape = None, None
        return tokens, shape

    def broadcast_inputs(self, tokens, shape):
        import numpy as np
        shape = self.comm.bcast(shape, root=0)
        if self.rank != 0:
            tokens = np.empty(shape, dtype=np.int32)
        self.comm.Bcast(tokens, root=0)
        return tokens

    def build_engine(self):
        import torch

        from harness.checkpoints.open import open_checkpoint
        from harness.engines.base import engine_class
        spec = self.spec
        cls = engine_class(spec.engine)
        on_gpu = engine_runs_on_gpu(spec.engine, cls, spec.device)
        self.gpu = select_gpu(self.local_rank) if on_gpu else None
        self.info["gpu"] = self.gpu
        self.info["threads"] = torch.get_num_threads()
        t = time.perf_counter()
        ckpt = open_checkpoint(spec.model)
        engine = cls(ckpt, self.gpu if on_gpu else "cpu", **spec.options)
        engine.synchronize()
        self.info["load_s"] = time.perf_counter() - t
        return engine

    def run(self) -> int:
        return self.run_group([self.spec])

    def run_group(self, specs: list[WorkerSpec]) -> int:
        """Run each spec in turn on ONE engine, built when the first spec's inputs are in: shapes of
        one engine, dtype, rank count and options (a sweep of ten shapes pays one 16.7 GB load, not
        ten). Each spec writes its own record; a failed load is every remaining spec's record."""
        check_one_engine(specs)
        base, loaded, engine, rc = dict(self.info), {}, None, 0
        for i, spec in enumerate(specs):
            self.spec = spec
            self.info = {**base, **loaded, **({"engine_shared_by": len(specs)} if len(specs) > 1 else {})}
            try:
                tokens, shape = self.stage("reading inputs", self.read_inputs)
                tokens = self.stage("broadcasting inputs", lambda: self.broadcast_inputs(tokens, shape))
                if engine is None:
                    try:
                        engine = self.stage("loading the engine", self.build_engine)
                    except StageFailed as e:
                        self.write_failures(specs[i:], str(e))
                        return 1
                    loaded = {k: self.info[k] for k in ("gpu", "threads", "load_s") if k in self.info}
                rc = max(rc, self.run_spec(engine, tokens))
            except StageFailed as e:
                self.write_failures([spec], str(e))
                rc = 1
        if engine is not None:
            engine.close()
        return rc

    def run_spec(self, engine, tokens) -> int:
        """Warm-up, calibration, timed region and record of self.spec on a loaded engine."""
        from harness.run import prefill
        from harness.run.outputs import output_buffers
        spec = self.spec
        n, seq_len = tokens.shape
        b = spec.batch or engine.max_batch or 1
        b = max(1, min(b, engine.max_batch or b, -(-n // self.size)))  # no call larger than a rank's share
        lo, hi = split_range(n, self.size, self.rank)
        self.info.update(samples_assigned=hi - lo, first_sample=lo)
        if spec.workload == "generate":
            from harness.run.generate import run_generation
            return run_generation(self, engine, tokens, lo, hi, b)
        self.stage("warm-up", lambda: prefill.warm_up(self, engine, tokens, b))
        self.stage("calibration", lambda: prefill.calibrate(self, engine, tokens, lo, hi, b))
        collective = self.stage("output buffers", lambda: output_buffers(self, engine, n, lo, hi))
        self.reporter.stage("the timed loop")
        timed = prefill.timed_loop(self, engine, tokens, lo, hi, b, collective)
        if self.rank == 0 and hi > lo and not getattr(engine, "collective_forward", False):
            prefill.routing_footprint(self, engine, tokens, lo, b)
        if spec.profile_ops:
            prefill.profile_one_forward(self, engine, tokens, b)
        return self.finish(engine, timed, b, n, seq_len)

    def finish(self, engine, timed: dict, b: int, n: int, seq_len: int) -> int:
        import numpy as np

        from harness.report.metrics import build_record
        from harness.run import outputs
        ranks_info = self.comm.gather(self.info, root=0)
        lat_all = self.comm.gather(timed["lat_ms"], root=0)
        nvml_all = self.comm.gather(timed["nvml"].as_dict(), root=0)
        if self.rank != 0:
            return 0
        rec = build_record(self.spec, engine, ranks_info, lat_all, nvml_all, timed, b, n, seq_len)
        idx = np.concatenate([np.arange(r["first_sample"], r["first_sample"] + r["samples_ran"])
                              for r in ranks_info]).astype(int)
        rec.ran_indices = idx.tolist()
        self.attach_op_profile(rec)
        collective = timed["collective"]
        outs = collective.select(timed["outputs"], idx)
        rec.output_collective_s = max(r.get("output_s", 0.0) for r in ranks_info)
        rec.calibrate_s = max((r["calibrate_s"] for r in ranks_info if "calibrate_s" in r), default=None)
        rec.notes.append(f"outputs to rank 0 by MPI {collective.mode}: "
                         f"{sum(r['mpi_output_bytes'] for r in ranks_info):,} bytes sent by the other ranks, "
                         f"{1e3 * rec.output_collective_s:.3g} ms inside the timed region")
        try:
            self.add_engine_fields(engine, rec, ranks_info)
            outputs.check_answers(self, rec, outs, idx)
            if self.spec.outputs:
                outputs.write_outputs(self, rec, outs, n)
        except Exception as e:
            rec.error = err_text(e)
            rec.valid = False
        rec.write(self.spec.record)
        return 0 if rec.error is None else 1

    def take_op_profile(self, what: str, profile) -> None:
        """After the clock (`--profile-ops`): `profile(on_gpu)` -> the kernels or ops of `what` by time
        (an engine's profile or profile_decode), kept for rank 0's record. A diagnostic: its failure
        is a note, not an error."""
        on_gpu = self.gpu is not None
        try:
            self.op_profile = profile(on_gpu)[:40]
            self.op_profile_note = (f"op profile: {what} under torch.profiler "
                                    f"({'GPU kernels' if on_gpu else 'CPU ops, self time'})")
        except Exception as e:
            self.op_profile, self.op_profile_note = [], f"op profile failed: {err_text(e)}"
            print(f"[rank {self.rank}] {self.op_profile_note}", file=sys.stderr, flush=True)

    def attach_op_profile(self, rec) -> None:
        """Rank 0: the table take_op_profile kept (with its note) into the record, where asked for."""
        if self.spec.profile_ops:
            rec.op_profile = getattr(self, "op_profile", [])
            rec.notes.append(getattr(self, "op_profile_note", "op profile: not taken"))

    @staticmethod
    def add_engine_fields(engine, rec, ranks_info: list[dict]) -> None:
        """An engine's own record fields (`record_fields(ranks_info)` -> {field: value}); each must be
        a field of VariantRecord, so nothing lands in the record unnamed."""
        hook = getattr(engine, "record_fields", None)
        if hook is None:
            return
        for key, value in hook(ranks_info).items():
            if not hasattr(rec, key):
                raise AttributeError(f"{type(engine).__name__}.record_fields gave {key!r}, which is not a field of "
                                     "VariantRecord (harness/report/records.py): add it there")
            setattr(rec, key, value)

    def write_failure(self, message: str) -> None:
        from harness.report.metrics import failure_record
        failure_record(self.spec, message, ranks=self.size).write(self.spec.record)

    def write_failures(self, specs: list[WorkerSpec], message: str) -> None:
        if self.rank == 0:
            for spec in specs:
                self.spec = spec
                self.write_failure(message)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.run.worker",
        description="One rank of a harness measurement. Started by `python -m harness run|compare|suite` "
                    "under mpiexec; not meant to be run by hand except for debugging.")
    ap.add_argument("--spec", required=True, nargs="+", action="extend",
                    help="spec.json written by the launcher (see WorkerSpec), or a group file "
                         '{"specs": [...]}; several run in turn on one engine')
    args = ap.parse_args(argv)
    specs = read_specs(args.spec)
    check_one_engine(specs)
    from mpi4py import MPI  # MPI_Init here, before numpy/torch pick their thread counts
    worker = Worker(specs[0], MPI.COMM_WORLD)
    worker.reporter.start()
    limit_threads(worker.local_size)
    rc = 1
    try:
        rc = worker.run_group(specs)
    finally:  # a Python exception is a crash, but not a silent death: its traceback is in the log
        worker.reporter.done(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
