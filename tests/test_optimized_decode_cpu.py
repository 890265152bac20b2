"""CPU tests of the optimized engine's generation host logic (optimized/decode.py,
decode_kernels.py): the cache memory plan against a hand count from model.md, the max_len room
check, prompt padding for ragged batches, the flash-decoding split choice, the options refused
before any GPU work, and the reference engine's ragged prefill (the ground truth the GPU tests
compare the optimized engine's ragged batches with)."""
from __future__ import annotations

import numpy as np
import pytest

from harness.config import get_preset
from optimized.decode import cache_bytes, check_room, pad_prompts
from optimized.decode_kernels import DECODE_KT, attention_splits


def test_cache_bytes_full_model_matches_model_md():
    cfg = get_preset("lfm2-8b-a1b")
    kv_per_token, conv_per_seq = 12_288, 147_456  # model.md 2.5 and 2.4, bf16
    assert cache_bytes(cfg, 1, 1, "bf16") == kv_per_token + conv_per_seq
    assert cache_bytes(cfg, 64, 4096, "bf16") == 64 * (4096 * kv_per_token + conv_per_seq)
    assert cache_bytes(cfg, 3, 100, "fp32") == 2 * cache_bytes(cfg, 3, 100, "bf16")


def test_cache_bytes_tiny_by_hand():
    import torch
    cfg = get_preset("tiny")  # 2 attention layers (nkv 2, hd 16), 2 conv layers (H 64, L 3)
    per_seq = 2 * 2 * 2 * 16 * 10 + 2 * 2 * 64  # K and V over 10 positions + conv state
    assert cache_bytes(cfg, 5, 10, torch.float32) == 5 * per_seq * 4
    assert cache_bytes(cfg, 5, 10, torch.bfloat16) == 5 * per_seq * 2


def test_cache_bytes_refuses_bad_arguments():
    cfg = get_preset("tiny")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        cache_bytes(cfg, 1, 8, "fp16")
    with pytest.raises(ValueError, match=">= 1"):
        cache_bytes(cfg, 0, 8, "bf16")


def test_check_room_allows_exactly_max_len_and_says_what_to_do():
    check_room(np.array([3, 10]), 12, 2, "x")  # 10 + 2 = 12 positions: fits
    with pytest.raises(ValueError, match=r"needs 13 cache positions.*max_len=12.*max_len=13"):
        check_room(np.array([3, 10]), 12, 3, "a prefill")


def test_pad_prompts_right_pads_ragged_batches():
    cfg = get_preset("tiny")
    padded, lengths = pad_prompts([np.array([5, 6, 7]), [9], np.arange(10, 15)], cfg)
    assert padded.dtype == np.int32 and lengths.dtype == np.int32
    assert lengths.tolist() == [3, 1, 5]
    assert padded.tolist() == [[5, 6, 7, 0, 0], [9, 0, 0, 0, 0], [10, 11, 12, 13, 14]]
    same, lens = pad_prompts(np.array([[1, 2], [3, 4]]), cfg)
    assert same.tolist() == [[1, 2], [3, 4]] and lens.tolist() == [2, 2]


@pytest.mark.parametrize("prompts,match", [
    ([np.array([1, 2]), np.array([], np.int32)], "prompt 1"),
    ([np.array([[1, 2]])], "prompt 0"),
    ([np.array([1, 512])], "vocabulary"),
    (np.array([1, 2, 3]), r"\[batch, seq_len>=1\]"),
    ([], "non-empty list"),
    ([np.array([1.5, 2.0])], "integers"),
])
def test_pad_prompts_refuses_bad_prompts(prompts, match):
    with pytest.raises(ValueError, match=match):
        pad_prompts(prompts, get_preset("tiny"))


def test_attention_splits():
    # batch 1 on 132 SMs, 8 kv heads: ~2 blocks per SM
    assert attention_splits(1, 8, 4096, 132) == 33
    # never more splits than the cache has tiles
    assert attention_splits(1, 2, 100, 132) == -(-100 // DECODE_KT) == 2
    # big batches already fill the GPU
    assert attention_splits(64, 8, 4096, 132) == 1
    for B in (1, 3, 17, 256):
        for L in (1, 63, 64, 65, 4096):
            assert 1 <= attention_splits(B, 8, L, 132) <= max(1, -(-L // DECODE_KT))
    with pytest.raises(ValueError):
        attention_splits(0, 8, 16, 132)


def test_bad_max_len_is_refused_before_any_gpu_work(tiny_ckpt):
    from optimized.engine import OptimizedEngine
    assert OptimizedEngine.supports_generation
    with pytest.raises(ValueError, match="max_len"):
        OptimizedEngine(tiny_ckpt, device=0, dtype="fp32", max_len=0)


def test_reference_engine_prefills_a_ragged_batch(tiny_ckpt):
    """Ragged prefill + decode in the reference engine equals generating each prompt alone."""
    from harness.generation import greedy_generate
    from harness.jobfiles import synthetic_prompts
    from harness.reference_engine import ReferenceEngine
    from harness.reference_generate import reference_generate
    prompts = [p for p in synthetic_prompts(tiny_ckpt.config.vocab_size, 4, (1, 6), seed=4)]
    prompts[0] = prompts[0][:1]  # a 1-token prompt: the conv state starts from zeros
    eng = ReferenceEngine(tiny_ckpt, device="cpu")
    run = greedy_generate(eng, prompts, 4)
    want = reference_generate(tiny_ckpt, prompts, 4)
    assert len({len(p) for p in prompts}) > 1
    np.testing.assert_array_equal(run.tokens, np.stack(want.tokens))
    with pytest.raises(ValueError, match="prompt 1"):
        eng.prefill([np.array([3]), np.array([], np.int64)])
