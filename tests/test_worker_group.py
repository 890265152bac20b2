"""Several shapes on one loaded engine (run_group): one mpiexec job, one record per shape, and
failures that stay with the shape (or, for a failed load, with every shape)."""
from __future__ import annotations

import dataclasses
import shutil

import pytest

from harness.run.variant import RunSettings, Variant, run_group
from harness.run.worker import WorkerSpec, check_one_engine, read_specs, write_spec_group

MPIEXEC = shutil.which("mpiexec") or shutil.which("mpirun")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Cached tiny-preset prompt sets at 8 and 16 tokens, with the reference's answers."""
    root = tmp_path_factory.mktemp("group")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LFM2_CACHE", str(root / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        from harness.checkpoints.synthetic import cached_synthetic
        from harness.jobs.prepare import synthetic_job
        model = str(cached_synthetic("tiny", seed=0, skew=0.0, progress=False))
        yield root, {s: synthetic_job(model, "tiny", 4, s) for s in (8, 16)}


def _members(jobs, ranks, engine="reference", device="cpu"):
    settings = RunSettings(run_id="grp", budget_s=30, warmup=1, device=device)
    return [(Variant(engine, s, ranks, batch), job, settings)
            for (s, job), batch in zip(sorted(jobs.items()), (2, 4))]


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
@pytest.mark.parametrize("ranks", [1, 2])
def test_two_shapes_one_load_two_valid_records(jobs, ranks):
    root, by_len = jobs
    records = run_group(_members(by_len, ranks), root / f"r{ranks}", f"reference-r{ranks}")
    assert [r.seq_len for r in records] == [8, 16] and [r.batch for r in records] == [2, 4]
    for r in records:
        assert r.error is None and r.valid is True and r.samples == 4 and r.ranks == ranks
        assert all(p["engine_shared_by"] == 2 for p in r.per_rank)
    # one engine: the second shape reports the same (only) load
    assert records[0].load_s == records[1].load_s
    assert (root / f"r{ranks}" / "logs" / f"reference-r{ranks}.cmd").exists()


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
def test_a_bad_shape_fails_alone_and_a_failed_load_fails_every_shape(jobs):
    root, by_len = jobs
    members = _members(by_len, 1)
    v, job, s = members[0]
    members[0] = (v, dataclasses.replace(job, inputs=root / "missing.bin"), s)
    first, second = run_group(members, root / "bad-input", "bad-input")
    assert first.error and "missing.bin" in first.error and second.error is None and second.valid is True
    # the baseline engine told to use the CPU cannot load: both shapes carry the load failure
    failed = run_group(_members(by_len, 1, engine="baseline"), root / "bad-load", "bad-load")
    assert all(r.error and "loading the engine" in r.error for r in failed)


def test_specs_of_different_engines_cannot_share_one(tmp_path):
    a = WorkerSpec(engine="reference", model="m", inputs="i", record="r", variant="a")
    b = dataclasses.replace(a, options={"dtype": "bf16"}, variant="b")
    with pytest.raises(ValueError, match="differ in options"):
        check_one_engine([a, b])
    check_one_engine([a, dataclasses.replace(a, inputs="other", batch=4, variant="c")])
    group = write_spec_group(tmp_path / "g.json", [a.write(tmp_path / "a.json"), b.write(tmp_path / "b.json")])
    assert [s.variant for s in read_specs([str(group), str(tmp_path / "a.json")])] == ["a", "b", "a"]
    with pytest.raises(ValueError, match="share an engine"):
        run_group([(Variant("reference", 16, 1), None, RunSettings("x")),
                   (Variant("reference", 16, 2), None, RunSettings("x"))], tmp_path, "g")


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
def test_generation_shapes_share_an_engine_too(jobs):
    from harness.jobs.prepare import with_greedy_answers
    root, by_len = jobs
    job = with_greedy_answers(by_len[16], 2)
    settings = RunSettings(run_id="gen", budget_s=30, warmup=1, device="cpu", workload="generate", max_new_tokens=2)
    members = [(Variant("reference", 16, 1, b), dataclasses.replace(job, samples=n), settings) for b, n in ((1, 2), (4, 4))]
    records = run_group(members, root / "gen", "gen")
    assert [(r.batch, r.samples, r.workload) for r in records] == [(1, 2, "generate"), (4, 4, "generate")]
    assert all(r.error is None and r.valid is True and r.greedy_steps_checked == 2 for r in records)
