"""The peer engine (transformers' own model) on the CPU: same logits as the reference in fp32,
close in bf16, greedy generation identical, and a clear error without a Hugging Face folder."""
import numpy as np
import pytest

from harness.config import get_preset
from harness.run.generation import greedy_generate
from harness.jobs.files import synthetic_prompts, validate
from harness.engines.reference import reference_logits
from harness.engines.reference_generate import reference_generate
from harness.checkpoints.synthetic import synthetic_checkpoint, write_synthetic

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from harness.checkpoints.hf import HFCheckpoint
    return HFCheckpoint(write_synthetic(get_preset("tiny-top3"), tmp_path_factory.mktemp("hf"), seed=4, progress=False))


def test_fp32_peer_is_valid_against_the_reference(ckpt):
    from harness.engines.hf import HFEngine
    tokens = synthetic_prompts(ckpt.config.vocab_size, 3, 9, seed=2)
    got = HFEngine(ckpt, device="cpu", dtype="fp32").forward(tokens)
    v = validate(got, reference_logits(ckpt, tokens))
    assert v.valid and v.top1_agreement == 1.0


def test_bf16_peer_is_close_not_exact(ckpt):
    from harness.engines.hf import HFEngine
    tokens = synthetic_prompts(ckpt.config.vocab_size, 3, 9, seed=2)
    err = np.abs(HFEngine(ckpt, device="cpu", dtype="bf16").forward(tokens) - reference_logits(ckpt, tokens)).max()
    assert 1e-4 < err < 0.5  # bf16 rounding shows, but it is the same model


def test_peer_generation_matches_the_reference(ckpt):
    from harness.engines.hf import HFEngine
    prompts = synthetic_prompts(ckpt.config.vocab_size, 2, 4, seed=8)
    run = greedy_generate(HFEngine(ckpt, device="cpu", dtype="fp32"), prompts, 10)
    np.testing.assert_array_equal(run.tokens, np.stack(reference_generate(ckpt, list(prompts), 10).tokens))


def test_peer_needs_a_hugging_face_folder():
    from harness.engines.hf import HFEngine
    with pytest.raises(RuntimeError, match="Hugging Face folder"):
        HFEngine(synthetic_checkpoint(get_preset("tiny"), seed=0), device="cpu")
