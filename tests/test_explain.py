"""Telling routing near-ties from engine bugs: validation names the samples beyond tolerance, the
reference measures how close each token's routing came to a tie, and `explain` puts them together."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.__main__ import main as harness_main
from harness.jobs.files import read_logits, reference_answers, synthetic_prompts, validate, write_inputs, write_logits
from harness.engines.reference import reference_forward, routing_margin


def test_validate_names_the_samples_beyond_tolerance():
    answers = np.zeros((5, 8), np.float32)
    out = answers.copy()
    out[1, 3] = 2e-3
    out[4, 0] = np.nan
    v = validate(out, answers)
    assert not v.valid and v.invalid_rows == (1, 4)
    assert "2 of 5 samples beyond tolerance" in str(v)
    assert validate(answers, answers).invalid_rows == ()


def test_routing_margin_is_kth_minus_next_biased_score():
    h = torch.eye(4, dtype=torch.float64)  # token t sees gate column t
    gate = torch.tensor([[0.0, 1, 2, 3], [0.5, 0, 0, 0], [0.3, 0, 0, 0], [0.1, 0, 0, 0]], dtype=torch.float64)
    bias = torch.tensor([0.0, 0.0, 0.0, 0.05], dtype=torch.float64)
    m = routing_margin(h, gate, bias, k=2)
    s = torch.sigmoid(h @ gate.T) + bias
    expected = torch.sort(s, dim=1, descending=True).values
    assert torch.allclose(m, expected[:, 1] - expected[:, 2])
    assert torch.isinf(routing_margin(h, gate, bias, k=4)).all()  # no (k+1)-th expert to flip to


def test_reference_debug_reports_margins_per_moe_layer(tiny_ckpt):
    tokens = synthetic_prompts(tiny_ckpt.config.vocab_size, 2, 5, seed=1)
    out = reference_forward(tiny_ckpt, tokens, debug=True)
    assert sorted(out.router_margins) == sorted(tiny_ckpt.config.moe_layers)
    for m in out.router_margins.values():
        assert m.shape == (2, 5) and bool((m >= 0).all())


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    from harness.config import get_preset
    from harness.checkpoints.open import open_checkpoint
    from harness.checkpoints.synthetic import write_synthetic
    d = tmp_path_factory.mktemp("explain")
    model = write_synthetic(get_preset("tiny"), d / "model", seed=0)
    tokens = synthetic_prompts(get_preset("tiny").vocab_size, 6, 7, seed=2)
    write_inputs(d / "inputs.bin", tokens)
    write_logits(d / "answers.bin", reference_answers(open_checkpoint(model), tokens, device="cpu", progress=False))
    return d, model


def _explain(d, model, outputs, *extra):
    return harness_main(["explain", "--model", str(model), "--data", str(d / "inputs.bin"), "--answers",
                         str(d / "answers.bin"), "--outputs", str(outputs), "--device", "cpu", *extra])


def test_explain_valid_run_has_nothing_to_explain(tiny_job, capsys):
    d, model = tiny_job
    assert _explain(d, model, d / "answers.bin") == 0
    assert "nothing to explain" in capsys.readouterr().out


def test_explain_blames_the_engine_when_routing_is_far_from_a_tie(tiny_job, capsys):
    d, model = tiny_job
    out = read_logits(d / "answers.bin").copy()
    out[3] += 0.5  # a "bug" in sample 3
    write_logits(d / "bad.bin", out)
    assert _explain(d, model, d / "bad.bin", "--near-tie", "1e-12") == 1
    text = capsys.readouterr().out
    assert "1 of 6 samples beyond tolerance" in text and "look for an engine bug" in text
    # with a threshold above every margin, the same sample counts as a near-tie
    assert _explain(d, model, d / "bad.bin", "--near-tie", "10") == 0
    assert "rounding, not a broken engine" in capsys.readouterr().out


def test_explain_refuses_files_of_different_jobs(tiny_job, capsys):
    d, model = tiny_job
    write_logits(d / "long.bin", np.zeros((9, 4), np.float32))
    assert _explain(d, model, d / "long.bin") == 2
    assert "give the files of one job" in capsys.readouterr().err


def test_explain_maps_rows_through_the_records_ran_indices(tiny_job, tmp_path, capsys):
    """A budget-cut 2-rank run writes the samples that ran (e.g. 0, 1, 3, 4), not 0..n-1."""
    import json
    d, model = tiny_job
    answers = read_logits(d / "answers.bin")
    ran = [0, 1, 3, 4]
    out = answers[ran].copy()
    out[2] += 0.5  # job sample 3
    write_logits(tmp_path / "cut.bin", out)
    (tmp_path / "rec.json").write_text(json.dumps({"ran_indices": ran}))
    assert _explain(d, model, tmp_path / "cut.bin", "--record", str(tmp_path / "rec.json"), "--near-tie", "1e-12") == 1
    text = capsys.readouterr().out
    assert "1 of 4 samples beyond tolerance" in text
    assert any(line.split()[:2] == ["3", "INVALID"] for line in text.splitlines())
    (tmp_path / "bad.json").write_text(json.dumps({"ran_indices": [0, 1]}))
    assert _explain(d, model, tmp_path / "cut.bin", "--record", str(tmp_path / "bad.json")) == 2
    assert "give the record of the run that wrote them" in capsys.readouterr().err


def test_report_note_says_what_made_a_row_invalid():
    from harness.report.html import _invalid_detail
    from harness.report.records import VariantRecord
    fp32 = _invalid_detail(VariantRecord(engine="phase3", dtype="fp32", invalid_samples=4, samples=1024,
                                         max_abs_err=0.51, top1_agreement=1.0))
    assert "4 of 1024 samples beyond tolerance" in fp32 and "harness explain" in fp32
    # bf16 rows carry their gate's verdict instead: tests/test_gate.py
