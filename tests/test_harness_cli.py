"""The harness's commands without MPI: argument errors, help, the regression gate, the launcher's
command lines for each MPI flavour, and the NVML sampler's no-op on a machine without a GPU."""
from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from harness.__main__ import main as harness_main
from harness.cli.job_args import parse_int_list, parse_phases
from harness.errors import UsageError
from harness.run.launch import MPICH, OPENMPI, UNKNOWN, build_command, detect_flavour, flavour_from_version_text
from harness.report.records import SUMMARY_COLUMNS


# ---- bad inputs get clear errors (exit 2, a message naming the fix) -------------------------
@pytest.mark.parametrize("argv, words", [
    (["compare", "--phases", "7-2"], ["7-2", "backwards", "2-7"]),
    (["compare", "--phases", "0-7"], ["phase 6 does not exist", "0..5"]),
    (["compare", "--phases", "x"], ["0-5", "0,2,4"]),
    (["compare", "--engines", "warp9"], ["unknown engine 'warp9'", "reference"]),
    (["run", "--engine", "warp9"], ["unknown engine 'warp9'", "baseline"]),
    (["run", "--engine", "reference", "--data", "/nonexistent/inputs.bin"], ["/nonexistent/inputs.bin", "make-data"]),
    (["compare", "--engines", "reference", "--data", "/nonexistent/inputs.bin"], ["no such file"]),
    (["run", "--engine", "reference", "--ranks", "0"], ["--ranks 0", "at least 1"]),
    (["compare", "--ranks", "1,0"], ["--ranks 1,0", "at least 1"]),
    (["compare", "--ranks", "two"], ["--ranks 'two'", "1,2,4"]),
    (["compare", "--seq-len", "16,-1"], ["--seq-len", "at least 1"]),
    (["run", "--engine", "reference", "--budget-s", "0"], ["--budget-s", "positive"]),
    (["run", "--engine", "reference", "--samples", "0"], ["--samples 0"]),
    (["compare", "--phases", "none"], ["nothing to run"]),
    (["run", "--engine", "reference", "--model", "/nonexistent/model"], ["--model", "make-model"]),
    (["report", "/nonexistent/run"], ["no such run folder"]),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, words, capsys):
    assert harness_main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"


def test_report_of_a_folder_without_records(tmp_path, capsys):
    assert harness_main(["report", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err


def test_report_leaves_a_suite_parts_files_as_the_suite_wrote_them(tmp_path, capsys):
    """A published part (part.json) is not rebuilt in place, whether named as the run folder or as --out."""
    from harness.report.part_meta import PartMeta
    part = tmp_path / "h100" / "decode"
    (part / "records").mkdir(parents=True)
    PartMeta("decode", "generation", "python -m harness suite --part decode", "0a20a9357717abcd",
             "2026-12-07 21:48 UTC", "NVIDIA H100 80GB HBM3", 222.0, "synthetic lfm2-8b-a1b (seed 0)").write(part)
    (part / "summary.csv").write_text("as the suite wrote it")
    (tmp_path / "elsewhere").mkdir()
    for argv in (["report", str(part)], ["report", str(tmp_path / "elsewhere"), "--out", str(part)]):
        assert harness_main(argv) == 2
        err = capsys.readouterr().err
        assert "is the suite part 'decode', measured at 0a20a9357717" in err and "--out DIR" in err
        assert "python -m harness suite --part decode --force" in err
    assert (part / "summary.csv").read_text() == "as the suite wrote it"


def test_seq_len_with_data_is_refused(tmp_path, capsys):
    from harness.jobs.files import write_inputs
    write_inputs(tmp_path / "inputs.bin", np.ones((2, 4), np.int32))
    assert harness_main(["run", "--engine", "reference", "--data", str(tmp_path / "inputs.bin"),
                         "--seq-len", "8"]) == 2
    assert "--seq-len comes from the --data file" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["run", "compare", "report", "regress"])
def test_help_teaches(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        harness_main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"python -m harness {cmd}" in out


def test_phase_and_list_parsing():
    assert parse_phases("0-5") == [0, 1, 2, 3, 4, 5]
    assert parse_phases("0,2,4") == [0, 2, 4]
    assert parse_phases("3") == [3]
    assert parse_phases("1-2,5") == [1, 2, 5]
    assert parse_phases("none") == []
    assert parse_int_list("16,128,512", "--seq-len") == [16, 128, 512]
    with pytest.raises(UsageError):
        parse_phases("5-0")


# ---- the launcher: flavour detection and command lines --------------------------------------
def test_flavour_from_version_text():
    assert flavour_from_version_text("mpiexec (OpenRTE) 4.1.2\nReport bugs to http://www.open-mpi.org/") == OPENMPI
    assert flavour_from_version_text("HYDRA build details:\n    Version: 5.0.2") == MPICH
    assert flavour_from_version_text("something else") == UNKNOWN


def test_detect_flavour_runs_the_executable(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'mpirun (Open MPI) 4.1.6'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert detect_flavour(str(fake)) == OPENMPI


def test_open_mpi_as_root_oversubscribed():
    cmd = build_command("mpirun", OPENMPI, 8, ["python", "-m", "harness.run.worker"], cores=4, is_root=True)
    assert cmd[:1] == ["mpirun"] and "--allow-run-as-root" in cmd and "--oversubscribe" in cmd
    assert cmd[cmd.index("-n") + 1] == "8" and cmd[-3:] == ["python", "-m", "harness.run.worker"]
    assert cmd[cmd.index("--bind-to") + 1] == "none"  # the baseline's CPU math is multi-threaded
    plain = build_command("mpirun", OPENMPI, 2, ["x"], cores=4, is_root=False)
    assert "--allow-run-as-root" not in plain and "--oversubscribe" not in plain


def test_hostfile_spelling_per_flavour():
    o = build_command("mpirun", OPENMPI, 16, ["x"], hostfile="hosts", cores=4, is_root=False,
                      forward_env=["PYTHONPATH"])
    assert o[o.index("--hostfile") + 1] == "hosts" and "--oversubscribe" not in o  # slots come from the file
    assert o[o.index("-x") + 1] == "PYTHONPATH"  # remote ranks import this checkout too
    m = build_command("mpiexec", MPICH, 16, ["x"], hostfile="hosts", cores=4, is_root=True)
    assert m == ["mpiexec", "-f", "hosts", "-n", "16", "x"]


# ---- the regression gate --------------------------------------------------------------------
def _summary(tokens: dict, valid=None, error=None) -> pd.DataFrame:
    rows = []
    for (engine, seq), t in tokens.items():
        row = dict.fromkeys(SUMMARY_COLUMNS)
        row.update(engine=engine, dtype="fp32", seq_len=seq, ranks=1, batch=16, tokens_per_s=t,
                   valid=True if valid is None else valid.get(engine, True), error=(error or {}).get(engine))
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def reference_csv(tmp_path):
    ref = _summary({("baseline", 16): 5.0, ("phase5", 16): 20000.0, ("phase5", 128): 90000.0})
    path = tmp_path / "ref.csv"
    ref.to_csv(path, index=False)
    return path


def _gate(tmp_path, df, reference_csv, *extra) -> int:
    cur = tmp_path / "cur.csv"
    df.to_csv(cur, index=False)
    return harness_main(["regress", str(cur), "--against", str(reference_csv), *extra])


def test_regress_fails_on_a_planted_20_percent_drop(tmp_path, reference_csv, capsys):
    cur = _summary({("baseline", 16): 5.0, ("phase5", 16): 16000.0, ("phase5", 128): 90000.0})
    assert _gate(tmp_path, cur, reference_csv, "--max-drop", "5%") == 1
    out = capsys.readouterr().out
    assert "FAIL  phase5 fp32 seq_len=16" in out and "-20.0%" in out


def test_regress_passes_noise_below_the_threshold(tmp_path, reference_csv):
    rng = np.random.default_rng(0)
    base = {("baseline", 16): 5.0, ("phase5", 16): 20000.0, ("phase5", 128): 90000.0}
    noisy = {k: v * (1 + rng.uniform(-0.04, 0.04)) for k, v in base.items()}
    assert _gate(tmp_path, _summary(noisy), reference_csv, "--max-drop", "0.05") == 0
    # The same 20% drop passes a looser gate: the threshold is what decides.
    cur = _summary({**base, ("phase5", 16): 16000.0})
    assert _gate(tmp_path, cur, reference_csv, "--max-drop", "25%") == 0


def test_regress_fails_on_validation_and_crash(tmp_path, reference_csv, capsys):
    base = {("baseline", 16): 5.0, ("phase5", 16): 20000.0, ("phase5", 128): 90000.0}
    assert _gate(tmp_path, _summary(base, valid={"phase5": False}), reference_csv) == 1
    assert "validation failed" in capsys.readouterr().out
    assert _gate(tmp_path, _summary(base, error={"baseline": "CUDA error: out of memory"}), reference_csv) == 1
    assert "FAILED to run (CUDA error: out of memory)" in capsys.readouterr().out


def test_regress_nothing_matched_and_bad_threshold(tmp_path, reference_csv, capsys):
    assert _gate(tmp_path, _summary({("hf", 512): 100.0}), reference_csv) == 2
    assert "no variant matched" in capsys.readouterr().err
    base = _summary({("baseline", 16): 5.0})
    assert _gate(tmp_path, base, reference_csv, "--max-drop", "5") == 2
    assert "did you mean 5%" in capsys.readouterr().err


def test_regress_missing_variant_is_noted_or_required(tmp_path, reference_csv, capsys):
    cur = _summary({("baseline", 16): 5.0, ("phase5", 16): 20000.0})
    assert _gate(tmp_path, cur, reference_csv) == 0
    assert "missing here" in capsys.readouterr().out
    assert _gate(tmp_path, cur, reference_csv, "--require-all") == 1


# ---- NVML on a machine without a GPU ------------------------------------------------------
def test_nvml_sampler_is_a_noop_without_a_gpu():
    from harness.measure.nvml import NvmlSampler
    s = NvmlSampler(None)
    s.start()
    series = s.stop()
    assert not series.available and "CPU" in series.note and series.t_s == []
    assert series.summary()["gpu_util_mean"] is None


def test_nvml_sampler_says_why_when_nvml_is_missing():
    from harness.measure.nvml import NvmlSampler, driver_version
    if driver_version() is not None:
        pytest.skip("NVML is present on this machine")
    series = NvmlSampler(0, interval_s=0.05)
    series.start()
    out = series.stop()
    assert not out.available and out.note.startswith("NVML unavailable")


def test_worker_split_is_contiguous_and_covers_every_sample():
    from harness.run.ranks import split_range
    for n in (1, 5, 6, 17):
        for size in (1, 2, 3, 4):
            ranges = [split_range(n, size, r) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(h - l for l, h in ranges) - min(h - l for l, h in ranges) <= 1


def test_no_tmp_files_left_by_a_record_write(tmp_path):
    from harness.report.records import VariantRecord
    VariantRecord(engine="reference", samples_per_s=float("nan")).write(tmp_path / "r.json")
    assert os.listdir(tmp_path) == ["r.json"]
    assert VariantRecord.read(tmp_path / "r.json").samples_per_s is None  # NaN -> null, strict JSON


def test_nvml_sampler_thread_with_a_fake_nvml(monkeypatch):
    """The sampling path a GPU machine takes, against a stand-in pynvml: units (KB/s -> GB/s,
    bytes -> GB), the CUDA_VISIBLE_DEVICES translation, and the summary."""
    import sys
    import time
    import types

    from harness.measure.nvml import NvmlSampler
    asked = []
    fake = types.SimpleNamespace(
        NVML_PCIE_UTIL_TX_BYTES=0, NVML_PCIE_UTIL_RX_BYTES=1,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: asked.append(i) or f"h{i}",
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3_000_000_000),
        nvmlDeviceGetPcieThroughput=lambda h, d: 11_000_000 if d == 1 else 250_000,  # KB/s
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    s = NvmlSampler(1, interval_s=0.05)
    assert s.series.available and asked == [5]  # CUDA device 1 is physical GPU 5
    s.start()
    time.sleep(0.2)
    series = s.stop()
    assert 2 <= len(series.t_s) <= 6
    summary = series.summary()
    assert summary["gpu_util_mean"] == 87 and summary["gpu_mem_peak_gb"] == pytest.approx(3.0)
    assert summary["nvml_pcie_rx_gbps"] == pytest.approx(11.0) and summary["nvml_pcie_tx_gbps"] == pytest.approx(0.25)


def test_record_math_for_two_ranks_on_two_gpus():
    """metrics.build_record on numbers a 2-GPU run would gather: per-sample bytes, bus rates,
    NVML per GPU (PCIe summed, utilization averaged), FLOPs against 2 x the fp32 ceiling."""
    import types

    from harness.config import get_preset
    from harness.report.metrics import build_record
    from harness.measure.model_stats import model_stats
    from harness.run.worker import WorkerSpec
    cfg = get_preset("tiny")
    engine = types.SimpleNamespace(config=cfg, dtype="fp32", max_batch=1, phase=0)
    spec = WorkerSpec(engine="baseline", model="m", inputs="i", record="r", batch=16, budget_s=60, run_id="x",
                      variant="baseline-s16-r2-b16")
    counters = {"h2d_bytes": 4e9, "d2h_bytes": 1e6, "device_allocs": 90, "h2d_seconds": 0.5}
    ranks = [dict(rank=r, host="n1", gpu=r, samples_ran=3, first_sample=3 * r, load_s=1.0 + r, warmup_s=0.5,
                  counters=counters) for r in range(2)]

    def series(util, rx):
        return {"available": True, "device_index": 0, "device_name": "H100", "pci_bus_id": None, "note": "",
                "t_s": [0.0, 0.1], "gpu_util_pct": [util, util], "mem_used_gb": [1.0, 2.5],
                "pcie_rx_gbps": [rx, rx], "pcie_tx_gbps": [0.1, 0.1]}
    rec = build_record(spec, engine, ranks, [[10.0, 20.0, 30.0], [15.0, 25.0, 35.0]],
                       [series(40.0, 8.0), series(60.0, 9.0)],
                       {"elapsed": 2.0, "budget_hit": False}, 1, 6, 16)
    assert rec.samples == 6 and rec.samples_per_s == 3.0 and rec.tokens_per_s == 48.0
    assert rec.h2d_bytes_per_sample == pytest.approx(8e9 / 6) and rec.h2d_gbps == pytest.approx(4.0)
    assert rec.h2d_copy_gbps == pytest.approx(8.0) and rec.device_allocs_per_sample == 30
    assert rec.latency_p50_ms == pytest.approx(22.5) and rec.load_s == 2.0
    assert rec.gpus == 2 and rec.gpu_util_mean == 50.0 and rec.gpu_util_max == 60.0 and rec.gpu_mem_peak_gb == 2.5
    assert rec.nvml_pcie_rx_gbps == pytest.approx(17.0) and rec.nvml_pcie_tx_gbps == pytest.approx(0.2)
    flops = model_stats(cfg).job_flops(16) * 6 / 2.0
    assert rec.tflops == pytest.approx(flops / 1e12) and rec.pct_of_peak == pytest.approx(100 * flops / 1e12 / 134.0)


def test_regress_never_compares_generate_rows_with_prefill_rows(tmp_path, reference_csv, capsys):
    """A generate run's tokens/s (new tokens) is not a drop against a prefill baseline."""
    cur = _summary({("baseline", 16): 5.0, ("phase5", 16): 20000.0, ("phase5", 128): 90000.0})
    gen = _summary({("phase5", 16): 50.0}).assign(workload="generate")
    assert _gate(tmp_path, pd.concat([cur.assign(workload="prefill"), gen]), reference_csv) == 0
    assert "phase5 fp32 generate seq_len=16" in capsys.readouterr().out
