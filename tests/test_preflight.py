"""Checks before anything is launched: each problem is one clear line, exit status 2, and nothing
is written (no run folder, nothing in the model cache). No MPI needed: nothing gets that far."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from harness.__main__ import main as harness_main
from harness.checkpoints.safetensors_stream import INDEX_FILE, SINGLE_FILE
from harness.checkpoints.synthetic import write_synthetic
from harness.cli import preflight
from harness.config import get_preset
from harness.jobs.files import synthetic_prompts, write_inputs, write_logits

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_synthetic(TINY, tmp_path_factory.mktemp("model") / "tiny", progress=False)


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A private (empty) model cache, inputs.bin of 4 prompts, and where a run would be written."""
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "inputs.bin"
    write_inputs(data, synthetic_prompts(TINY.vocab_size, 4, 8, seed=1))
    return tmp_path, data


def refused(argv: list[str], tmp_path, capsys) -> list[str]:
    """Run the command; check exit 2 and that nothing was written; the error lines."""
    before = sorted(p.name for p in tmp_path.iterdir())
    assert harness_main(argv + ["--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
    return [line for line in err.splitlines() if line.startswith("error: ")]


def run_args(model, data, *extra) -> list[str]:
    return ["run", "--engine", "reference", "--model", str(model), "--data", str(data), *extra]


def test_answers_of_another_sample_count(model, job, capsys):
    tmp_path, data = job
    write_logits(tmp_path / "answers.bin", np.zeros((3, TINY.vocab_size), np.float32))
    lines = refused(run_args(model, data, "--answers", str(tmp_path / "answers.bin")), tmp_path, capsys)
    assert len(lines) == 1 and "holds 3 samples but --data" in lines[0] and "holds 4" in lines[0]


def test_answers_of_another_vocabulary(model, job, capsys):
    tmp_path, data = job
    write_logits(tmp_path / "answers.bin", np.zeros((4, 100), np.float32))
    lines = refused(run_args(model, data, "--answers", str(tmp_path / "answers.bin")), tmp_path, capsys)
    assert len(lines) == 1 and "100 logits per sample" in lines[0] and f"vocabulary is {TINY.vocab_size}" in lines[0]


def test_truncated_answers(model, job, capsys):
    tmp_path, data = job
    answers = tmp_path / "answers.bin"
    write_logits(answers, np.zeros((4, TINY.vocab_size), np.float32))
    os.truncate(answers, answers.stat().st_size - 4)
    lines = refused(run_args(model, data, "--answers", str(answers)), tmp_path, capsys)
    assert len(lines) == 1 and "truncated" in lines[0] and str(answers) in lines[0]


def test_a_token_id_outside_the_vocabulary_is_named_with_its_sample_and_position(model, job, capsys):
    tmp_path, data = job
    tokens = synthetic_prompts(TINY.vocab_size, 4, 8, seed=1)
    tokens[2, 5] = TINY.vocab_size + 7
    write_inputs(data, tokens)
    lines = refused(run_args(model, data), tmp_path, capsys)
    assert len(lines) == 1
    assert str(data) in lines[0] and f"token id {TINY.vocab_size + 7} (sample 2, position 5)" in lines[0]


def test_more_samples_than_the_data_holds(model, job, capsys):
    tmp_path, data = job
    lines = refused(run_args(model, data, "--samples", "9"), tmp_path, capsys)
    assert lines == [f"error: --samples 9: {data} holds only 4 samples"]


@pytest.mark.parametrize("damage", ["truncated file", "missing shard", "truncated model.bin"])
def test_an_incomplete_checkpoint(job, capsys, damage):
    tmp_path, data = job
    if damage == "truncated file":
        folder = write_synthetic(TINY, tmp_path / "m", progress=False)
        os.truncate(folder / SINGLE_FILE, 1000)
        want = "truncated"
    elif damage == "missing shard":
        folder = write_synthetic(TINY, tmp_path / "m", shard_bytes=100_000, progress=False)
        shard = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))[1]
        (folder / shard).unlink()
        want = shard
    else:
        from harness.checkpoints.modelbin import write_model_bin
        from harness.checkpoints.synthetic import SyntheticCheckpoint
        folder = write_model_bin(SyntheticCheckpoint(TINY), tmp_path / "m" / "model.bin", progress=False)
        os.truncate(folder, folder.stat().st_size - 1000)
        want = "truncated"
    lines = refused(run_args(folder, data), tmp_path, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: --model {folder}") and want in lines[0]


def test_gpu_engines_without_a_gpu_get_one_message(job, capsys, monkeypatch):
    tmp_path, _ = job
    monkeypatch.setattr(preflight, "_gpu_here", lambda: False)
    lines = refused(["compare", "--phases", "0-5", "--engines", "optimized,reference", "--preset", "tiny"],
                    tmp_path, capsys)
    assert len(lines) == 1
    assert "baseline, phase1, phase2, phase3, phase4, phase5, optimized need one" in lines[0]
    assert "`--phases none --engines reference`" in lines[0] and "reference," not in lines[0]
    lines = refused(["run", "--engine", "phase3", "--preset", "tiny"], tmp_path, capsys)
    assert len(lines) == 1 and "`--engine reference`" in lines[0]


def test_device_cpu_for_a_cuda_engine_says_it_needs_a_gpu(job, capsys):
    tmp_path, _ = job
    lines = refused(["run", "--engine", "phase4", "--device", "cpu", "--preset", "tiny"], tmp_path, capsys)
    assert lines == ["error: --device cpu: phase4 runs only on a GPU (CUDA kernels); --device cpu applies to "
                     "reference and hf"]


def test_the_full_model_on_a_small_cpu_machine_is_refused_before_16_gb_are_written(job, capsys, monkeypatch):
    tmp_path, _ = job
    monkeypatch.setattr(preflight, "_gpu_here", lambda: False)
    monkeypatch.setattr("harness.measure.machine.available_memory_bytes", lambda: 24 * 10**9)
    lines = refused(["run", "--engine", "reference"], tmp_path, capsys)  # the default preset: lfm2-8b-a1b
    assert len(lines) == 1
    assert "reference answers on the CPU" in lines[0] and "needs 66.7 GB of memory" in lines[0]
    assert "24.0 GB available" in lines[0] and "--preset small" in lines[0]
    assert not (tmp_path / "cache").exists()


def test_a_disk_too_small_for_the_synthetic_checkpoint(job, capsys, monkeypatch):
    tmp_path, _ = job
    monkeypatch.setattr(preflight, "_gpu_here", lambda: True)  # the answers would run on the GPU
    monkeypatch.setattr("harness.measure.machine.free_disk_bytes", lambda path: 10**9)
    lines = refused(["run", "--engine", "hf", "--preset", "small"], tmp_path, capsys)
    assert len(lines) == 1 and "synthetic small checkpoint takes 2.3 GB" in lines[0] and "1.0 GB free" in lines[0]


def test_several_problems_are_all_reported(model, job, capsys):
    tmp_path, data = job
    tokens = synthetic_prompts(TINY.vocab_size, 4, 8, seed=1)
    tokens[0, 1] = -1
    write_inputs(data, tokens)
    lines = refused(["compare", "--phases", "4", "--device", "cpu", "--model", str(model), "--data", str(data)],
                    tmp_path, capsys)
    assert len(lines) == 2 and "sample 0, position 1" in lines[0] and "phase4 runs only on a GPU" in lines[1]


def test_ranks_that_share_a_gpu_past_its_memory_are_refused(job, capsys, monkeypatch):
    tmp_path, _ = job
    monkeypatch.setattr(preflight, "_gpu_here", lambda: True)
    monkeypatch.setattr(preflight, "_gpu_sizes", lambda: (80 * 10**9,))
    monkeypatch.setattr("harness.measure.machine.free_disk_bytes", lambda path: 10**12)
    lines = refused(["run", "--engine", "optimized", "--dtype", "fp32", "--ranks", "3"], tmp_path, capsys)
    assert lines == ["error: optimized holds 33.4 GB of fp32 weights on its GPU per rank; 3 ranks share this "
                     "machine's one GPU: 100.1 GB against 80.0 GB of GPU memory: fewer ranks (--ranks), --dtype bf16, "
                     "use --preset small or --preset tiny"]


def test_gpu_memory_counts_the_ranks_of_the_busiest_gpu_and_only_whole_model_engines():
    from types import SimpleNamespace
    params = 8_000_000_000  # 16 GB in bf16, 32 GB in fp32

    def problems(engines, ranks, sizes, dtype=None, device="auto"):
        out: list[str] = []
        args = SimpleNamespace(dtype=dtype, device=device)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(preflight, "_gpu_sizes", lambda: sizes)
            preflight._check_gpu_fit(args, engines, ranks, params, "a smaller model", out)
        return out

    gpu80 = (80 * 10**9,)
    assert problems(["optimized"], 2, gpu80, "fp32") == []                  # 64 GB on one GPU
    assert problems(["optimized"], 4, gpu80 * 2, "fp32") == []              # two per GPU
    assert len(problems(["optimized"], 5, gpu80 * 2, "fp32")) == 1          # three on the busiest
    assert problems(["optimized"], 4, gpu80) == []                          # bf16 by default: 64 GB
    assert len(problems(["optimized", "hf"], 6, gpu80)) == 2                # 96 GB each
    assert problems(["hf"], 6, gpu80, device="cpu") == []                   # hf on the CPU: not the GPU's
    assert problems(["phase5", "phase4", "reference"], 8, gpu80, "fp32") == []  # they plan their own residency
    assert problems(["optimized"], 8, ()) == []                             # no size known: no verdict
