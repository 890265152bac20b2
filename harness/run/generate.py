"""The generate workload inside a rank: what harness.run.worker runs instead of the
prefill timed loop when the spec says `workload: generate`.

Each rank takes its contiguous share of the prompts in batches; each batch is one greedy
generation (prefill, then max_new_tokens - 1 decode steps, streamed or one call per step: see
harness.run.generation; the record's decode_mode and a note say which, since the two time different
things). Timing between barriers as for prefill; warm-up is one short generation of the first
batch; NVML samples the GPU during the timed region as for prefill. Rank 0 gathers the tokens,
the per-step times and each prompt's prefill logits, and writes one record. Validity: the prefill
logits (the job's answers are exactly them) pass the gate of the engine's dtype (harness.jobs.gate),
and for fp32 and fp64 the greedy tokens equal the reference's over the steps checked. A bf16
engine's greedy tokens leave fp32's within a few steps on random weights (near-flat logits: plain
torch bf16 picks fp64's argmax on 31-67 % of the full model's tokens), so for bf16 the first
step that differs is reported, not judged. The share of the decode floor (the H100's memory bandwidth) is left empty for a
run on the CPU.
"""
from __future__ import annotations

import time

import numpy as np

from harness.measure.nvml import NvmlSampler
from harness.report.metrics import device_facts, phase_of
from harness.run.generation import MODE_NOTES, first_divergence, generation_metrics, greedy_generate
from harness.report.records import VariantRecord, environment_facts
from harness.run.stages import StageFailed, err_text


def run_generation(worker, engine, tokens: np.ndarray, lo: int, hi: int, b: int) -> int:
    spec, comm = worker.spec, worker.comm
    try:
        if not getattr(engine, "supports_generation", False):
            worker.stage("checking the engine", lambda: _no_generation(engine))
        n_new = spec.max_new_tokens
        first = tokens[lo:lo + b] if hi > lo else tokens[:1]
        worker.stage("warm-up", lambda: spec.warmup and greedy_generate(engine, first, min(n_new, 4)))
        runs = worker.stage("the timed loop", lambda: _timed(worker, engine, tokens, lo, hi, b, n_new))
        if spec.profile_ops:  # after the clock, on the rank's first batch: where a decode step's time goes
            worker.take_op_profile(f"one decode step of {len(first)} sequences after their prefill",
                                   lambda on_gpu: engine.profile_decode(np.ascontiguousarray(first), on_gpu))
    except StageFailed as e:
        if worker.rank == 0:
            worker.write_failure(str(e))
        return 1
    gathered = comm.gather(runs["batches"], root=0)
    logits = comm.gather(runs["prefill_logits"], root=0)
    ranks_info = comm.gather(worker.info, root=0)
    nvml_all = comm.gather(runs["nvml"].as_dict(), root=0)
    elapsed = runs["elapsed"]
    if worker.rank != 0:
        return 0
    batches = [x for rank_batches in gathered for x in rank_batches]  # rank order = sample order
    rec = _record(spec, engine, comm.Get_size(), tokens.shape[1], b, batches, elapsed, hi - lo)
    rec.__dict__.update(device_facts(ranks_info, nvml_all), per_rank=ranks_info)
    if not rec.gpus:  # the decode floor is the H100's memory bandwidth: no yardstick for a CPU
        rec.pct_of_decode_floor = None
    worker.attach_op_profile(rec)
    try:
        _judge(worker, rec, batches, np.concatenate(logits))
    except Exception as e:
        rec.error, rec.valid = err_text(e), False
    rec.write(spec.record)
    return 0 if rec.error is None else 1


def _no_generation(engine):
    raise RuntimeError(f"engine {engine.name!r} does not generate; the generate workload runs reference, hf "
                       "and optimized")


def _timed(worker, engine, tokens, lo, hi, b, n_new) -> dict:
    from harness.run.outputs import touched_zeros
    comm = worker.comm
    batches = []
    prefill_rows = touched_zeros((hi - lo, engine.config.vocab_size))
    sampler = NvmlSampler(worker.gpu, worker.spec.nvml_interval_s)
    engine.synchronize()
    comm.Barrier()
    t0 = time.perf_counter()
    sampler.start(t0)
    for s0 in range(lo, hi, b):
        run = greedy_generate(engine, tokens[s0:min(s0 + b, hi)], n_new)
        batches.append({"first": s0, "tokens": run.tokens, "ttft_s": run.ttft_s, "step_s": run.step_s,
                        "mode": run.mode})
        # outside the TTFT and step clocks; into rows made before the clock, so no batch faults in
        # fresh pages for the next prefill's logits
        prefill_rows[s0 - lo: s0 - lo + len(run.tokens)] = run.prefill_logits
        run.prefill_logits = None
        if time.perf_counter() - t0 > worker.spec.budget_s:
            break  # whole batches only; the report says how many prompts ran
    engine.synchronize()
    comm.Barrier()
    elapsed = time.perf_counter() - t0
    series = sampler.stop()
    worker.info["device_name"] = series.device_name
    ran = sum(len(x["tokens"]) for x in batches)
    return {"elapsed": elapsed, "batches": batches, "nvml": series, "prefill_logits": prefill_rows[:ran]}


def _record(spec, engine, ranks: int, prompt_len: int, b: int, batches: list, elapsed: float,
            requested_per_rank: int) -> VariantRecord:
    cfg = engine.config
    ran = sum(len(x["tokens"]) for x in batches)
    new_tokens = sum(x["tokens"].size for x in batches)
    rec = VariantRecord(
        engine=spec.engine, phase=phase_of(spec.engine, engine), dtype=str(engine.dtype),
        ranks=ranks, seq_len=prompt_len, batch=b, samples=ran,
        samples_per_s=ran / elapsed if elapsed > 0 else None,
        tokens_per_s=new_tokens / elapsed if elapsed > 0 else None,
        run_id=spec.run_id, variant=spec.variant, model=spec.model_label or spec.model,
        samples_requested=spec.samples or ran, budget_s=spec.budget_s, elapsed_s=elapsed,
        workload="generate", max_new_tokens=spec.max_new_tokens, options=dict(spec.options), **environment_facts(),
    )
    # Metrics per batch (each batch has its own context length and size), then the medians.
    per = [generation_metrics(_as_run(x), cfg, prompt_len, weight_bytes=4 if engine.dtype in ("fp32", "fp64") else 2)
           for x in batches]
    for key in ("ttft_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "decode_gbps", "pct_of_decode_floor"):
        vals = [m[key] for m in per if key in m]
        setattr(rec, key, float(np.median(vals)) if vals else None)
    rec.ttft_samples_ms = [m["ttft_ms"] for m in per]
    rec.generations = len(per)
    rec.ttft_max_ms = max(rec.ttft_samples_ms) if per else None
    decode_s = sum(sum(x["step_s"]) for x in batches)
    decode_tokens = sum(len(x["tokens"]) * len(x["step_s"]) for x in batches)
    rec.decode_tokens_per_s = decode_tokens / decode_s if decode_s > 0 else None
    rec.latency_p50_ms = rec.itl_p50_ms
    rec.latency_p90_ms, rec.latency_p99_ms = rec.itl_p90_ms, rec.itl_p99_ms
    _note_decode_mode(rec, batches)
    if ran < ranks * requested_per_rank:
        rec.budget_hit = True
        rec.notes.append(f"time budget ({spec.budget_s:g} s) reached: {ran} prompts generated")
    return rec


def _judge(worker, rec: VariantRecord, batches: list, prefill_logits: np.ndarray) -> None:
    """valid = the prefill logits pass the dtype's gate against the answers and, for fp32/fp64, the
    greedy tokens are the reference's over the steps checked; the first step that differs is
    reported for every dtype."""
    from harness.run.outputs import check_answers
    spec = worker.spec
    idx = np.concatenate([np.arange(x["first"], x["first"] + len(x["tokens"])) for x in batches]).astype(int)
    check_answers(worker, rec, prefill_logits, idx)  # sets valid (None without answers) and the gate's columns
    if not spec.greedy_answers:
        return
    _check_greedy(rec, np.concatenate([x["tokens"] for x in batches]), idx, np.load(spec.greedy_answers))


def _check_greedy(rec: VariantRecord, got: np.ndarray, idx: np.ndarray, want: np.ndarray) -> None:
    """Compare the generated tokens got [prompts that ran, steps] (job indices idx) with the
    reference's want [its prompts, steps], which may cover only the first prompts (the suite's: 64);
    fp32 and fp64 are judged by them, the low-precision dtypes only report the first difference."""
    from harness.jobs.gate import low_precision
    have = idx < len(want)
    if not have.any():
        rec.notes.append(f"greedy tokens not checked: the reference's cover prompts 0-{len(want) - 1}, none of "
                         "which ran")
        return
    steps = min(want.shape[1], got.shape[1])
    rec.greedy_steps_checked = steps
    rec.greedy_first_divergence = first_divergence(got[have, :steps], want[idx[have], :steps])
    same = rec.greedy_first_divergence is None
    judged = low_precision(rec.dtype) is None  # the dtypes the fp32 contract judges
    if judged:
        rec.valid = same and rec.valid is not False
    of = "" if have.all() else f" on the {int(have.sum())} of {len(idx)} prompts it has tokens for"
    rec.notes.append(f"greedy tokens vs the reference over {steps} steps{of}: "
                     + ("identical" if same else f"first differ at step {rec.greedy_first_divergence}")
                     + ("" if judged else f" (reported, not judged: {rec.dtype} on near-flat logits)"))


def _note_decode_mode(rec: VariantRecord, batches: list) -> None:
    """decode_mode and a note on what the inter-token latency measured (streamed vs per-step)."""
    modes = sorted({x.get("mode", "per-step") for x in batches if len(x["step_s"])})
    if not modes:
        return
    rec.decode_mode = "+".join(modes)
    rec.notes.append("inter-token latency: " + "; ".join(f"{m}: {MODE_NOTES[m]}" for m in modes))


def _as_run(batch: dict):
    from harness.run.generation import GenerationRun
    return GenerationRun(batch["tokens"], batch["ttft_s"], list(batch["step_s"]))
