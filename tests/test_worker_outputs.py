"""The rank program's prefill path (harness/run/worker.py, prefill.py, outputs.py), in this process
as a one-rank MPI job with stand-in engines:
  - the timed loop copies each batch's logits into the output collective's array, made before the
    clock, and lets the engine's own array go (kept arrays made every batch fault in fresh host
    pages: the optimized 64 x 16 forward lost ~40 ms per batch to it);
  - the output collective runs INSIDE the clock (a slow one shows in elapsed and output_s);
  - an engine's calibrate(tokens, batch) is called after the warm-up and before the clock with the
    rank's samples in timed order; engines without it are not touched;
  - an engine's record_fields land in the record, and only as VariantRecord fields."""
from __future__ import annotations

import gc
import json
import time
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from harness.config import get_preset
from harness.engines.base import Counters, Engine

pytest.importorskip("mpi4py")


class FreshArrays(Engine):
    """An engine whose every forward returns a new float32 array (row = token sum): np.asarray of it is
    the same object, so keeping it would keep the engine's memory."""
    config = SimpleNamespace(vocab_size=6)

    def __init__(self):
        self.returned = []
        self.counters = SimpleNamespace(reset=lambda: None, as_dict=lambda: {})

    def forward(self, batch):
        out = np.repeat(batch.sum(axis=1, keepdims=True).astype(np.float32), 6, axis=1)
        self.returned.append(weakref.ref(out))
        return out

    def synchronize(self):
        pass


def one_rank_worker(tmp_path, **spec_fields):
    from mpi4py import MPI

    from harness.run.worker import Worker, WorkerSpec
    spec = WorkerSpec(engine="fake", model="m", inputs=str(tmp_path / "inputs.bin"), record=str(tmp_path / "r.json"),
                      budget_s=60.0, **spec_fields)
    worker = Worker(spec, MPI.COMM_WORLD)
    worker.gpu = None  # no NVML sampling
    return worker


def test_timed_loop_keeps_copies_not_the_engines_arrays(tmp_path):
    from harness.run.prefill import timed_loop
    worker = one_rank_worker(tmp_path)
    tokens = np.arange(7 * 3, dtype=np.int64).reshape(7, 3)
    engine = FreshArrays()
    timed = timed_loop(worker, engine, tokens, 0, 7, 3)
    gc.collect()
    assert len(engine.returned) == 3 and all(r() is None for r in engine.returned)
    got = timed["outputs"]
    assert got.dtype == np.float32 and got.shape == (7, 6)
    np.testing.assert_array_equal(got[:, 0], tokens.sum(axis=1))
    assert len(timed["lat_ms"]) == 3
    assert worker.info["output_collective"] == "gather" and worker.info["mpi_output_bytes"] == 0  # alone: nothing moves


@pytest.mark.parametrize("mode", ["reduce", "gather"])
def test_the_output_collective_is_inside_the_clock(tmp_path, mode, monkeypatch):
    from harness.run import outputs
    from harness.run.prefill import timed_loop
    worker = one_rank_worker(tmp_path, options={"output_collective": mode})
    cls = outputs.ReduceOutputs if mode == "reduce" else outputs.GatherOutputs
    real = cls.collect

    def slow_collect(self, ran):
        time.sleep(0.3)
        return real(self, ran)
    monkeypatch.setattr(cls, "collect", slow_collect)
    tokens = np.arange(4 * 2, dtype=np.int64).reshape(4, 2)
    timed = timed_loop(worker, FreshArrays(), tokens, 0, 4, 2)
    assert timed["elapsed"] >= 0.3 and worker.info["output_s"] >= 0.3
    assert worker.info["end_s"] < 0.3  # the forwards ended before it
    assert timed["collective"].mode == mode
    np.testing.assert_array_equal(timed["collective"].select(timed["outputs"], np.arange(4))[:, 0], tokens.sum(axis=1))


class Logged(Counters):
    def __init__(self, log):
        super().__init__()
        self.__dict__["_log"] = log

    def reset(self):
        log = self._log
        super().reset()
        self.__dict__["_log"] = log
        log.append(("clock starts",))

    def as_dict(self):
        return {k: v for k, v in super().as_dict().items() if k != "_log"}


class Calibrated(Engine):
    """A prefill engine with the calibration hook and its own record fields, logging its calls."""
    name, phase, dtype, max_batch = "fake", None, "fp32", 3
    config = get_preset("tiny")

    def __init__(self, fields=None):
        self.log = []
        self.counters = Logged(self.log)
        self.fields = fields if fields is not None else {"expert_shards": 3}

    def forward(self, batch):
        self.log.append(("forward", batch[:, 0].tolist()))
        return np.repeat(batch[:, :1].astype(np.float32), self.config.vocab_size, axis=1)

    def calibrate(self, tokens, batch):
        self.log.append(("calibrate", tokens[:, 0].tolist(), batch))

    def record_fields(self, ranks_info):
        return self.fields

    def synchronize(self):
        pass

    def close(self):
        pass


def run_worker(tmp_path, engine):
    from harness.jobs.files import write_inputs
    tokens = np.arange(7 * 2, dtype=np.int32).reshape(7, 2) % 500
    write_inputs(tmp_path / "inputs.bin", tokens)
    worker = one_rank_worker(tmp_path, warmup=2)
    worker.build_engine = lambda: engine
    rc = worker.run()
    return rc, json.loads((tmp_path / "r.json").read_text())


def test_calibration_runs_after_warm_up_before_the_clock_with_the_timed_samples(tmp_path):
    engine = Calibrated()
    rc, rec = run_worker(tmp_path, engine)
    assert rc == 0 and rec["error"] is None
    first = [row[0] for row in np.arange(7 * 2).reshape(7, 2)]
    assert engine.log == [("forward", [0, 0, 0]), ("forward", [0, 0, 0]),  # warm-up: sample 0 repeated
                          ("calibrate", first, 3),  # every sample of this (only) rank, in timed order
                          ("clock starts",),
                          ("forward", first[0:3]), ("forward", first[3:6]), ("forward", first[6:7])]
    assert rec["calibrate_s"] is not None and rec["output_collective_s"] is not None
    assert rec["expert_shards"] == 3  # record_fields
    assert any("inside the timed region" in n for n in rec["notes"])


def test_engines_without_the_hook_are_untouched(tmp_path):
    from harness.run.prefill import calibrate
    worker = one_rank_worker(tmp_path)
    calibrate(worker, FreshArrays(), np.zeros((4, 2), np.int64), 0, 4, 2)
    assert "calibrate_s" not in worker.info


def test_record_fields_must_be_record_fields(tmp_path):
    rc, rec = run_worker(tmp_path, Calibrated({"no_such_field": 1}))
    assert rc == 1 and "not a field of VariantRecord" in rec["error"]
