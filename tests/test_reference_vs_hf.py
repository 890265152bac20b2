"""The reference forward against transformers' own Lfm2MoeForCausalLM on the same checkpoint.

The checkpoint is a synthetic folder written by this project and loaded by transformers through
its own `from_pretrained`, so the loader's names and layout are checked too. Both sides run in
float32 on the CPU; router choices are compared per layer, not only the logits (a wrong expert is invisible in a few logits).
"""
import numpy as np
import pytest
import torch

from harness.config import get_preset
from harness.checkpoints.hf import HFCheckpoint
from harness.jobs.files import synthetic_prompts
from harness.engines.reference import reference_forward
from harness.checkpoints.synthetic import write_synthetic

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["tiny", "tiny-top3"])
def model_pair(request, tmp_path_factory):
    cfg = get_preset(request.param)
    folder = write_synthetic(cfg, tmp_path_factory.mktemp(request.param), seed=7, progress=False)
    hf = transformers.Lfm2MoeForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                         experts_implementation="eager").eval()
    return HFCheckpoint(folder), hf


def hf_router_choices(hf, tokens):
    """Run HF and capture each MoE layer's selected experts through a hook on its router."""
    seen = {}
    hooks = []
    for i, layer in enumerate(hf.model.layers):
        gate = getattr(layer.feed_forward, "gate", None)
        if gate is not None and hasattr(layer.feed_forward, "experts"):
            hooks.append(gate.register_forward_hook(
                lambda mod, args, out, i=i: seen.__setitem__(i, out[2].detach().clone())))
    try:
        with torch.no_grad():
            logits = hf(torch.as_tensor(tokens, dtype=torch.long)).logits[:, -1].float().numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


@pytest.mark.parametrize("seq_len", [1, 2, 3, 17])
def test_reference_matches_transformers(model_pair, seq_len):
    ckpt, hf = model_pair
    cfg = ckpt.config
    assert any(ckpt.raw(f"layers.{i}.feed_forward.expert_bias").abs().sum() > 0 for i in cfg.moe_layers)
    tokens = synthetic_prompts(cfg.vocab_size, 2, seq_len, seed=seq_len)
    ref = reference_forward(ckpt, tokens, dtype=torch.float32, debug=True)
    hf_logits, hf_choices = hf_router_choices(hf, tokens)

    np.testing.assert_allclose(ref.logits, hf_logits, atol=1e-4, rtol=0)
    assert sorted(hf_choices) == cfg.moe_layers
    for layer in cfg.moe_layers:
        ours = ref.router_indices[layer].reshape(-1, cfg.num_experts_per_tok).sort(-1).values
        theirs = hf_choices[layer].reshape(-1, cfg.num_experts_per_tok).sort(-1).values
        assert torch.equal(ours, theirs), f"router choices differ in layer {layer}"


def test_float64_reference_is_close_to_float32(model_pair):
    ckpt, _ = model_pair
    tokens = synthetic_prompts(ckpt.config.vocab_size, 1, 9, seed=1)
    f64 = reference_forward(ckpt, tokens, dtype=torch.float64).logits
    f32 = reference_forward(ckpt, tokens, dtype=torch.float32).logits
    np.testing.assert_allclose(f32, f64, atol=1e-4, rtol=0)


def test_reference_rejects_out_of_vocab_ids(model_pair):
    ckpt, _ = model_pair
    with pytest.raises(ValueError, match="vocab"):
        reference_forward(ckpt, np.array([[1, ckpt.config.vocab_size]]))
