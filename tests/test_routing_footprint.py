"""The bytes a forward must read, judged by its own routing: an engine's touched_experts (here the
reference's, from its router choices), and the record's experts_touched / routed_bytes /
pct_of_routed_floor made from them (report.metrics)."""
from __future__ import annotations

import pytest

from harness.checkpoints.synthetic import synthetic_checkpoint
from harness.config import get_preset
from harness.engines.reference import reference_forward
from harness.engines.reference_engine import ReferenceEngine
from harness.jobs.files import synthetic_prompts
from harness.measure.floors import forward_bytes, prefill_floor
from harness.measure.model_stats import expert_params, model_stats
from harness.report.metrics import _routing_columns
from harness.report.records import VariantRecord


@pytest.fixture(scope="module")
def ckpt():
    return synthetic_checkpoint(get_preset("tiny"))


def test_reference_counts_the_distinct_experts_its_router_picked(ckpt):
    cfg = ckpt.config
    tokens = synthetic_prompts(cfg.vocab_size, 2, 5, seed=1)
    got = ReferenceEngine(ckpt, "cpu").touched_experts(tokens)
    idx = reference_forward(ckpt, tokens, debug=True).router_indices
    assert got == [len(set(idx[i].flatten().tolist())) for i in cfg.moe_layers]
    one = ReferenceEngine(ckpt, "cpu").touched_experts(tokens[:1, :1])
    assert one == [cfg.num_experts_per_tok] * len(cfg.moe_layers)  # one token: exactly its top-k


def test_record_states_the_bytes_its_routing_touched():
    cfg = get_preset("lfm2-8b-a1b")
    k, layers = cfg.num_experts_per_tok, len(cfg.moe_layers)
    rec = VariantRecord(engine="optimized", dtype="bf16", seq_len=1, batch_used=1, tokens_per_s=900.0, gpus=1)
    _routing_columns(rec, cfg, [k] * layers)  # one token: its top-k in every layer
    assert rec.experts_touched == k and rec.routed_bytes == 2 * k * layers * expert_params(cfg)
    floor_tps = 1 / (forward_bytes(cfg, "bf16", 1, rec.routed_bytes) / 3.0e12)  # streaming binds at one token
    assert rec.pct_of_routed_floor == pytest.approx(100 * 900.0 / floor_tps)
    assert 2.5e9 < forward_bytes(cfg, "bf16", 1, rec.routed_bytes) < 3.5e9  # ~3.1 GB per decode token
    whole = VariantRecord(engine="optimized", dtype="bf16", seq_len=16, batch_used=1, tokens_per_s=2800.0, gpus=1)
    _routing_columns(whole, cfg, [cfg.num_experts] * layers)  # every expert touched: the whole model's bytes
    assert forward_bytes(cfg, "bf16", 16, whole.routed_bytes) == pytest.approx(2 * model_stats(cfg).total_params)
    assert whole.pct_of_routed_floor == pytest.approx(prefill_floor(cfg, "bf16", 16, 1, whole.routed_bytes).pct(2800))


def test_no_floor_without_a_gpu_or_a_count(ckpt):
    cpu = VariantRecord(engine="reference", dtype="fp64", seq_len=4, batch_used=2, tokens_per_s=10.0, gpus=0)
    _routing_columns(cpu, ckpt.config, [3, 3, 2])
    assert cpu.experts_touched == pytest.approx(8 / 3) and cpu.routed_bytes == 8 * 8 * expert_params(ckpt.config)
    assert cpu.pct_of_routed_floor is None  # the floors are a GPU's
    none = VariantRecord(engine="hf", dtype="bf16", seq_len=4, batch_used=2, tokens_per_s=10.0, gpus=1)
    _routing_columns(none, ckpt.config, None)
    assert none.routed_bytes is None and none.pct_of_routed_floor is None


@pytest.mark.mpi
def test_a_prefill_record_carries_its_routing_footprint(tmp_path, monkeypatch):
    import json
    import shutil

    from harness.__main__ import main as harness_main
    if shutil.which("mpiexec") is None and shutil.which("mpirun") is None:
        pytest.skip("no mpiexec on PATH (pip install mpich)")
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    rc = harness_main(["run", "--engine", "reference", "--preset", "tiny", "--samples", "4", "--seq-len", "8",
                       "--batch", "2", "--out", str(tmp_path / "runs"), "--run-id", "r"])
    rec = json.loads(next((tmp_path / "runs" / "r" / "records").glob("*.json")).read_text())
    assert rc == 0 and rec["per_rank"][0]["touched_experts"] and len(rec["per_rank"][0]["touched_experts"]) == 3
    assert rec["experts_touched"] == pytest.approx(sum(rec["per_rank"][0]["touched_experts"]) / 3)
    assert rec["routed_bytes"] > 0 and rec["pct_of_routed_floor"] is None  # a CPU run: no GPU floor
