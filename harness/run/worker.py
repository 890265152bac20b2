"""The per-rank program: `mpiexec -n R python -m harness.run.worker --spec spec.json`.

What every rank does (baseline.md's job contract, plus what the harness measures):
  1. MPI init; the rank's place on its node picks its GPU round-robin (GPU engines only) and
     its share of the node's CPU threads.
  2. Rank 0 reads inputs.bin and broadcasts it; samples are split into contiguous ranges.
  3. Load: open the checkpoint, build the engine (all outside the timed region). Given several
     specs (a group: shapes of one engine, dtype, rank count and options), the engine is built
     once and steps 2 and 4-6 run for each spec in turn, each writing its own record.
  4. Warm-up: `warmup` forwards of sample 0 at the batch size of the timed loop.
  5. Counters reset; device sync; barrier; start clock; forward this rank's samples in batches
     of `batch_used` (each call timed after a device sync); device sync; barrier; stop clock.
     A budget (`budget_s`) stops ranks from *starting* batches once the next one would not fit
     (all ranks agree each step, so every rank runs the same number of steps; one at least).
     An engine whose forwards are collective across ranks (`collective_forward`, e.g. phase 5's
     expert parallelism) is called with zero rows on steps where its rank has no batch left.
  6. Outputs reach rank 0 by the engine's `output_collective`: "reduce" (phases 0-4, as the
     original: MPI Reduce(SUM) of a full samples x vocab array with the other ranks' rows zeroed)
     or "gather" (phase 5 on, and engines that do not say: each rank's own rows, Gatherv);
     `--option output_collective=...` overrides it. The bytes each rank sent go into its
     per-rank record (mpi_output_bytes). Rank 0 validates the rows that ran against the answers
     and writes one JSON record.
Errors are agreed on collectively at each stage, so a failure on one rank ends every rank
cleanly with a record that names the rank and the error instead of a hang.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

# Only light modules at the top: numpy and torch read their thread counts when first imported,
# which must come after main() has given this rank its share of the node's cores.
from harness.run.ranks import engine_runs_on_gpu, limit_threads, select_gpu, split_range
from harness.run.spec import WorkerSpec
from harness.run.stages import StageFailed, err_text

__all__ = ["Worker", "WorkerSpec", "main"]


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

    # ---- collective error agreement --------------------------------------------------------
    def stage(self, name: str, fn):
        """Run fn on every rank; if any rank raised, every rank raises StageFailed."""
        err = None
        out = None
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
                    loaded = {k: self.info[k] for k in ("gpu", "threads", "load_s")}
                rc = max(rc, self.run_spec(engine, tokens))
            except StageFailed as e:
                self.write_failures([spec], str(e))
                rc = 1
        if engine is not None:
            engine.close()
        return rc

    def run_spec(self, engine, tokens) -> int:
        """Warm-up, timed region and record of self.spec on a loaded engine."""
        from harness.run import prefill
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
        timed = prefill.timed_loop(self, engine, tokens, lo, hi, b)
        if spec.profile_ops:
            prefill.profile_one_forward(self, engine, tokens, b)
        return self.finish(engine, timed, b, n, seq_len)

    def finish(self, engine, timed: dict, b: int, n: int, seq_len: int) -> int:
        import numpy as np

        from harness.report.metrics import build_record
        from harness.run import outputs
        vocab = engine.config.vocab_size
        mode = outputs.output_collective(self, engine)
        if mode == "reduce":
            outs, sent = outputs.reduce_outputs(self, timed["outputs"], vocab, n)
        else:
            outs, sent = outputs.gather_outputs(self, timed["outputs"], vocab)
        self.info.update(output_collective=mode, mpi_output_bytes=sent)
        ranks_info = self.comm.gather(self.info, root=0)
        lat_all = self.comm.gather(timed["lat_ms"], root=0)
        nvml_all = self.comm.gather(timed["nvml"].as_dict(), root=0)
        if self.rank != 0:
            return 0
        rec = build_record(self.spec, engine, ranks_info, lat_all, nvml_all, timed, b, n, seq_len)
        idx = np.concatenate([np.arange(r["first_sample"], r["first_sample"] + r["samples_ran"])
                              for r in ranks_info]).astype(int)
        rec.ran_indices = idx.tolist()
        if self.spec.profile_ops:
            rec.op_profile = getattr(self, "op_profile", [])
            rec.notes.append(getattr(self, "op_profile_note", "op profile: not taken"))
        if mode == "reduce":
            outs = outs[idx]
        rec.notes.append(f"outputs to rank 0 by MPI {mode}: {sum(r['mpi_output_bytes'] for r in ranks_info):,} "
                         "bytes sent by the other ranks")
        try:
            outputs.check_answers(self, rec, outs, idx)
            if self.spec.outputs:
                outputs.write_outputs(self, rec, outs, n)
        except Exception as e:
            rec.error = err_text(e)
            rec.valid = False
        rec.write(self.spec.record)
        return 0 if rec.error is None else 1

    def write_failure(self, message: str) -> None:
        from harness.report.metrics import failure_record
        failure_record(self.spec, message, ranks=self.size).write(self.spec.record)

    def write_failures(self, specs: list[WorkerSpec], message: str) -> None:
        if self.rank == 0:
            for spec in specs:
                self.spec = spec
                self.write_failure(message)


GROUP_KEY = "specs"  # a spec group file: {"specs": [spec.json paths]}, run in turn on one engine


def write_spec_group(path: str | Path, spec_paths: list[str | Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({GROUP_KEY: [str(Path(p).resolve()) for p in spec_paths]}, indent=1))
    return path


def read_specs(paths: list[str]) -> list[WorkerSpec]:
    """Spec files and spec group files, in order."""
    specs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if GROUP_KEY in data and "engine" not in data:
            specs += [WorkerSpec.read(p) for p in data[GROUP_KEY]]
        else:
            specs.append(WorkerSpec(**data))
    return specs


def check_one_engine(specs: list[WorkerSpec]) -> None:
    """Specs sharing an engine must agree on what builds it."""
    first = specs[0]
    for s in specs[1:]:
        for key in ("engine", "model", "device", "options"):
            if getattr(s, key) != getattr(first, key):
                raise ValueError(f"specs {first.variant} and {s.variant} differ in {key} "
                                 f"({getattr(first, key)!r} vs {getattr(s, key)!r}); one engine cannot run both")


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
    limit_threads(worker.local_size)
    return worker.run_group(specs)


if __name__ == "__main__":
    sys.exit(main())
