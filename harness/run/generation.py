"""The generation workload: greedy prefill + decode, timed per step.

Time to first token is the prefill (its logits choose the first new token); each later token is
one decode step. Metrics follow what serving users read: TTFT, inter-token latency percentiles,
decode tokens/s, and achieved bandwidth against the decode floor (bytes a step must read / HBM
bandwidth).

Two ways to run the decode steps (GenerationRun.mode, in the record as decode_mode):
- "streamed", when the engine has `greedy_steps` and its `stream_decode` flag allows it (the
  optimized engine): the engine keeps one step queued ahead on the GPU and hands each step's ids
  over as they arrive, as a serving engine streams tokens. Inter-token latency is then the spacing
  of token arrivals on the host (the first from when prefill's token was known): the time a
  streaming client waits per token, with the host's work between tokens overlapped by the GPU.
- "per-step" otherwise: one `decode_greedy` call per step, each timed from the call to a device
  synchronize, so the host's time between steps is not counted but the GPU idles through it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from harness.measure.floors import HBM_BYTES_PER_S
from harness.measure.model_stats import decode_bytes_per_step

MODE_NOTES = {
    "streamed": "token-arrival spacing on the host, one decode step queued ahead on the GPU (greedy_steps)",
    "per-step": "one decode_greedy call per step, each timed to a device synchronize",
}


@dataclass
class GenerationRun:
    tokens: np.ndarray  # int32 [batch, max_new_tokens]
    ttft_s: float
    step_s: list = field(default_factory=list)  # one per decode step
    mode: str = "per-step"  # how the steps ran and were timed: a key of MODE_NOTES
    prefill_logits: np.ndarray | None = None  # float32 [batch, vocab]: what chose the first token


def streams(engine) -> bool:
    """The engine streams greedy decode steps (greedy_steps) and its stream_decode flag allows it."""
    return callable(getattr(engine, "greedy_steps", None)) and bool(getattr(engine, "stream_decode", False))


def greedy_generate(engine, prompts: np.ndarray, max_new_tokens: int) -> GenerationRun:
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    engine.synchronize()
    t0 = time.perf_counter()
    logits = engine.prefill(prompts)
    engine.synchronize()
    run = GenerationRun(np.zeros((len(prompts), max_new_tokens), np.int32), time.perf_counter() - t0,
                        mode="streamed" if streams(engine) else "per-step", prefill_logits=logits)
    run.tokens[:, 0] = logits.argmax(1)
    (_streamed_steps if run.mode == "streamed" else _per_call_steps)(engine, run)
    return run


def _per_call_steps(engine, run: GenerationRun) -> None:
    for step in range(1, run.tokens.shape[1]):
        t = time.perf_counter()
        nxt = engine.decode_greedy(run.tokens[:, step - 1])  # greedy needs the ids, not the logits
        engine.synchronize()
        run.step_s.append(time.perf_counter() - t)
        run.tokens[:, step] = nxt


def _streamed_steps(engine, run: GenerationRun) -> None:
    t = time.perf_counter()  # prefill's token is on the host: the client's clock for the next one starts
    # closing: an exception here must not leave the engine with a stream open (and a step queued)
    with contextlib.closing(engine.greedy_steps(run.tokens[:, 0], run.tokens.shape[1] - 1)) as stream:
        for step, ids in enumerate(stream, start=1):
            now = time.perf_counter()
            run.step_s.append(now - t)
            run.tokens[:, step] = ids
            t = now


def generation_metrics(run: GenerationRun, cfg, prompt_len: int, weight_bytes: int = 2) -> dict:
    batch, n = run.tokens.shape
    steps = np.asarray(run.step_s) * 1e3
    out = {"ttft_ms": run.ttft_s * 1e3, "batch": batch, "prompt_len": prompt_len, "max_new_tokens": n}
    if len(steps):
        mid_context = prompt_len + n // 2
        per_step = decode_bytes_per_step(cfg, batch, mid_context, weight_bytes)
        p50 = float(np.percentile(steps, 50))
        out.update(itl_p50_ms=p50, itl_p90_ms=float(np.percentile(steps, 90)),
                   itl_p99_ms=float(np.percentile(steps, 99)),
                   decode_tokens_per_s=batch * len(steps) / (steps.sum() / 1e3),
                   decode_gbps=per_step / (p50 / 1e3) / 1e9,
                   decode_floor_ms=per_step / HBM_BYTES_PER_S * 1e3)
        out["pct_of_decode_floor"] = 100.0 * out["decode_floor_ms"] / p50
    return out


def first_divergence(tokens: np.ndarray, expected: np.ndarray) -> int | None:
    """The first step at which any sequence's token differs, or None when all agree."""
    bad = np.flatnonzero((tokens != expected).any(axis=0))
    return int(bad[0]) if len(bad) else None
