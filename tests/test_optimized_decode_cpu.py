"""CPU tests of the optimized engine's generation host logic (optimized/decode.py,
decode_kernels.py): the cache memory plan against a hand count, the max_len room
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
    kv_per_token, conv_per_seq = 12_288, 147_456  # K and V of 6 layers x 8 heads x 64; 18 conv layers x 2 x 2048; bf16
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
    from harness.run.generation import greedy_generate
    from harness.jobs.files import synthetic_prompts
    from harness.engines.reference_engine import ReferenceEngine
    from harness.engines.reference_generate import reference_generate
    prompts = [p for p in synthetic_prompts(tiny_ckpt.config.vocab_size, 4, (1, 6), seed=4)]
    prompts[0] = prompts[0][:1]  # a 1-token prompt: the conv state starts from zeros
    eng = ReferenceEngine(tiny_ckpt, device="cpu")
    run = greedy_generate(eng, prompts, 4)
    want = reference_generate(tiny_ckpt, prompts, 4)
    assert len({len(p) for p in prompts}) > 1
    np.testing.assert_array_equal(run.tokens, np.stack(want.tokens))
    with pytest.raises(ValueError, match="prompt 1"):
        eng.prefill([np.array([3]), np.array([], np.int64)])


# ----- streamed decode's host bookkeeping (OptimizedEngine.greedy_steps) on a fake device -----------------
class FakeDevice:
    """Stands in for the GPU: a step maps each id to (7 * id + 1) % V in place (the argmax feeding
    the next step's ids, as decode_body's does) and advances lengths; what the engine asks of it
    is logged in order."""

    def __init__(self, vocab):
        self.vocab, self.log = vocab, []

    def step(self, D):
        D.work.ids.copy_((D.work.ids * 7 + 1) % self.vocab)
        D.lengths += 1
        self.log.append("step")

    def event(self):
        device = self

        class Event:
            def record(self, stream):
                device.log.append(f"record{device.events.index(self)}")

            def synchronize(self):
                device.log.append(f"wait{device.events.index(self)}")
        ev = Event()
        self.events.append(ev)
        return ev


@pytest.fixture
def streaming(tiny_ckpt, monkeypatch):
    """An OptimizedEngine without a GPU: a 2-sequence generation at lengths [3, 5] of max_len 12,
    its decode steps run by a FakeDevice."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from harness.engines.base import Counters
    from optimized.engine import OptimizedEngine
    dev = FakeDevice(tiny_ckpt.config.vocab_size)
    dev.events = []
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", dev.event)
    B = 2
    work = SimpleNamespace(ids=torch.zeros(B, dtype=torch.int32), ids_host=torch.zeros((B, 1), dtype=torch.int32))
    D = SimpleNamespace(B=B, work=work, next_ids=work.ids, ids_ring=torch.zeros((2, B), dtype=torch.int32),
                        next_ids_host=torch.zeros(B, dtype=torch.int32), lengths=torch.tensor([3, 5]),
                        len_host=np.array([3, 5]), active=True, streaming=False)
    eng = object.__new__(OptimizedEngine)
    eng.config, eng.max_len, eng.counters, eng._closed, eng._dec = tiny_ckpt.config, 12, Counters(), False, D
    eng.tstream = None
    eng.stream = SimpleNamespace(synchronize=lambda: dev.log.append("sync"))
    eng._run_step = dev.step
    eng.dev = dev
    return eng


def chain(first, n, vocab):
    out, ids = [], np.asarray(first)
    for _ in range(n):
        ids = (ids * 7 + 1) % vocab
        out.append(ids.tolist())
    return out


def test_a_stream_keeps_one_step_queued_ahead(streaming):
    eng, D, V = streaming, streaming._dec, streaming.config.vocab_size
    got = []
    for ids in eng.greedy_steps([4, 9], 3):
        got.append(ids.tolist())
        eng.dev.log.append(f"got{len(got)}")
        assert D.len_host.tolist() == [3 + len(got), 5 + len(got)] and D.streaming
    assert got == chain([4, 9], 3, V)  # each step decoded the ids the one before chose, on the "device"
    # step n + 1 is queued before the host waits for step n; slots alternate
    assert eng.dev.log == ["step", "record0", "step", "record1", "wait0", "got1", "step", "record0", "wait1", "got2",
                           "wait0", "got3", "sync"]
    assert D.len_host.tolist() == [6, 8] == D.lengths.tolist() and not D.streaming
    c = eng.counters
    assert (c.h2d_copies, c.h2d_bytes, c.d2h_copies, c.d2h_bytes) == (1, 8, 3, 24)


def test_closing_a_stream_early_counts_the_step_queued_ahead(streaming):
    eng, D, V = streaming, streaming._dec, streaming.config.vocab_size
    stream = eng.greedy_steps([4, 9], 6)
    first_two = [next(stream).tolist() for _ in range(2)]
    for call in (lambda: eng.decode_greedy([1, 1]), lambda: eng.prefill([[1, 2]]), lambda: eng.greedy_steps([1, 1], 1)):
        with pytest.raises(RuntimeError, match="still open"):
            call()
    stream.close()
    assert eng.dev.log.count("step") == 3 and eng.dev.log[-1] == "sync"
    assert D.len_host.tolist() == [6, 8] == D.lengths.tolist() and not D.streaming
    # the device's ids are step 3's choice: the generation goes on from there
    want = chain([4, 9], 4, V)
    assert first_two == want[:2]
    assert eng.decode_greedy(want[2]).tolist() == want[3]


def test_a_stream_is_refused_up_front(streaming):
    eng, D = streaming, streaming._dec
    with pytest.raises(ValueError, match=r"a stream of 8 decode steps needs 13 cache positions.*max_len=12"):
        eng.greedy_steps([4, 9], 8)
    with pytest.raises(ValueError, match="one token per sequence"):
        eng.greedy_steps([4, 9, 1], 1)
    with pytest.raises(ValueError, match=">= 0"):
        eng.greedy_steps([4, 9], -1)
    assert list(eng.greedy_steps([4, 9], 0)) == []
    assert eng.dev.log == [] and D.len_host.tolist() == [3, 5]
    assert len(list(eng.greedy_steps([4, 9], 7))) == 7  # exactly max_len
    D.len_host[:] = [3, 5]  # as if a prefill had started the generation again
    stale = eng.greedy_steps([4, 9], 1)
    eng.decode_greedy([4, 9])  # the generation moves on before the stream starts
    with pytest.raises(RuntimeError, match="changed"):
        next(stale)
    D.active = False
    with pytest.raises(ValueError, match="before prefill"):
        eng.greedy_steps([4, 9], 1)
