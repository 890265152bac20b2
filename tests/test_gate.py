"""The logit comparison statistics on known inputs, the gate's two rules, its calibration cache
beside the answers, and what `regress`, the report and `explain` make of its verdicts."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from harness.jobs.accuracy import kl_per_sample, logit_stats, topk_agreement_per_sample
from harness.jobs.gate import FACTOR, Calibration, cached_calibration, calibration_path, gate_name, judge


# ---- statistics -----------------------------------------------------------------------------------
def test_kl_of_known_distributions_is_exact_and_shift_invariant():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.5, 0.25])
    answers = np.log(np.stack([p, p, p]))
    outputs = np.stack([np.log(q), np.log(p) + 7.0, np.log(q) - 3.0])  # a constant shift is the same softmax
    kl = kl_per_sample(outputs, answers)
    assert kl == pytest.approx([0.25 * math.log(2), 0.0, 0.25 * math.log(2)], abs=1e-15)
    assert kl_per_sample(np.log(np.stack([p])), np.log(np.stack([q]))) == pytest.approx([0.25 * math.log(2)])
    bad = outputs.copy()
    bad[1, 2] = np.nan
    assert np.isinf(kl_per_sample(bad, answers)[1]) and np.isfinite(kl_per_sample(bad, answers)[[0, 2]]).all()


def test_topk_agreement_counts_the_shared_tokens():
    answers = np.array([[9, 8, 7, 6, 5, 4, 3, 2.0], [9, 8, 7, 6, 5, 4, 3, 2.0]])
    outputs = np.array([[9, 8, 7, 6, 0, 4, 3, 2.0],  # token 4 drops out of the top 5, token 5 comes in
                        [0, 8, 7, 6, 5, 4, 3, 2.0]])  # the argmax is lost, 4 of the top 5 stay
    assert list(topk_agreement_per_sample(outputs, answers, 1)) == [1.0, 0.0]
    assert list(topk_agreement_per_sample(outputs, answers, 5)) == [0.8, 0.8]
    s = logit_stats(outputs, answers)
    assert (s.top1_agreement, s.top5_agreement, s.max_abs_err) == (0.5, 0.8, 9.0)


def test_logit_stats_aggregate_the_per_sample_kl():
    rng = np.random.default_rng(0)
    answers = rng.normal(size=(101, 50))
    outputs = answers + rng.normal(scale=np.linspace(0, 1, 101)[:, None], size=answers.shape)
    s = logit_stats(outputs, answers)
    kl = kl_per_sample(outputs, answers)
    assert s.kl_mean == pytest.approx(kl.mean()) and s.kl_p50 == pytest.approx(np.median(kl))
    assert s.kl_max == kl.max() and s.kl_p99 == np.sort(kl)[99]  # nearest rank: the 100th of 101
    assert s.samples == 101 and list(s.columns()) == ["max_abs_err", "kl_mean", "kl_p99", "kl_max",
                                                      "top1_agreement", "top5_agreement"]


# ---- the two rules --------------------------------------------------------------------------------
def _calibration(kl_p50: float) -> Calibration:
    return Calibration("bf16", 128, kl_p50, kl_p50, kl_p50, kl_p50, 1.0, 1.0, 0.1, "cpu")


def test_gate_names_say_which_rule_judged():
    assert gate_name("fp32") == gate_name("float32") == gate_name(None) == "fp32 1e-3"
    assert gate_name("fp64", tol=2e-4) == "fp32 2e-4"
    assert gate_name("bf16") == gate_name("torch.bfloat16") == f"bf16 vs torch-bf16 x {FACTOR:g}"
    assert gate_name("fp16") == f"fp16 vs torch-fp16 x {FACTOR:g}"


def test_fp32_rule_is_the_jobs_1e3_contract():
    answers = np.zeros((4, 8), np.float32)
    out = answers.copy()
    out[2, 5] = 0.9e-3
    v = judge(out, answers, "fp32")
    assert v.valid and v.gate == "fp32 1e-3" and v.limit == 1e-3 and v.beyond == ()
    out[1, 0] = 2e-3
    v = judge(out, answers, "fp32")
    assert not v.valid and v.beyond == (1,) and v.record_columns()["invalid_samples"] == 1


def test_bf16_rule_judges_the_median_sample_against_the_calibration():
    rng = np.random.default_rng(1)
    answers = rng.normal(size=(64, 32))
    noise = rng.normal(size=answers.shape)
    rounding = judge(answers + 0.01 * noise, answers, "bf16", calibration=_calibration(1.0))
    median = rounding.stats.kl_p50
    assert judge(answers + 0.01 * noise, answers, "bf16", calibration=_calibration(median / FACTOR)).valid
    tight = judge(answers + 0.01 * noise, answers, "bf16", calibration=_calibration(0.99 * median / FACTOR))
    assert not tight.valid and len(tight.beyond) >= 32 and "median KL" in tight.reason()
    # a few samples far off do not move the median; a NaN anywhere fails the row
    out = answers + 0.01 * noise
    out[:5] += 3 * noise[:5]
    assert judge(out, answers, "bf16", calibration=_calibration(median)).valid
    out[7, 3] = np.nan
    v = judge(out, answers, "bf16", calibration=_calibration(median))
    assert not v.valid and 7 in v.beyond and v.reason() == "non-finite logits"
    with pytest.raises(ValueError, match="needs a bf16 calibration"):
        judge(out, answers, "bf16")


def test_record_columns_fill_the_record_and_summary():
    from harness.report.records import EXTRA_COLUMNS, SUMMARY_COLUMNS, VariantRecord
    answers = np.zeros((3, 8))
    cols = judge(answers + 1e-4, answers, "bf16", calibration=_calibration(1e-6)).record_columns()
    assert set(cols) <= set(SUMMARY_COLUMNS + EXTRA_COLUMNS)
    rec = VariantRecord(engine="optimized", dtype="bf16")
    rec.__dict__.update(cols)
    row = rec.summary_row()
    assert row["gate"] == "bf16 vs torch-bf16 x 4" and row["valid"] is True and row["kl_p50"] == 0.0


# ---- the calibration, cached beside the answers -----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from harness.checkpoints.open import open_checkpoint
    from harness.checkpoints.synthetic import write_synthetic
    from harness.config import get_preset
    from harness.jobs.files import reference_answers, synthetic_prompts, write_inputs, write_logits
    d = tmp_path_factory.mktemp("gate")
    model = write_synthetic(get_preset("tiny"), d / "model", seed=0, progress=False)
    tokens = synthetic_prompts(get_preset("tiny").vocab_size, 40, 8, seed=3)
    write_inputs(d / "inputs.bin", tokens)
    write_logits(d / "answers.bin", reference_answers(open_checkpoint(model), tokens, device="cpu", progress=False))
    return d, model


def test_calibration_is_made_once_and_remade_for_rewritten_answers(tiny_files):
    import os
    d, model = tiny_files
    answers = d / "answers.bin"
    c, note = cached_calibration(answers, d / "inputs.bin", model, "m1", "bf16", "cpu")
    path = calibration_path(answers, "m1", "bf16")
    assert "made and cached" in note and path.name == "answers.gate-m1-bf16.json" and path.is_file()
    assert c.dtype == "bf16" and c.samples == 40 and 0 < c.kl_p50 < c.kl_max and c.device == "cpu"
    again, note = cached_calibration(answers, d / "inputs.bin", model, "m1", "bf16", "cpu")
    assert again == c and "read from" in note
    os.utime(answers, ns=(answers.stat().st_atime_ns, answers.stat().st_mtime_ns + 10**9))  # rewritten
    remade, note = cached_calibration(answers, d / "inputs.bin", model, "m1", "bf16", "cpu")
    assert "made and cached" in note and remade.answers_mtime_ns == answers.stat().st_mtime_ns
    assert dataclasses.replace(remade, answers_mtime_ns=c.answers_mtime_ns) == c  # the same numbers


def test_prepared_jobs_carry_the_bf16_calibration(tmp_path, monkeypatch):
    from harness.checkpoints.synthetic import write_synthetic
    from harness.config import get_preset
    from harness.jobs.prepare import gate_calibration, model_id, synthetic_job
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    model = str(write_synthetic(get_preset("tiny"), tmp_path / "model", seed=0, progress=False))
    job = synthetic_job(model, "tiny", 6, 5)
    assert calibration_path(job.answers, model_id(model), "bf16").is_file()
    assert "read from" in gate_calibration(model, job.inputs, job.answers, "bf16")[1]
    assert gate_calibration(model, job.inputs, job.answers, "fp32") == (None, None)


# ---- regress, the report's note, explain ---------------------------------------------------------
def test_regress_fails_an_invalid_row_of_any_dtype_even_if_invalid_before():
    from harness.report.regress import compare
    row = dict(engine="hf", dtype="bf16", workload="prefill", seq_len=16, ranks=1, batch=8, tokens_per_s=100.0,
               valid=False, error=None)
    both = compare(pd.DataFrame([row]), pd.DataFrame([row]), max_drop=0.05)
    assert not both.ok and "INVALID in the reference too" in both.failures[0]
    fine = compare(pd.DataFrame([{**row, "valid": True}]), pd.DataFrame([row]), max_drop=0.05)
    assert fine.ok


def test_report_note_gives_the_gates_verdict_and_numbers():
    from harness.report.html import _invalid_detail
    from harness.report.records import VariantRecord
    common = dict(engine="optimized", samples=128, invalid_samples=90, max_abs_err=1.2, top1_agreement=0.7,
                  top5_agreement=0.75, kl_mean=0.011, kl_p50=0.0098, kl_p99=0.04, kl_max=0.05, valid=False)
    bf16 = _invalid_detail(VariantRecord(dtype="bf16", gate="bf16 vs torch-bf16 x 4", gate_limit=6.4e-4, **common))
    assert "bf16 vs torch-bf16 x 4" in bf16 and "median KL 0.0098 nats > limit 0.00064" in bf16
    assert "90 of 128 samples" in bf16 and "top-5 75.0%" in bf16 and "engine bug" in bf16
    nan = _invalid_detail(VariantRecord(dtype="bf16", gate="bf16 vs torch-bf16 x 4", gate_limit=6.4e-4,
                                        **{**common, "kl_p50": None, "max_abs_err": None}))
    assert "non-finite logits" in nan
    fp32 = _invalid_detail(VariantRecord(dtype="fp32", gate="fp32 1e-3", gate_limit=1e-3, **common))
    assert "gate 'fp32 1e-3'" in fp32 and "90 of 128 samples beyond tolerance" in fp32 and "explain" in fp32


def test_report_notes_a_bf16_row_its_gate_failed_as_the_gates_verdict_not_as_expected(tmp_path):
    from harness.report.html import write_report
    from harness.report.records import VariantRecord
    common = dict(engine="optimized", dtype="bf16", seq_len=16, batch=8, samples=128, max_abs_err=1.2,
                  top1_agreement=0.7, valid=False, workload="prefill", run_id="r")
    VariantRecord(variant="gated", gate="bf16 vs torch-bf16 x 4", gate_limit=6.4e-4, invalid_samples=90,
                  kl_mean=0.011, kl_p50=0.0098, kl_p99=0.04, kl_max=0.05, **common).write(tmp_path / "records" / "a.json")
    VariantRecord(variant="ungated", **common).write(tmp_path / "records" / "b.json")  # from before the gate
    _, html_path, _ = write_report([tmp_path])
    text = html_path.read_text()
    assert "gated: outputs INVALID (gate &#x27;bf16 vs torch-bf16 x 4&#x27;: median KL 0.0098" in text
    assert "look for an engine bug" in text
    assert "1 bf16 variant(s) INVALID against the float32 answers, as expected" in text  # only the ungated one


def _explain(d, model, outputs, *extra) -> int:
    from harness.__main__ import main as harness_main
    return harness_main(["explain", "--model", str(model), "--data", str(d / "inputs.bin"), "--answers",
                         str(d / "answers.bin"), "--outputs", str(outputs), "--device", "cpu", *extra])


def test_explain_judges_bf16_outputs_by_the_bf16_gate(tiny_files, tmp_path, capsys):
    import json

    import torch

    from harness.checkpoints.open import open_checkpoint
    from harness.engines.reference import reference_logits
    from harness.jobs.files import read_inputs, read_logits, write_logits
    d, model = tiny_files
    bf16 = reference_logits(open_checkpoint(model), read_inputs(d / "inputs.bin"), dtype=torch.bfloat16)
    write_logits(tmp_path / "bf16.bin", bf16)
    (tmp_path / "rec.json").write_text(json.dumps({"dtype": "bf16", "ran_indices": list(range(len(bf16)))}))
    assert _explain(d, model, tmp_path / "bf16.bin", "--record", str(tmp_path / "rec.json")) == 0
    text = capsys.readouterr().out
    assert "VALID by the gate 'bf16 vs torch-bf16 x 4'" in text and "nothing to explain" in text
    assert "engine bug" not in text
    # the same outputs judged by the fp32 contract (no dtype given) miss 1e-3
    assert _explain(d, model, tmp_path / "bf16.bin", "--near-tie", "1e-12") == 1
    # a bf16 run that is wrong on most samples fails its gate, and explain says so
    wrong = read_logits(d / "answers.bin") + np.random.default_rng(0).normal(scale=0.05, size=bf16.shape)
    write_logits(tmp_path / "wrong.bin", wrong)
    assert _explain(d, model, tmp_path / "wrong.bin", "--dtype", "bf16") == 1
    text = capsys.readouterr().out
    assert "INVALID by the gate" in text and "look for an engine bug" in text


def test_check_answers_judges_a_record_by_its_dtypes_gate(tiny_files):
    """The worker's validation (harness.run.outputs): bf16 rows by the calibrated gate, fp32 rows at 1e-3."""
    from types import SimpleNamespace

    import torch

    from harness.checkpoints.open import open_checkpoint
    from harness.engines.reference import reference_logits
    from harness.jobs.files import read_inputs, read_logits
    from harness.report.records import VariantRecord
    from harness.run.outputs import check_answers
    d, model = tiny_files
    spec = SimpleNamespace(model=str(model), inputs=str(d / "inputs.bin"), answers=str(d / "answers.bin"), tol=1e-3)
    worker = SimpleNamespace(spec=spec, gpu=None)
    idx = np.arange(5, 25)
    bf16 = reference_logits(open_checkpoint(model), read_inputs(d / "inputs.bin")[idx], dtype=torch.bfloat16)
    rec = VariantRecord(engine="hf", dtype="bf16", samples=len(idx))
    check_answers(worker, rec, bf16, idx)
    assert rec.valid and rec.gate == "bf16 vs torch-bf16 x 4" and rec.gate_limit > 0 and rec.kl_p50 > 0
    assert rec.top5_agreement is not None and any("gate calibration" in n for n in rec.notes)
    rec32 = VariantRecord(engine="hf", dtype="fp32", samples=len(idx))
    check_answers(worker, rec32, bf16, idx)  # the same logits miss fp32's contract
    assert not rec32.valid and rec32.gate == "fp32 1e-3" and rec32.invalid_samples == len(idx)
    assert rec32.invalid_sample_indices == idx.tolist()
    check_answers(worker, rec32, read_logits(d / "answers.bin")[idx], idx)
    assert rec32.valid and rec32.invalid_samples == 0 and rec32.kl_max == 0
