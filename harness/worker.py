"""The per-rank program: `mpiexec -n R python -m harness.worker --spec spec.json`.

What every rank does (baseline.md's job contract, plus what the harness measures):
  1. MPI init; the rank's place on its node picks its GPU round-robin (GPU engines only) and
     its share of the node's CPU threads.
  2. Rank 0 reads inputs.bin and broadcasts it; samples are split into contiguous ranges.
  3. Load: open the checkpoint, build the engine (all outside the timed region).
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
import os
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class WorkerSpec:
    """Everything one variant's ranks need; written by the launcher as spec.json."""
    engine: str
    model: str  # checkpoint path (HF folder or model.bin)
    inputs: str  # inputs.bin
    record: str  # where rank 0 writes the JSON record
    answers: str | None = None  # answers.bin; None: no validation
    samples: int | None = None  # first N samples of inputs.bin; None: all
    batch: int | None = None  # most samples per forward call; None: the engine's max_batch
    budget_s: float = 60.0
    warmup: int = 3
    device: str = "auto"  # auto | cpu | gpu
    options: dict = field(default_factory=dict)  # engine constructor keywords (e.g. dtype)
    outputs: str | None = None  # write outputs.bin here
    tol: float = 1e-3
    seq_len: int | None = None  # what the launcher expects (for records of runs that failed early)
    nvml_interval_s: float = 0.1
    run_id: str | None = None
    variant: str | None = None
    model_label: str | None = None
    workload: str = "prefill"  # "generate": harness.generation_worker runs the timed part
    max_new_tokens: int = 32
    greedy_answers: str | None = None  # .npy of the reference's greedy tokens [n, steps]
    profile_ops: bool = False  # after the timed region, one forward under torch.profiler

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


class StageFailed(Exception):
    """Some rank failed a stage; every rank raises it with the same message."""


def _err_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n" + "".join(tb[-4:])


def _raise_if(err: str | None) -> None:
    if err:
        raise RuntimeError(err)


def engine_runs_on_gpu(name: str, cls, device: str) -> bool:
    """--device wins; else the engine class's `device_kind` ('cpu'/'gpu') if it says; else the
    reference stays on the CPU (float64 ground truth), hf (plain torch) takes a GPU when there is
    one, and the PyCUDA engines always want one (select_gpu says clearly when there is none)."""
    if device in ("cpu", "gpu"):
        return device == "gpu"
    kind = getattr(cls, "device_kind", None)
    if kind in ("cpu", "gpu"):
        return kind == "gpu"
    if name == "reference":
        return False
    if name == "hf":
        return _gpu_count() > 0
    return True


def _gpu_count() -> int:
    """Visible GPUs, as the CUDA driver (PyCUDA) counts them, else as torch does; 0 if neither can."""
    try:
        from harness.gpu.context import import_driver
        cuda = import_driver()
        cuda.init()
        return cuda.Device.count()
    except Exception:
        pass
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def select_gpu(local_rank: int) -> int:
    """Ranks map to this node's GPUs round-robin (harness.gpu.context's rule, with the local rank
    MPI itself reports rather than a launcher's environment variable)."""
    n = _gpu_count()
    if n == 0:
        raise RuntimeError("this engine needs a GPU and none is visible (check `nvidia-smi`, the driver and "
                           "CUDA_VISIBLE_DEVICES), or run a CPU engine such as `reference`")
    return local_rank % n


def split_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous, as even as possible: the first n % size ranks take one extra sample."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


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
            err = _err_text(e)
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
        spec = self.spec
        if self.rank == 0:
            from harness.jobfiles import read_inputs
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
        from harness.checkpoint import open_checkpoint
        from harness.engine import engine_class
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
        spec = self.spec
        try:
            tokens, shape = self.stage("reading inputs", self.read_inputs)
            tokens = self.stage("broadcasting inputs", lambda: self.broadcast_inputs(tokens, shape))
            engine = self.stage("loading the engine", self.build_engine)
            n, seq_len = tokens.shape
            b = spec.batch or engine.max_batch or 1
            b = max(1, min(b, engine.max_batch or b, -(-n // self.size)))  # no call larger than a rank's share
            lo, hi = split_range(n, self.size, self.rank)
            self.info.update(samples_assigned=hi - lo, first_sample=lo)
            if spec.workload == "generate":
                from harness.generation_worker import run_generation
                rc = run_generation(self, engine, tokens, lo, hi, b)
                engine.close()
                return rc
            self.stage("warm-up", lambda: self.warm_up(engine, tokens, b))
            timed = self.timed_loop(engine, tokens, lo, hi, b)
            if spec.profile_ops:
                self.profile_one_forward(engine, tokens, b)
            rc = self.finish(engine, timed, b, n, seq_len)
            engine.close()
            return rc
        except StageFailed as e:
            if self.rank == 0:
                self.write_failure(str(e))
            return 1

    def warm_up(self, engine, tokens, b: int) -> None:
        import numpy as np
        batch = np.ascontiguousarray(np.repeat(tokens[:1], b, axis=0))
        t = time.perf_counter()
        for _ in range(self.spec.warmup):
            engine.forward(batch)
        engine.synchronize()
        self.info["warmup_s"] = time.perf_counter() - t

    def timed_loop(self, engine, tokens, lo: int, hi: int, b: int) -> dict:
        import numpy as np
        from harness.nvml_sampler import NvmlSampler
        MPI, comm, spec = self.MPI, self.comm, self.spec
        my_steps = -(-(hi - lo) // b)
        steps = comm.allreduce(my_steps, op=MPI.MAX)
        collective = bool(getattr(engine, "collective_forward", False))
        sampler = NvmlSampler(self.gpu, spec.nvml_interval_s)
        # Each batch's logits are copied into one array allocated and touched before the clock, so the
        # memory an engine returns is recycled batch after batch, as in a server. Keeping every returned
        # array instead made each batch fault in fresh host pages: on the session-9 device machines the
        # optimized 64 x 16 bf16 forward (16.8 MB of logits) took ~12 ms in a plain process and 33-53 ms
        # p50 in this loop, and hf lost ~18 ms per batch too (docs/perf-notes.md, session 9).
        results = np.zeros((max(0, hi - lo), engine.config.vocab_size), np.float32)
        outputs: list[np.ndarray] = []
        lat_ms: list[float] = []
        err = None
        budget_hit = False
        flags = np.zeros(2, dtype=np.int32)
        agreed = np.zeros(2, dtype=np.int32)

        engine.counters.reset()
        engine.synchronize()
        comm.Barrier()
        t0 = time.perf_counter()
        sampler.start(t0)
        for step in range(steps):
            # Would this rank's next batch overrun the budget? Any rank saying so stops all.
            elapsed = time.perf_counter() - t0
            next_cost = (sum(lat_ms) / len(lat_ms) / 1e3) if lat_ms else 0.0
            flags[0] = 1 if err else 0
            flags[1] = 1 if (step > 0 and elapsed + next_cost > spec.budget_s) else 0
            comm.Allreduce(flags, agreed, op=MPI.MAX)
            if agreed[0]:
                break
            if agreed[1]:
                budget_hit = True
                break
            if step < my_steps:
                s0 = lo + step * b
                batch = tokens[s0: min(s0 + b, hi)]
                try:
                    tc = time.perf_counter()
                    out = engine.forward(batch)
                    engine.synchronize()
                    lat_ms.append((time.perf_counter() - tc) * 1e3)
                    rows = results[s0 - lo: s0 - lo + len(batch)]
                    rows[:] = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
                    outputs.append(rows)
                    del out  # the engine's array goes back to the allocator before the next batch
                except Exception as e:
                    err = _err_text(e)
                    print(f"[rank {self.rank}] forward failed: {err}", file=sys.stderr, flush=True)
            elif collective and not err:  # the other ranks' forward needs this rank's part
                try:
                    engine.forward(tokens[:0])
                except Exception as e:
                    err = _err_text(e)
                    print(f"[rank {self.rank}] idle forward failed: {err}", file=sys.stderr, flush=True)
        engine.synchronize()
        t_rank_end = time.perf_counter() - t0
        comm.Barrier()
        t1 = time.perf_counter()
        series = sampler.stop()
        self.stage("the timed loop", lambda: _raise_if(err))
        self.info.update(
            samples_ran=sum(len(o) for o in outputs), calls=len(lat_ms), busy_s=sum(lat_ms) / 1e3,
            end_s=t_rank_end, counters=engine.counters.as_dict(), device_name=series.device_name,
        )
        return {"elapsed": t1 - t0, "outputs": outputs, "lat_ms": lat_ms, "nvml": series,
                "budget_hit": budget_hit}

    def profile_one_forward(self, engine, tokens, b: int) -> None:
        """Every rank profiles a forward of the first batch (collective engines need all ranks);
        rank 0's table goes into the record. A diagnostic: its failure is a note, not an error."""
        import numpy as np
        batch = np.ascontiguousarray(tokens[:b])
        try:
            self.op_profile = engine.profile(batch, on_gpu=self.gpu is not None)[:40]
            self.op_profile_note = (f"op profile: one forward of {len(batch)} samples under torch.profiler "
                                    f"({'GPU kernels' if self.gpu is not None else 'CPU ops, self time'})")
        except Exception as e:
            self.op_profile, self.op_profile_note = [], f"op profile failed: {_err_text(e)}"
            print(f"[rank {self.rank}] {self.op_profile_note}", file=sys.stderr, flush=True)

    def output_collective(self, engine) -> str:
        mode = self.spec.options.get("output_collective") or getattr(engine, "output_collective", "gather")
        if mode not in ("reduce", "gather"):
            raise ValueError(f"output_collective={mode!r}: choose 'reduce' (full array, MPI Reduce) or 'gather' "
                             "(each rank's own rows, MPI Gatherv)")
        return mode

    def gather_outputs(self, outputs, vocab: int):
        """Each rank's own rows to rank 0 (Gatherv); rows arrive in sample order because the
        ranges are contiguous and every rank ran a prefix of its range.
        -> (rows at rank 0 / None elsewhere, bytes this rank sent to another rank)."""
        import numpy as np
        MPI, comm = self.MPI, self.comm
        mine = np.ascontiguousarray(np.concatenate(outputs) if outputs else np.zeros((0, vocab), np.float32))
        counts = comm.gather(mine.size, root=0)
        if self.rank == 0:
            recv = np.empty(sum(counts), dtype=np.float32)
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
            comm.Gatherv(mine, [recv, counts, displs, MPI.FLOAT], root=0)
            return recv.reshape(-1, vocab), 0
        comm.Gatherv(mine, None, root=0)
        return None, mine.nbytes

    def reduce_outputs(self, outputs, vocab: int, n: int):
        """The original's collective: every rank holds a full [n, vocab] array with only its own
        rows filled, and MPI Reduce(SUM) adds them at rank 0 (x + 0 = x exactly, so the values
        equal the gathered ones). -> (full array at rank 0 / None elsewhere, bytes this rank sent)."""
        import numpy as np
        MPI, comm = self.MPI, self.comm
        full = np.zeros((n, vocab), np.float32)
        lo = self.info["first_sample"]
        if outputs:
            mine = np.concatenate(outputs)
            full[lo:lo + len(mine)] = mine
        if self.rank == 0:
            comm.Reduce(MPI.IN_PLACE, full, op=MPI.SUM, root=0)
            return full, 0
        comm.Reduce(full, None, op=MPI.SUM, root=0)
        return None, full.nbytes

    def finish(self, engine, timed: dict, b: int, n: int, seq_len: int) -> int:
        import numpy as np
        vocab = engine.config.vocab_size
        mode = self.output_collective(engine)
        if mode == "reduce":
            outs, sent = self.reduce_outputs(timed["outputs"], vocab, n)
        else:
            outs, sent = self.gather_outputs(timed["outputs"], vocab)
        self.info.update(output_collective=mode, mpi_output_bytes=sent)
        ranks_info = self.comm.gather(self.info, root=0)
        lat_all = self.comm.gather(timed["lat_ms"], root=0)
        nvml_all = self.comm.gather(timed["nvml"].as_dict(), root=0)
        if self.rank != 0:
            return 0
        from harness.metrics import build_record
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
            self.validate(rec, outs, idx)
            if self.spec.outputs:
                self.write_outputs(rec, outs, n)
        except Exception as e:
            rec.error = _err_text(e)
            rec.valid = False
        rec.write(self.spec.record)
        return 0 if rec.error is None else 1

    def validate(self, rec, outs, idx) -> None:
        if not self.spec.answers:
            rec.notes.append("no answers given: not validated")
            return
        from harness.jobfiles import read_logits, validate
        answers = read_logits(self.spec.answers)
        if answers.shape[1] != outs.shape[1]:
            raise ValueError(f"answers have {answers.shape[1]} logits per sample, the model {outs.shape[1]}")
        v = validate(outs, answers[idx], tol=self.spec.tol)
        rec.valid, rec.max_abs_err, rec.top1_agreement = bool(v.valid), float(v.max_abs_err), float(v.top1_agreement)
        rec.invalid_samples = len(v.invalid_rows)
        rec.invalid_sample_indices = [int(idx[r]) for r in v.invalid_rows[:100]]

    def write_outputs(self, rec, outs, n: int) -> None:
        """outputs.bin holds the rows that ran, in sample order (all n when the budget allowed)."""
        from harness.jobfiles import write_logits
        path = Path(self.spec.outputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        write_logits(tmp, outs)
        os.replace(tmp, path)
        if len(outs) < n:
            rec.notes.append(f"outputs.bin holds the {len(outs)} of {n} samples that ran (indices in ran_indices)")

    def write_failure(self, message: str) -> None:
        from harness.metrics import failure_record
        failure_record(self.spec, message, ranks=self.size).write(self.spec.record)


def _limit_threads(local_size: int) -> None:
    """Ranks sharing a node share its cores: each gets its share unless the user chose."""
    if any(v in os.environ for v in THREAD_ENV):
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = str(max(1, cores // max(1, local_size)))
    for v in THREAD_ENV:
        os.environ[v] = n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.worker",
        description="One rank of a harness measurement. Started by `python -m harness run|compare` "
                    "under mpiexec; not meant to be run by hand except for debugging.")
    ap.add_argument("--spec", required=True, help="spec.json written by the launcher (see WorkerSpec)")
    args = ap.parse_args(argv)
    spec = WorkerSpec.read(args.spec)
    from mpi4py import MPI  # MPI_Init here, before numpy/torch pick their thread counts
    worker = Worker(spec, MPI.COMM_WORLD)
    _limit_threads(worker.local_size)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
