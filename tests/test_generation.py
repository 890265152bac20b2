"""The generation workload's loop and metrics, with the reference engine on the CPU."""
import numpy as np
import pytest

from harness.config import get_preset
from harness.generation import first_divergence, generation_metrics, greedy_generate
from harness.jobfiles import synthetic_prompts
from harness.modelstats import decode_bytes_per_step
from harness.reference_engine import ReferenceEngine
from harness.reference_generate import reference_generate
from harness.synthetic import synthetic_checkpoint


@pytest.fixture(scope="module")
def ckpt():
    return synthetic_checkpoint(get_preset("tiny-top3"), seed=1)


def test_engine_generation_equals_reference_greedy(ckpt):
    prompts = synthetic_prompts(ckpt.config.vocab_size, 3, 3, seed=4)
    run = greedy_generate(ReferenceEngine(ckpt, device="cpu"), prompts, max_new_tokens=8)
    want = np.stack(reference_generate(ckpt, list(prompts), 8).tokens)
    assert first_divergence(run.tokens, want) is None
    assert len(run.step_s) == 7 and run.ttft_s > 0


def test_metrics_and_divergence():
    cfg = get_preset("lfm2-8b-a1b")
    from harness.generation import GenerationRun
    run = GenerationRun(np.zeros((1, 5), np.int32), 0.010, [0.002, 0.002, 0.003, 0.004])
    m = generation_metrics(run, cfg, prompt_len=16)
    assert m["ttft_ms"] == pytest.approx(10.0)
    assert m["itl_p50_ms"] == pytest.approx(2.5)
    assert m["decode_tokens_per_s"] == pytest.approx(4 / 0.011)
    # batch 1 bf16: ~3.1 GB per step (performance.md's decode floor, ~960 tokens/s at 3.0 TB/s)
    assert decode_bytes_per_step(cfg, 1, 24) == pytest.approx(3.1e9, rel=0.02)
    assert 0 < m["pct_of_decode_floor"] < 100
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = a.copy()
    b[1, 2] = 0
    assert first_divergence(a, a) is None and first_divergence(a, b) == 2


def test_engines_without_generation_say_so(ckpt):
    from harness.engine import Engine
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
