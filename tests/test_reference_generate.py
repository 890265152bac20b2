"""The reference's cached decode: each step's logits equal a full forward over the same prefix,
chunked prefill equals one prefill, and greedy tokens match transformers' own generate."""
import numpy as np
import pytest
import torch

from harness.config import get_preset
from harness.jobs.files import synthetic_prompts
from harness.engines.reference import reference_logits
from harness.engines.reference_generate import reference_generate
from harness.checkpoints.synthetic import synthetic_checkpoint


@pytest.fixture(scope="module")
def ckpt():
    return synthetic_checkpoint(get_preset("tiny"), seed=5)


@pytest.mark.parametrize("prompt_len", [1, 2, 3, 9])
def test_decode_logits_equal_full_forward(ckpt, prompt_len):
    prompt = synthetic_prompts(ckpt.config.vocab_size, 1, prompt_len, seed=prompt_len)[0]
    gen = reference_generate(ckpt, [prompt], max_new_tokens=5)
    seq = np.concatenate([prompt, gen.tokens[0]])
    for step in range(5):
        prefix = seq[:prompt_len + step][None]
        np.testing.assert_allclose(gen.step_logits[0][step], reference_logits(ckpt, prefix)[0], atol=1e-9, rtol=0)


def test_chunked_prefill_equals_one_prefill(ckpt):
    prompt = synthetic_prompts(ckpt.config.vocab_size, 1, 7, seed=3)[0]
    whole = reference_generate(ckpt, [prompt], max_new_tokens=4)
    chunked = reference_generate(ckpt, [prompt], max_new_tokens=4, chunks=[1, 3, 3])
    np.testing.assert_array_equal(whole.tokens[0], chunked.tokens[0])
    np.testing.assert_allclose(whole.step_logits[0], chunked.step_logits[0], atol=1e-9, rtol=0)


def test_sequences_of_different_lengths_generate_independently(ckpt):
    prompts = synthetic_prompts(ckpt.config.vocab_size, 3, (1, 6), seed=9)
    together = reference_generate(ckpt, prompts, max_new_tokens=3)
    for i, p in enumerate(prompts):
        alone = reference_generate(ckpt, [p], max_new_tokens=3)
        np.testing.assert_array_equal(together.tokens[i], alone.tokens[0])


def test_greedy_tokens_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from harness.checkpoints.hf import HFCheckpoint
    from harness.checkpoints.synthetic import write_synthetic
    folder = write_synthetic(get_preset("tiny"), tmp_path / "m", seed=2, progress=False)
    hf = transformers.Lfm2MoeForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ckpt = HFCheckpoint(folder)
    for prompt_len in (2, 5):
        prompt = synthetic_prompts(ckpt.config.vocab_size, 1, prompt_len, seed=prompt_len)[0]
        ours = reference_generate(ckpt, [prompt], max_new_tokens=32, dtype=torch.float32)
        with torch.no_grad():
            theirs = hf.generate(torch.as_tensor(prompt[None], dtype=torch.long), max_new_tokens=32,
                                 min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
        np.testing.assert_array_equal(ours.tokens[0], theirs[0, prompt_len:].numpy())
