"""Mutation tests of the bf16 gate (harness.jobs.gate) on the optimized engine: each bug of
planted_bugs.py, planted into the engine's bf16 path after load on the `small` preset (real hidden
size and expert count), turns its outputs INVALID, while the clean engine and transformers' bf16
(`hf`) on the same weights and prompts stay VALID. Each verdict is printed (pytest -s) with its
numbers. The engine runs without CUDA graphs, so every forward reads the planted weights and calls
the patched kernels' Python side; the plants touch only PackedWeights' tensors (W.layers), the
Kernels object's qk_norm_rope and the layer list, and monkeypatch undoes each."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.jobs.files import reference_answers, synthetic_prompts
from harness.jobs.gate import calibrate, judge
from planted_bugs import BUGS, most_used_expert, rotate_one_position, swap_row_halves  # tests/ is on sys.path

pytestmark = pytest.mark.gpu
PRESET, PROMPTS, SEQ_LEN = "small", 128, 16


@pytest.fixture(scope="module")
def job(gpu):
    from harness.checkpoints.open import open_checkpoint
    from harness.checkpoints.synthetic import cached_synthetic
    folder = cached_synthetic(PRESET, seed=0, progress=False)  # a folder: the hf engine loads the same weights
    ckpt = open_checkpoint(str(folder))
    tokens = synthetic_prompts(ckpt.config.vocab_size, PROMPTS, SEQ_LEN, seed=0)
    answers = reference_answers(ckpt, tokens, device="cuda", progress=False)  # fp32, TF32 off
    calibration = calibrate(ckpt, tokens, answers, "bf16", device="cuda")
    print(f"calibration: {calibration}")
    torch.cuda.empty_cache()
    return ckpt, tokens, answers, calibration


@pytest.fixture(scope="module")
def engine(gpu, job):
    from optimized.engine import OptimizedEngine
    eng = OptimizedEngine(job[0], device=gpu.index, dtype="bf16", graphs=False, max_batch=PROMPTS, progress=False)
    yield eng
    eng.close()
    torch.cuda.empty_cache()


def verdict(job, outputs, label: str):
    v = judge(outputs, job[2], "bf16", calibration=job[3])
    print(f"{label}: {v}")
    return v


def test_clean_optimized_bf16_is_valid(job, engine):
    out = engine.forward(job[1])
    assert np.isfinite(out).all()
    assert verdict(job, out, "optimized bf16").valid


def test_transformers_bf16_is_valid(gpu, job):
    pytest.importorskip("transformers")
    from harness.engines.hf import HFEngine
    hf = HFEngine(job[0], device=gpu.index, dtype="bf16")
    try:
        out = np.concatenate([hf.forward(job[1][i:i + 32]) for i in range(0, PROMPTS, 32)])
    finally:
        hf.close()
        torch.cuda.empty_cache()
    assert verdict(job, out, "hf bf16").valid


@pytest.mark.parametrize("bug", BUGS)
def test_planted_bug_turns_the_optimized_engine_invalid(job, engine, bug, monkeypatch):
    cfg, layers = engine.config, engine.W.layers
    if bug == "expert_rows":  # in the packed [E, H, Im] down projection of the first MoE layer
        layer = cfg.moe_layers[0]
        e = most_used_expert(job[0], job[1], layer, device="cuda")
        w2 = layers[layer]["w2"].clone()
        w2[e] = swap_row_halves(w2[e])
        monkeypatch.setitem(layers[layer], "w2", w2)
    elif bug == "rope_plus_one":  # the queries the attention kernels get, one position further
        rope = engine.K.qk_norm_rope

        def queries_one_further(qkv, qw, kw, q, *rest):
            rope(qkv, qw, kw, q, *rest)
            q.copy_(rotate_one_position(q, cfg.rope_theta))  # q [B, nh, S, hd], on the engine's stream
        monkeypatch.setattr(engine.K, "qk_norm_rope", queries_one_further)
    elif bug == "no_expert_bias":
        for i in cfg.moe_layers:
            monkeypatch.setitem(layers[i], "bias", torch.zeros_like(layers[i]["bias"]))
    else:  # skip_last_layer: the forward's layer loop runs over W.layers
        monkeypatch.setattr(engine.W, "layers", layers[:-1])
    v = verdict(job, engine.forward(job[1]), f"optimized bf16 with {bug}")
    assert not v.valid
