"""The prefill workload inside a rank: warm-up, the engine's calibration, the timed loop between
two barriers (its outputs reaching rank 0 inside it), and an optional op profile of one forward
after it. `worker` is the rank's harness.run.worker.Worker."""
from __future__ import annotations

import sys
import time

import numpy as np

from harness.measure.nvml import NvmlSampler
from harness.run.outputs import output_buffers
from harness.run.stages import err_text, raise_if


def warm_up(worker, engine, tokens, b: int) -> None:
    batch = np.ascontiguousarray(np.repeat(tokens[:1], b, axis=0))
    t = time.perf_counter()
    for _ in range(worker.spec.warmup):
        engine.forward(batch)
    engine.synchronize()
    worker.info["warmup_s"] = time.perf_counter() - t


def calibrate(worker, engine, tokens, lo: int, hi: int, b: int) -> None:
    """The calibration hook, outside the clock, after the warm-up: an engine that places work by
    measured traffic defines `calibrate(tokens, batch)` and is handed this rank's samples in timed
    order (tokens[lo:hi], maybe none) and the timed loop's batch size; it runs what it needs (phase
    5: its first batches, to place experts by their measured load; measured_placement.py). Every
    rank calls it, so it may be collective. The warm-up cannot serve: it repeats sample 0.
    Engines without the method are not touched."""
    hook = getattr(engine, "calibrate", None)
    if hook is None:
        return
    t = time.perf_counter()
    hook(np.ascontiguousarray(tokens[lo:hi]), b)
    engine.synchronize()
    worker.info["calibrate_s"] = time.perf_counter() - t


def timed_loop(worker, engine, tokens, lo: int, hi: int, b: int, collective=None) -> dict:
    """This rank's samples lo..hi in batches of b between two barriers; `collective` (made by
    harness.run.outputs.output_buffers before the clock; made here when not given) takes each
    batch's logits and brings them to rank 0 before the closing barrier."""
    MPI, comm, spec = worker.MPI, worker.comm, worker.spec
    my_steps = -(-(hi - lo) // b)
    steps = comm.allreduce(my_steps, op=MPI.MAX)
    collective_forward = bool(getattr(engine, "collective_forward", False))
    sampler = NvmlSampler(worker.gpu, spec.nvml_interval_s)
    # Each batch's logits land in the output collective's array, allocated and touched before the
    # clock (engine.forward_into; inside engine.outputs_held, which lets the optimized engine page-lock
    # it and copy from the device straight into the rows). Keeping every array an engine returned
    # instead made each batch fault in fresh host pages: the optimized 64 x 16 bf16 forward (16.8 MB
    # of logits) took ~12 ms in a plain process and 33-53 ms p50 in this loop, hf lost ~18 ms too.
    collective = collective or output_buffers(worker, engine, len(tokens), lo, hi)
    results = collective.rows
    ran = 0
    lat_ms: list[float] = []
    err = None
    budget_hit = False
    flags = np.zeros(2, dtype=np.int32)
    agreed = np.zeros(2, dtype=np.int32)

    with engine.outputs_held(results):  # held from before the first barrier to after the last
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
                    engine.forward_into(batch, results[s0 - lo: s0 - lo + len(batch)])
                    engine.synchronize()
                    lat_ms.append((time.perf_counter() - tc) * 1e3)
                    ran += len(batch)
                except Exception as e:
                    err = err_text(e)
                    print(f"[rank {worker.rank}] forward failed: {err}", file=sys.stderr, flush=True)
            elif collective_forward and not err:  # the other ranks' forward needs this rank's part
                try:
                    engine.forward(tokens[:0])
                except Exception as e:
                    err = err_text(e)
                    print(f"[rank {worker.rank}] idle forward failed: {err}", file=sys.stderr, flush=True)
        engine.synchronize()
        t_rank_end = time.perf_counter() - t0
        # Inside the clock, as the original's MPI_Reduce: every rank takes part, even after an error
        # (the arrays exist), so no rank waits for another forever.
        collected, sent = None, 0
        try:
            collected, sent = collective.collect(ran)
        except Exception as e:
            err = err or err_text(e)
        output_s = time.perf_counter() - t0 - t_rank_end
        comm.Barrier()
        t1 = time.perf_counter()
    series = sampler.stop()
    worker.stage("the timed loop", lambda: raise_if(err))
    worker.info.update(
        samples_ran=ran, calls=len(lat_ms), busy_s=sum(lat_ms) / 1e3, end_s=t_rank_end,
        output_collective=collective.mode, mpi_output_bytes=sent, output_s=output_s,
        counters=engine.counters.as_dict(), device_name=series.device_name,
    )
    return {"elapsed": t1 - t0, "outputs": collected, "collective": collective, "lat_ms": lat_ms,
            "nvml": series, "budget_hit": budget_hit}


def routing_footprint(worker, engine, tokens, lo: int, b: int) -> None:
    """After the clock: how many distinct experts each MoE layer routed this rank's first batch to
    (engine.touched_experts; None where the engine cannot say), so the record can state the bytes
    the forward had to read and judge it against that floor rather than the whole model's. A
    diagnostic: its failure is a note, not an error."""
    try:
        touched = engine.touched_experts(np.ascontiguousarray(tokens[lo:lo + b]))
    except Exception as e:
        worker.info["touched_experts_note"] = f"touched experts not counted: {err_text(e).splitlines()[0]}"
        return
    if touched is not None:
        worker.info["touched_experts"] = [int(n) for n in touched]


def profile_one_forward(worker, engine, tokens, b: int) -> None:
    """Every rank profiles a forward of the first batch (collective engines need all ranks)."""
    batch = np.ascontiguousarray(tokens[:b])
    worker.take_op_profile(f"one forward of {len(batch)} samples", lambda on_gpu: engine.profile(batch, on_gpu=on_gpu))
