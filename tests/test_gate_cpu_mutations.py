"""The bf16 gate can fail: the four bugs of planted_bugs.py, planted in the plain torch reference
run in bf16 on the tiny preset, each turn its outputs INVALID, while the clean bf16 reference,
transformers' bf16 and a bf16 forward with routing flips forced on a few samples stay VALID.
(The same bugs in the optimized engine on a GPU: gpu/test_gate_mutations.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import harness.engines.reference as reference
from harness.checkpoints.base import DictCheckpoint
from harness.jobs.files import synthetic_prompts
from harness.jobs.gate import calibrate, judge
from planted_bugs import BUGS, most_used_expert, rotate_one_position, swap_row_halves

PROMPTS, SEQ_LEN = 128, 16


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from harness.checkpoints.open import open_checkpoint
    from harness.checkpoints.synthetic import write_synthetic
    from harness.config import get_preset
    folder = write_synthetic(get_preset("tiny"), tmp_path_factory.mktemp("gate") / "tiny", seed=0, progress=False)
    ckpt = open_checkpoint(str(folder))
    tokens = synthetic_prompts(ckpt.config.vocab_size, PROMPTS, SEQ_LEN, seed=0)
    answers = reference.reference_logits(ckpt, tokens, dtype=torch.float64)
    return ckpt, tokens, answers, calibrate(ckpt, tokens, answers, "bf16", "cpu")


def bf16_verdict(job, ckpt=None):
    base, tokens, answers, calibration = job
    out = reference.reference_logits(ckpt or base, tokens, dtype=torch.bfloat16)
    v = judge(out, answers, "bf16", calibration=calibration)
    print(v)
    return v


def with_tensors(ckpt, changed: dict, config=None) -> DictCheckpoint:
    """ckpt's tensors (and config) with some replaced: a weight-level plant."""
    return DictCheckpoint(config or ckpt.config, {n: changed.get(n, ckpt.raw(n)) for n in ckpt.names()})


def test_clean_bf16_reference_is_valid(job):
    assert bf16_verdict(job).valid


def test_transformers_bf16_is_valid(job):
    pytest.importorskip("transformers")
    from harness.engines.hf import HFEngine
    ckpt, tokens, answers, calibration = job
    v = judge(HFEngine(ckpt, device="cpu", dtype="bf16").forward(tokens), answers, "bf16", calibration=calibration)
    print(v)
    assert v.valid


def test_routing_flips_on_a_few_samples_stay_valid(job, monkeypatch):
    """8 of 128 samples whose last token takes its (k+1)-th expert instead of its k-th in the first
    MoE layer, as a legit engine may where two scores nearly tie: the median does not move."""
    ckpt, tokens, answers, calibration = job
    clean = reference.reference_logits(ckpt, tokens, dtype=torch.bfloat16)
    route, calls = reference.route, []

    def flip_last_tokens(h, gate_w, bias, k, norm_topk=True, scale=1.0):
        calls.append(1)
        if len(calls) > 1:  # later MoE layers route as usual
            return route(h, gate_w, bias, k, norm_topk, scale)
        s = torch.sigmoid(h @ gate_w.T)
        idx = torch.topk(s + bias.to(s.dtype), k=k + 1, dim=-1).indices
        last = torch.arange(SEQ_LEN - 1, len(h), SEQ_LEN)
        idx[last, k - 1] = idx[last, k]
        w = torch.gather(s, 1, idx[:, :k])
        return idx[:, :k], (w / (w.sum(-1, keepdim=True) + 1e-6) if norm_topk else w) * scale
    monkeypatch.setattr(reference, "route", flip_last_tokens)
    out = clean.copy()
    out[:8] = reference.reference_logits(ckpt, tokens[:8], dtype=torch.bfloat16)
    assert not np.allclose(out[:8], clean[:8])  # the flip did change those samples
    v = judge(out, answers, "bf16", calibration=calibration)
    print(v)
    assert v.valid


@pytest.mark.parametrize("bug", BUGS)
def test_each_planted_bug_is_invalid(job, bug, monkeypatch):
    ckpt, tokens = job[0], job[1]
    cfg = ckpt.config
    if bug == "expert_rows":
        layer = cfg.moe_layers[0]
        name = f"layers.{layer}.feed_forward.experts.{most_used_expert(ckpt, tokens, layer)}.w2.weight"
        ckpt = with_tensors(ckpt, {name: swap_row_halves(ckpt.raw(name))})
    elif bug == "rope_plus_one":
        apply_rope = reference.apply_rope

        def queries_one_further(x, cos, sin):
            y = apply_rope(x, cos, sin)
            return rotate_one_position(y, cfg.rope_theta) if x.shape[-2] == cfg.num_attention_heads else y
        monkeypatch.setattr(reference, "apply_rope", queries_one_further)
    elif bug == "no_expert_bias":
        ckpt = with_tensors(ckpt, {f"layers.{i}.feed_forward.expert_bias": torch.zeros(cfg.num_experts)
                                   for i in cfg.moe_layers})
    else:  # skip_last_layer: a config one layer short never reaches the last layer's weights
        ckpt = with_tensors(ckpt, {}, cfg.replace(layer_types=cfg.layer_types[:-1]))
    v = bf16_verdict(job, ckpt)
    assert not v.valid and "median KL" in v.reason()
