"""Rough edges of the commands, each with the behaviour that replaced it: regress on a folder
that is not a run, run folders that already exist, make-model over an existing checkpoint or
interrupted, engines that count no transfers, a CPU generate run, INTERRUPTED rows, and the one
line pytest prints for the GPU tests it skipped."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.__main__ import main as harness_main
from harness.checkpoints import synthetic
from harness.cli.run_folder import DEFAULT_OUT, RUN_OUTPUTS, clear_for_fresh_run
from harness.config import get_preset
from harness.report.records import SUMMARY_COLUMNS, VariantRecord

ROOT = Path(__file__).resolve().parents[1]
TINY = get_preset("tiny")


# ---- regress on what is not a run: exit 2 (1 means a regression), a clear message ---------------
@pytest.mark.parametrize("make, words", [
    (lambda d: None, "no records/*.json"),
    (lambda d: (d / "records").mkdir() or (d / "records" / "x.json").write_text("{not json"), "not a harness record"),
    (lambda d: (d / "records").mkdir() or (d / "records" / "x.json").write_text("[1, 2]"), "not a harness record"),
    (lambda d: (d / "summary.csv").write_text(""), "not a readable CSV"),
    (lambda d: (d / "summary.csv").write_text("a,b\n1,2\n"), "not a harness summary"),
])
def test_regress_on_an_empty_or_malformed_folder_exits_2(tmp_path, capsys, make, words):
    bad = tmp_path / "bad"
    bad.mkdir()
    make(bad)
    good = _summary(tmp_path / "good.csv", [_row()])
    assert harness_main(["regress", str(bad), "--against", str(good)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def _row(**kw) -> dict:
    row = dict(engine="reference", dtype="fp64", workload="prefill", seq_len=16, ranks=2, batch=8,
               tokens_per_s=100.0, valid=True, error=None, status="ok")
    row.update(kw)
    return row


def _summary(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_regress_fails_an_interrupted_variant_and_ignores_an_interrupted_reference(tmp_path, capsys):
    cur = _summary(tmp_path / "cur.csv", [_row(tokens_per_s=None, valid=False, status="interrupted",
                                               error="INTERRUPTED by SIGINT after 3.0 s"), _row(ranks=1)])
    ref = _summary(tmp_path / "ref.csv", [_row(), _row(ranks=1)])
    assert harness_main(["regress", str(cur), "--against", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "INTERRUPTED before it finished" in out and "--resume" in out and "FAILED to run" not in out
    ref2 = _summary(tmp_path / "ref2.csv", [_row(ranks=1), _row(tokens_per_s=None, valid=False, status="interrupted",
                                                               error="INTERRUPTED by SIGINT")])
    cur2 = _summary(tmp_path / "cur2.csv", [_row(ranks=1)])
    assert harness_main(["regress", str(cur2), "--against", str(ref2), "--require-all"]) == 0
    assert "missing" not in capsys.readouterr().out


def test_the_terminal_table_says_interrupted(tmp_path):
    from harness.report.frame import records_frame, short_table
    recs = [VariantRecord(engine="reference", variant="a", error="INTERRUPTED by SIGINT", status="interrupted"),
            VariantRecord(engine="reference", variant="b", error="boom"),
            VariantRecord(engine="reference", variant="c", valid=True, samples_per_s=1.0)]
    table = short_table(records_frame(recs))
    assert [line.split()[-1] for line in table.splitlines()[1:]] == ["INTERRUPTED", "FAILED", "VALID"]
    df = records_frame(recs)
    assert list(df["status"]) == ["interrupted", "failed", "ok"]
    assert list(df.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS


# ---- run folders ------------------------------------------------------------------------------------
def test_user_runs_default_to_the_ignored_runs_folder():
    from harness.__main__ import build_parser
    args = build_parser().parse_args(["run", "--engine", "reference"])
    assert args.out == DEFAULT_OUT == "runs"
    assert "/runs/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("argv, words", [
    ([], ["holds an earlier run (records)", "--resume", "--force"]),
    (["--run-id", "other", "--resume"], ["--resume: there is no run folder"]),
])
def test_an_existing_run_folder_is_not_written_into(tmp_path, capsys, argv, words):
    (tmp_path / "r" / "records").mkdir(parents=True)
    args = ["run", "--engine", "reference", "--preset", "tiny", "--out", str(tmp_path), "--run-id", "r"] + argv
    assert harness_main(args) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["records"]


def test_resume_and_force_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        harness_main(["run", "--engine", "reference", "--resume", "--force"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_force_removes_only_what_a_run_wrote(tmp_path):
    for name in RUN_OUTPUTS:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    clear_for_fresh_run(tmp_path, SimpleNamespace(force=True))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ---- make-model: nothing overwritten, nothing half-written ---------------------------------------
def test_make_model_refuses_an_existing_checkpoint_unless_forced(tmp_path, capsys):
    out = tmp_path / "m"
    assert harness_main(["make-model", "--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    before = (out / "synthetic.json").read_text()
    assert harness_main(["make-model", "--preset", "tiny", "--seed", "5", "--out", str(out), "--quiet"]) == 2
    assert "already holds a checkpoint; add --force" in capsys.readouterr().err
    assert (out / "synthetic.json").read_text() == before
    assert harness_main(["make-model", "--preset", "tiny", "--seed", "5", "--out", str(out), "--quiet",
                         "--force"]) == 0
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left beside it


@pytest.mark.parametrize("occupant, words", [("file", "is a file"), ("folder", "not a checkpoint's")])
def test_make_model_out_over_something_else_is_a_clear_error(tmp_path, capsys, occupant, words):
    out = tmp_path / "x"
    if occupant == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert harness_main(["make-model", "--preset", "tiny", "--out", str(out), "--quiet", "--force"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_an_interrupted_make_model_leaves_nothing_that_looks_whole(tmp_path, monkeypatch):
    """Ctrl-C halfway through the tensors, into the cache and over an existing --out checkpoint."""
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    kept = tmp_path / "kept"
    assert harness_main(["make-model", "--preset", "tiny", "--out", str(kept), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    real = synthetic.synthetic_tensor

    def interrupted(cfg, name, seed, skew=0.0):
        if name == "layers.2.conv.in_proj.weight":
            raise KeyboardInterrupt
        return real(cfg, name, seed, skew)
    monkeypatch.setattr(synthetic, "synthetic_tensor", interrupted)
    assert harness_main(["make-model", "--preset", "tiny", "--quiet"]) == 130
    assert list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / ".tiny-seed0-skew0-bf16.lock"]
    assert harness_main(["make-model", "--preset", "tiny", "--seed", "3", "--out", str(kept), "--quiet",
                         "--force"]) == 130
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "kept"]


# ---- records: what an engine did not count, what a CPU run cannot be compared with ----------------
def test_an_engine_that_counts_no_transfers_reports_none_not_zero():
    from harness.report.metrics import TRANSFER_COLUMNS, build_record
    from harness.run.spec import WorkerSpec
    spec = WorkerSpec(engine="hf", model="m", inputs="i", record="r", variant="hf-s16-r1-b64")
    counters = {"h2d_bytes": 0, "d2h_bytes": 0, "device_allocs": 0, "h2d_seconds": 0.0}
    info = [{"rank": 0, "host": "h", "gpu": None, "samples_ran": 4, "counters": counters, "load_s": 1.0,
             "warmup_s": 0.5}]
    timed = {"elapsed": 2.0, "budget_hit": False}
    nvml = [{"available": False, "note": "engine runs on the CPU; no GPU to sample"}]
    for counts, expect in ((False, None), (True, 0.0)):
        engine = SimpleNamespace(name="hf", config=TINY, dtype="bf16", max_batch=64, counts_transfers=counts)
        rec = build_record(spec, engine, info, [[1.0]], nvml, timed, 4, 4, 16)
        assert all(getattr(rec, c) == expect for c in TRANSFER_COLUMNS if c != "h2d_copy_gbps")
        assert any("n/a" in n for n in rec.notes) is (not counts)
        assert rec.device.startswith("cpu")


def test_a_cpu_generate_run_is_described_without_the_h100_decode_floor():
    from harness.cli.run import describe
    rec = VariantRecord(engine="reference", variant="reference-s2-r1-bmax", workload="generate", samples=3,
                        samples_requested=3, max_new_tokens=6, ttft_ms=5.0, itl_p50_ms=1.0, itl_p90_ms=1.5,
                        itl_p99_ms=2.0, decode_tokens_per_s=900.0, pct_of_decode_floor=None, valid=True)
    text = describe(rec)
    assert "decode 900 tokens/s" in text and "floor" not in text
    rec.pct_of_decode_floor = 42.0
    assert "42% of the H100's decode floor" in describe(rec)


# ---- pytest's summary: one line for the GPU tests a CPU machine skips ---------------------------
def test_the_gpu_skips_fold_into_one_summary_line():
    from harness.gpu import gpu_unavailable_reason
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is here: the GPU tests run")
    files = ["tests/gpu/test_phase1_kernels.py", "tests/gpu/test_phase2_kernels.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                         cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "tests/conftest.py: no GPU: " in skipped[0], out[-2000:]
    count = int(skipped[0].split("[")[1].split("]")[0])
    assert count > 20 and f"{count} skipped" in out
