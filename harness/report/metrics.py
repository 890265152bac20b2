"""From what the ranks measured to a record's numbers (rank 0, after the timed region).

Conventions, so the columns mean one thing across variants:
  * throughput is over the samples that ran and rank 0's clock between the two barriers;
  * latency percentiles pool every forward call of every rank (one call = `batch_used` samples);
  * bytes and allocations are the engines' own counters summed over ranks, per sample;
    `h2d_gbps` is those bytes over the timed region (the average load on the bus, comparable
    with NVML's PCIe RX), `h2d_copy_gbps` over the time spent inside the copies;
  * NVML figures are per GPU (ranks sharing a GPU are counted once): utilization mean over GPUs
    and max, memory peak max, PCIe rates summed over GPUs;
  * tflops = useful FLOPs of the job (measure.model_stats.job_flops) over the timed
    region; pct_of_peak against PEAK_TFLOPS of the engine's math mode times the GPUs used.
"""
from __future__ import annotations

import numpy as np

from harness.engines.base import PHASE_ENGINES
from harness.measure.floors import WEIGHT_BYTES, prefill_floor
from harness.measure.model_stats import expert_params, model_stats
from harness.report.records import FAILED, PEAK_TFLOPS, VariantRecord, cpu_name, environment_facts


def phase_of(engine_name: str, engine=None) -> int | None:
    if engine is not None and getattr(engine, "phase", None) is not None:
        return int(engine.phase)
    name = "baseline" if engine_name == "phase0" else engine_name
    return PHASE_ENGINES.index(name) if name in PHASE_ENGINES else None


def _pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else None


def _per_gpu(ranks_info: list[dict], nvml_all: list[dict]) -> list[dict]:
    """One NVML series per physical GPU (first rank on it), only those that sampled."""
    seen, out = set(), []
    for info, series in zip(ranks_info, nvml_all):
        if info.get("gpu") is None:
            continue
        key = (info["host"], series.get("pci_bus_id") or info["gpu"])
        if key in seen:
            continue
        seen.add(key)
        out.append(series)
    return out


def _nvml_columns(per_gpu: list[dict]) -> dict:
    sampled = [s for s in per_gpu if s.get("available") and s.get("t_s")]
    if not sampled:
        return {}

    def mean(xs):
        xs = [x for x in xs if x is not None and np.isfinite(x)]
        return float(np.mean(xs)) if xs else None
    means = [mean(s["gpu_util_pct"]) for s in sampled]
    rx = [mean(s["pcie_rx_gbps"]) for s in sampled]
    tx = [mean(s["pcie_tx_gbps"]) for s in sampled]
    return {
        "gpu_util_mean": mean(means),
        "gpu_util_max": max(max(s["gpu_util_pct"]) for s in sampled),
        "gpu_mem_peak_gb": max(max(s["mem_used_gb"]) for s in sampled),
        "nvml_pcie_rx_gbps": sum(r for r in rx if r is not None) if any(r is not None for r in rx) else None,
        "nvml_pcie_tx_gbps": sum(t for t in tx if t is not None) if any(t is not None for t in tx) else None,
    }


def device_facts(ranks_info: list[dict], nvml_all: list[dict]) -> dict:
    """What the ranks ran on, for any workload: the device column (GPU names, else the CPU's), the
    number of distinct GPUs, NVML's columns and notes."""
    per_gpu = _per_gpu(ranks_info, nvml_all)
    names = sorted({s.get("device_name") for s in per_gpu if s.get("device_name")})
    if per_gpu:
        device = ", ".join(names) if names else ", ".join(f"cuda:{r['gpu']}" for r in ranks_info)
    else:
        device = cpu_name()
    notes = sorted({s.get("note") for s in nvml_all if s.get("note")})
    return {"device": device, "gpus": len(per_gpu), "nvml_note": "; ".join(notes) or None,
            "hosts": ",".join(sorted({r["host"] for r in ranks_info})), "nvml": nvml_all,
            **_nvml_columns(per_gpu)}


def build_record(spec, engine, ranks_info: list[dict], lat_all: list[list[float]], nvml_all: list[dict],
                 timed: dict, batch_used: int, n_requested: int, seq_len: int) -> VariantRecord:
    elapsed = float(timed["elapsed"])
    ran = sum(r["samples_ran"] for r in ranks_info)
    lat = [x for rank_lat in lat_all for x in rank_lat]
    counters = [r.get("counters") or {} for r in ranks_info]

    def total(key):
        return float(sum(c.get(key, 0) or 0 for c in counters))
    h2d, d2h, allocs = total("h2d_bytes"), total("d2h_bytes"), total("device_allocs")
    h2d_s = total("h2d_seconds")

    facts = device_facts(ranks_info, nvml_all)
    gpus = facts["gpus"]
    math_mode = str(getattr(engine, "math_mode", None) or engine.dtype)
    flops = model_stats(engine.config).job_flops(seq_len) * ran
    tflops = flops / elapsed / 1e12 if elapsed > 0 else None
    peak = PEAK_TFLOPS.get(math_mode, None)
    peak = peak * gpus if (peak and gpus) else None

    rec = VariantRecord(
        engine=spec.engine, phase=phase_of(spec.engine, engine), dtype=str(engine.dtype),
        ranks=len(ranks_info), seq_len=seq_len,
        batch=int(spec.batch or engine.max_batch or 1), samples=ran,
        samples_per_s=ran / elapsed if elapsed > 0 else None,
        tokens_per_s=ran * seq_len / elapsed if elapsed > 0 else None,
        latency_p50_ms=_pct(lat, 50), latency_p90_ms=_pct(lat, 90), latency_p99_ms=_pct(lat, 99),
        h2d_bytes_per_sample=h2d / ran if ran else None, d2h_bytes_per_sample=d2h / ran if ran else None,
        h2d_gbps=h2d / elapsed / 1e9 if elapsed > 0 else None,
        d2h_gbps=d2h / elapsed / 1e9 if elapsed > 0 else None,
        device_allocs_per_sample=allocs / ran if ran else None,
        weight_h2d_bytes_per_sample=total("weight_h2d_bytes") / ran if ran else None,
        expert_h2d_bytes_per_sample=total("expert_h2d_bytes") / ran if ran else None,
        output_collective=next((r["output_collective"] for r in ranks_info if r.get("output_collective")), None),
        mpi_output_bytes=float(sum(r.get("mpi_output_bytes", 0) or 0 for r in ranks_info)),
        load_mode=next((c["load_mode"] for c in counters if c.get("load_mode")), None),
        load_bytes_read=total("load_bytes_read") if any("load_bytes_read" in c for c in counters) else None,
        tflops=tflops, pct_of_peak=(100.0 * tflops / peak) if (peak and tflops is not None) else None,
        run_id=spec.run_id, variant=spec.variant, model=spec.model_label or spec.model,
        batch_used=batch_used, samples_requested=n_requested, budget_s=spec.budget_s,
        budget_hit=bool(timed["budget_hit"]), elapsed_s=elapsed,
        load_s=max(r.get("load_s", 0.0) for r in ranks_info),
        warmup_s=max(r.get("warmup_s", 0.0) for r in ranks_info),
        peak_tflops=peak, math_mode=math_mode,
        h2d_copy_gbps=h2d / h2d_s / 1e9 if h2d_s > 0 else None,
        per_rank=ranks_info, latencies_ms=lat_all, options=dict(spec.options),
        **facts, **environment_facts(),
    )
    if not getattr(engine, "counts_transfers", True):
        _transfers_not_counted(rec, engine)
    _routing_columns(rec, engine.config, ranks_info[0].get("touched_experts"))
    rec.notes += [r["touched_experts_note"] for r in ranks_info[:1] if r.get("touched_experts_note")]
    if rec.budget_hit:
        rec.notes.append(f"budget of {spec.budget_s:g} s reached: {ran} of {n_requested} samples ran")
    return rec


TRANSFER_COLUMNS = ("h2d_bytes_per_sample", "d2h_bytes_per_sample", "h2d_gbps", "d2h_gbps", "h2d_copy_gbps",
                    "device_allocs_per_sample", "weight_h2d_bytes_per_sample", "expert_h2d_bytes_per_sample")


def _transfers_not_counted(rec: VariantRecord, engine) -> None:
    """An engine whose copies and allocations happen out of the harness's sight (e.g. inside
    transformers) has no byte counts: empty, not a misleading zero."""
    for c in TRANSFER_COLUMNS:
        setattr(rec, c, None)
    rec.notes.append(f"h2d/d2h bytes and device allocations: n/a ({engine.name} moves its tensors itself; "
                     "only NVML's PCIe columns see that traffic)")


DTYPE_BYTES = {**WEIGHT_BYTES, "fp64": 8}


def _routing_columns(rec: VariantRecord, cfg, touched: list[int] | None) -> None:
    """The bytes the first batch's routing touched (engine.touched_experts: distinct experts per MoE
    layer) and, on a GPU, the throughput as a share of the weight-streaming floor of exactly those
    bytes (with the compute floor, whichever binds): a 1 x 16 forward that touches ~24 of 32 experts
    per layer is judged against the bytes it must read, not the whole model's."""
    if not touched or rec.dtype not in DTYPE_BYTES:
        return
    rec.experts_touched = float(np.mean(touched))
    rec.routed_bytes = float(sum(touched) * expert_params(cfg) * DTYPE_BYTES[rec.dtype])
    if rec.gpus and rec.dtype in WEIGHT_BYTES:
        floor = prefill_floor(cfg, rec.dtype, rec.seq_len, rec.batch_used or 1, rec.routed_bytes, rec.gpus)
        rec.pct_of_routed_floor = floor.pct(rec.tokens_per_s)


def failure_record(spec, message: str, ranks: int, **known) -> VariantRecord:
    """The row of a variant that crashed, timed out, never started or was interrupted (pass
    status=INTERRUPTED): valid=False, the error."""
    rec = VariantRecord(
        engine=spec.engine, phase=phase_of(spec.engine), dtype=spec.options.get("dtype"),
        ranks=ranks, seq_len=spec.seq_len or 0, batch=int(spec.batch or 1), samples=0,
        valid=False, run_id=spec.run_id, variant=spec.variant, model=spec.model_label or spec.model,
        samples_requested=spec.samples or 0, budget_s=spec.budget_s, error=message.strip(),
        workload=spec.workload, options=dict(spec.options), status=FAILED, **environment_facts(),
    )
    rec.__dict__.update(known)
    return rec
