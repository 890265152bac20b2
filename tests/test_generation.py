"""The generation workload's loop and metrics, with the reference engine on the CPU; the streamed
path (engine.greedy_steps) with a fake streaming engine on a fake clock, and its fallback."""
from types import SimpleNamespace

import numpy as np
import pytest

from harness.run import generation

from harness.config import get_preset
from harness.run.generation import first_divergence, generation_metrics, greedy_generate
from harness.jobs.files import synthetic_prompts
from harness.measure.model_stats import decode_bytes_per_step
from harness.engines.reference_engine import ReferenceEngine
from harness.engines.reference_generate import reference_generate
from harness.checkpoints.synthetic import synthetic_checkpoint


@pytest.fixture(scope="module")
def ckpt():
    return synthetic_checkpoint(get_preset("tiny-top3"), seed=1)


def test_engine_generation_equals_reference_greedy(ckpt):
    prompts = synthetic_prompts(ckpt.config.vocab_size, 3, 3, seed=4)
    run = greedy_generate(ReferenceEngine(ckpt, device="cpu"), prompts, max_new_tokens=8)
    want = np.stack(reference_generate(ckpt, list(prompts), 8).tokens)
    assert first_divergence(run.tokens, want) is None
    assert len(run.step_s) == 7 and run.ttft_s > 0
    assert run.mode == "per-step"  # no greedy_steps: one decode_greedy call per step


def test_metrics_and_divergence():
    cfg = get_preset("lfm2-8b-a1b")
    from harness.run.generation import GenerationRun
    run = GenerationRun(np.zeros((1, 5), np.int32), 0.010, [0.002, 0.002, 0.003, 0.004])
    m = generation_metrics(run, cfg, prompt_len=16)
    assert m["ttft_ms"] == pytest.approx(10.0)
    assert m["itl_p50_ms"] == pytest.approx(2.5)
    assert m["decode_tokens_per_s"] == pytest.approx(4 / 0.011)
    # batch 1 bf16: ~3.1 GB per step (the decode floor, ~960 tokens/s at 3.0 TB/s)
    assert decode_bytes_per_step(cfg, 1, 24) == pytest.approx(3.1e9, rel=0.02)
    assert 0 < m["pct_of_decode_floor"] < 100
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = a.copy()
    b[1, 2] = 0
    assert first_divergence(a, a) is None and first_divergence(a, b) == 2


def test_engines_without_generation_say_so(ckpt):
    from harness.engines.base import Engine
    with pytest.raises(NotImplementedError, match="does not generate"):
        Engine(ckpt).prefill(np.zeros((1, 2), np.int32))


def test_greedy_steps_ask_the_engine_for_ids_not_logits(ckpt):
    """greedy_generate calls decode_greedy: the base class takes the argmax of decode's logits,
    an engine that chooses on the device overrides it and never has to return logits."""
    class DeviceChoice(ReferenceEngine):
        def decode(self, tokens):
            raise AssertionError("a greedy step must not fetch logits")

        def decode_greedy(self, tokens):
            return ReferenceEngine.decode(self, tokens).argmax(1).astype(np.int32)

    prompts = synthetic_prompts(ckpt.config.vocab_size, 2, 3, seed=5)
    via_ids = greedy_generate(DeviceChoice(ckpt, device="cpu"), prompts, max_new_tokens=5)
    via_logits = greedy_generate(ReferenceEngine(ckpt, device="cpu"), prompts, max_new_tokens=5)
    np.testing.assert_array_equal(via_ids.tokens, via_logits.tokens)


# ----- the streamed path ---------------------------------------------------------------------------------
class Clock:
    now = 0.0

    def perf_counter(self):
        return self.now


class Streaming(ReferenceEngine):
    """greedy_steps over the reference's own decode on a fake clock: prefill takes 5 s, step n
    (from 0) reaches the host 2 + n s after the one before. `fail_at` yields a malformed step."""
    stream_decode = True

    def __init__(self, ckpt, clock, fail_at=None):
        super().__init__(ckpt, device="cpu")
        self.clock, self.fail_at = clock, fail_at
        self.calls, self.closed = [], False

    def prefill(self, prompts):
        self.clock.now += 5.0
        return super().prefill(prompts)

    def decode_greedy(self, tokens):
        raise AssertionError("a streamed generation must not call decode_greedy")

    def greedy_steps(self, first_ids, steps):
        self.calls.append((np.array(first_ids), steps))
        return self._steps(first_ids, steps)

    def _steps(self, ids, steps):
        try:
            for n in range(steps):
                ids = ReferenceEngine.decode(self, ids).argmax(1).astype(np.int32)
                self.clock.now += 2.0 + n
                yield ids[:0] if n == self.fail_at else ids
        finally:
            self.closed = True


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(generation, "time", SimpleNamespace(perf_counter=c.perf_counter))
    return c


def test_streamed_generation_times_token_arrivals(ckpt, clock):
    prompts = synthetic_prompts(ckpt.config.vocab_size, 2, 3, seed=6)
    eng = Streaming(ckpt, clock)
    run = greedy_generate(eng, prompts, max_new_tokens=6)
    want = greedy_generate(ReferenceEngine(ckpt, device="cpu"), prompts, max_new_tokens=6)
    assert run.mode == "streamed" and want.mode == "per-step"
    np.testing.assert_array_equal(run.tokens, want.tokens)
    (first, steps), = eng.calls  # one stream of every decode step, from prefill's tokens
    assert steps == 5 and first.tolist() == run.tokens[:, 0].tolist()
    assert run.ttft_s == 5.0  # the prefill alone
    assert run.step_s == [2.0, 3.0, 4.0, 5.0, 6.0]  # arrival spacing, the first from prefill's token
    assert eng.closed


def test_streamed_generation_of_one_token_runs_no_step(ckpt, clock):
    eng = Streaming(ckpt, clock)
    run = greedy_generate(eng, synthetic_prompts(ckpt.config.vocab_size, 1, 2, seed=6), max_new_tokens=1)
    assert run.step_s == [] and run.tokens.shape == (1, 1) and eng.calls[0][1] == 0


def test_a_failed_streamed_generation_closes_the_stream(ckpt, clock):
    eng = Streaming(ckpt, clock, fail_at=2)
    with pytest.raises(ValueError) as failure:
        greedy_generate(eng, synthetic_prompts(ckpt.config.vocab_size, 2, 3, seed=6), max_new_tokens=6)
    # closed though the traceback (its frames, the generator among their locals) is still held
    assert eng.closed and failure.traceback


def test_streaming_off_falls_back_to_one_call_per_step(ckpt, clock):
    class Off(Streaming):
        stream_decode = False
        decode_greedy = ReferenceEngine.decode_greedy

    prompts = synthetic_prompts(ckpt.config.vocab_size, 2, 3, seed=6)
    eng = Off(ckpt, clock)
    run = greedy_generate(eng, prompts, max_new_tokens=4)
    assert run.mode == "per-step" and eng.calls == [] and len(run.step_s) == 3
    np.testing.assert_array_equal(run.tokens, greedy_generate(ReferenceEngine(ckpt, device="cpu"), prompts, 4).tokens)
    assert not generation.streams(ReferenceEngine(ckpt, device="cpu"))


def test_the_record_says_how_decode_was_timed(ckpt):
    from harness.run.generate import _record
    from harness.report.records import EXTRA_COLUMNS
    from harness.run.worker import WorkerSpec
    spec = WorkerSpec(engine="reference", model="m", inputs="i", record="r", max_new_tokens=3)
    eng = ReferenceEngine(ckpt, device="cpu")
    batch = {"first": 0, "tokens": np.zeros((1, 3), np.int32), "ttft_s": 0.01, "step_s": [0.002, 0.002]}
    streamed = _record(spec, eng, 1, 4, 1, [dict(batch, mode="streamed")], 1.0, 1)
    assert streamed.decode_mode == "streamed" and "decode_mode" in EXTRA_COLUMNS
    assert any("token-arrival spacing" in n for n in streamed.notes)
    per_step = _record(spec, eng, 1, 4, 1, [batch], 1.0, 1)  # batches from before the mode existed
    assert per_step.decode_mode == "per-step" and any("per step" in n for n in per_step.notes)
    mixed = _record(spec, eng, 1, 4, 1, [batch, dict(batch, mode="streamed")], 1.0, 1)
    assert mixed.decode_mode == "per-step+streamed"
    one_token = _record(spec, eng, 1, 4, 1, [dict(batch, tokens=np.zeros((1, 1), np.int32), step_s=[])], 1.0, 1)
    assert one_token.decode_mode is None


def test_the_record_keeps_each_generations_ttft(ckpt):
    """ttft_ms is the median over the generations; the slowest (a cold first one) and each stay visible."""
    from harness.run.generate import _record
    from harness.run.worker import WorkerSpec
    spec = WorkerSpec(engine="reference", model="m", inputs="i", record="r", max_new_tokens=3)
    eng = ReferenceEngine(ckpt, device="cpu")
    batches = [{"first": 2 * i, "tokens": np.zeros((2, 3), np.int32), "ttft_s": t, "step_s": [0.002, 0.002]}
               for i, t in enumerate((0.05, 0.01, 0.012))]
    rec = _record(spec, eng, 1, 4, 2, batches, 1.0, 6)
    assert rec.generations == 3 and rec.ttft_samples_ms == pytest.approx([50.0, 10.0, 12.0])
    assert rec.ttft_ms == pytest.approx(12.0) and rec.ttft_max_ms == pytest.approx(50.0)
    row = rec.summary_row()
    assert row["generations"] == 3 and row["ttft_max_ms"] == pytest.approx(50.0)


@pytest.mark.parametrize("dtype, judged", [("fp32", True), ("bf16", False)])
def test_greedy_tokens_are_checked_on_the_prompts_the_reference_has_tokens_for(dtype, judged):
    """The suite's reference generates for the first 64 prompts only: a shape with more prompts is
    checked on those, a difference there still fails fp32, and prompts past them are not compared."""
    from harness.report.records import VariantRecord
    from harness.run.generate import _check_greedy
    want = np.arange(12, dtype=np.int32).reshape(3, 4)  # the reference's tokens for prompts 0-2
    idx = np.arange(5)
    got = np.vstack([want, np.full((2, 4), 99, np.int32)])  # prompts 3-4 have no reference tokens
    rec = VariantRecord(engine="e", dtype=dtype, valid=True)
    _check_greedy(rec, got, idx, want)
    assert rec.valid is True and rec.greedy_first_divergence is None and rec.greedy_steps_checked == 4
    assert any("on the 3 of 5 prompts it has tokens for: identical" in n for n in rec.notes)
    got[1, 2] += 1
    rec = VariantRecord(engine="e", dtype=dtype, valid=True)
    _check_greedy(rec, got, idx, want)
    assert rec.greedy_first_divergence == 2 and rec.valid is (not judged)
    rec = VariantRecord(engine="e", dtype=dtype, valid=True)
    _check_greedy(rec, got[3:], idx[3:], want)
    assert rec.greedy_steps_checked is None and rec.valid is True
    assert any("not checked" in n for n in rec.notes)
