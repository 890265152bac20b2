"""The JSON record one variant's run leaves behind, and the environment facts it carries.

One record = one (engine, dtype, seq_len, ranks, batch) measured under one `mpiexec`. Its flat
fields are the columns of summary.csv (SUMMARY_COLUMNS first, in that order, then
EXTRA_COLUMNS); the nested ones (per-rank timings, per-call latencies, NVML time series) stay
in the JSON for the report's plots and for anyone digging into a number.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.atomic import write_text_atomic
from harness.measure.floors import PEAK_FLOPS

# summary.csv starts with these columns in this order (what readers of it rely on); more follow.
SUMMARY_COLUMNS = [
    "engine", "phase", "dtype", "device", "ranks", "seq_len", "batch", "samples",
    "samples_per_s", "tokens_per_s", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
    "speedup_vs_phase0", "speedup_vs_prev", "gpu_util_mean", "gpu_util_max", "gpu_mem_peak_gb",
    "h2d_bytes_per_sample", "d2h_bytes_per_sample", "h2d_gbps", "d2h_gbps",
    "nvml_pcie_rx_gbps", "nvml_pcie_tx_gbps", "device_allocs_per_sample", "tflops",
    "pct_of_peak", "valid", "max_abs_err", "top1_agreement", "git_commit", "torch_version",
    "cuda_version", "driver_version",
]
EXTRA_COLUMNS = [
    "run_id", "variant", "model", "batch_used", "samples_requested", "budget_s", "budget_hit",
    "elapsed_s", "load_s", "warmup_s", "gpus", "peak_tflops", "math_mode", "h2d_copy_gbps",
    "nvml_note", "hosts", "weight_h2d_bytes_per_sample", "expert_h2d_bytes_per_sample",
    "output_collective", "mpi_output_bytes", "output_collective_s", "load_mode", "load_bytes_read",
    "calibrate_s", "expert_shards", "ep_placement", "ep_imbalance_predicted", "ep_imbalance_measured",
    "ep_replacements", "ep_exchange_s", "experts_touched", "routed_bytes", "pct_of_routed_floor",
    "workload", "max_new_tokens", "decode_mode", "generations", "ttft_ms", "ttft_max_ms", "itl_p50_ms",
    "itl_p90_ms", "itl_p99_ms", "decode_tokens_per_s", "decode_gbps", "pct_of_decode_floor", "greedy_steps_checked",
    "greedy_first_divergence",
    "invalid_samples", "gate", "gate_limit", "kl_mean", "kl_p50", "kl_p99", "kl_max", "top5_agreement", "status",
    "error",
]

# What became of a variant's run: it ran to the end (VALID, INVALID or not validated), it failed
# (a crash, a dead rank, a timeout), or the user stopped it (Ctrl-C, SIGTERM) before it finished.
OK, FAILED, INTERRUPTED = "ok", "failed", "interrupted"
STATUSES = (OK, FAILED, INTERRUPTED)

# Arithmetic ceilings of one H100 per math mode, TFLOP/s: the floors' table, and TF32 tensor cores from
# NVIDIA's datasheet.
PEAK_TFLOPS = {"tf32": 495.0, **{mode: flops / 1e12 for mode, flops in PEAK_FLOPS.items()}}


@dataclass
class VariantRecord:
    # ---- summary columns (SUMMARY_COLUMNS) -------------------------------------------------
    engine: str
    phase: int | None = None
    dtype: str | None = None
    device: str | None = None
    ranks: int = 1
    seq_len: int = 0
    batch: int = 1
    samples: int = 0  # samples that ran and that the throughput is over
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    speedup_vs_phase0: float | None = None  # filled by the report, within a (seq_len, ranks, batch) group
    speedup_vs_prev: float | None = None
    gpu_util_mean: float | None = None
    gpu_util_max: float | None = None
    gpu_mem_peak_gb: float | None = None
    h2d_bytes_per_sample: float | None = None
    d2h_bytes_per_sample: float | None = None
    h2d_gbps: float | None = None
    d2h_gbps: float | None = None
    nvml_pcie_rx_gbps: float | None = None
    nvml_pcie_tx_gbps: float | None = None
    device_allocs_per_sample: float | None = None
    tflops: float | None = None
    pct_of_peak: float | None = None
    valid: bool | None = None  # None: no answers to validate against
    max_abs_err: float | None = None
    top1_agreement: float | None = None
    git_commit: str | None = None
    torch_version: str | None = None
    cuda_version: str | None = None
    driver_version: str | None = None
    # ---- extra columns (EXTRA_COLUMNS) -----------------------------------------------------
    run_id: str | None = None
    variant: str | None = None
    model: str | None = None
    batch_used: int | None = None  # samples per forward call actually fed (<= engine.max_batch)
    samples_requested: int = 0
    budget_s: float | None = None
    budget_hit: bool = False
    elapsed_s: float | None = None  # the timed region, rank 0's clock between the barriers
    load_s: float | None = None  # slowest rank's checkpoint + engine construction
    warmup_s: float | None = None
    gpus: int = 0  # distinct GPUs the ranks used
    peak_tflops: float | None = None  # the ceiling pct_of_peak is against (per GPU x gpus)
    math_mode: str | None = None
    h2d_copy_gbps: float | None = None  # bytes / time spent inside the copies (engine's clock)
    nvml_note: str | None = None
    hosts: str | None = None
    weight_h2d_bytes_per_sample: float | None = None  # model weights over PCIe (phase 4+: zero)
    expert_h2d_bytes_per_sample: float | None = None  # the expert part of it (phase 2's evidence)
    output_collective: str | None = None  # how outputs reached rank 0: reduce (phases 0-4) or gather
    mpi_output_bytes: float | None = None  # bytes all ranks sent for it
    output_collective_s: float | None = None  # the longest any rank spent in it (waiting for the others included)
    load_mode: str | None = None  # phase 5: each rank reads the checkpoint, or one per node broadcasts
    load_bytes_read: float | None = None  # checkpoint bytes read, summed over ranks
    calibrate_s: float | None = None  # the engine's calibration hook, outside the clock (slowest rank)
    # ---- phase 5's expert placement (the engine's record_fields) ----
    expert_shards: int | None = None  # ranks the experts are split over (1: every rank holds all)
    ep_placement: str | None = None  # where the placement came from (measured calibration, contiguous)
    ep_imbalance_predicted: float | None = None  # timed loop: per layer the busiest shard, summed, over the
    ep_imbalance_measured: float | None = None  # even share; by the cost model / by CUDA events (1.0 = even)
    ep_replacements: int | None = None  # placements made again in the timed loop because the load drifted
    ep_exchange_s: float | None = None  # the slowest rank's seconds inside the MoE exchange collectives
    # ---- what the prefill's routing touched (engine.touched_experts, one forward of the first batch) ----
    experts_touched: float | None = None  # distinct experts per MoE layer, mean over the layers
    routed_bytes: float | None = None  # the expert weight bytes that forward had to read
    pct_of_routed_floor: float | None = None  # tokens/s over the floor of those bytes + the non-expert ones
    # ---- the generate workload ----
    workload: str = "prefill"
    max_new_tokens: int | None = None
    decode_mode: str | None = None  # streamed (token arrivals, one step queued ahead) or per-step (harness.run.generation)
    generations: int | None = None  # greedy generations (batches) the TTFT and the step times come from
    ttft_ms: float | None = None  # median time to first token (= a prefill call) over the generations
    ttft_max_ms: float | None = None  # the slowest generation's (a cold first one shows here)
    itl_p50_ms: float | None = None  # inter-token latency of a batch, as decode_mode says
    itl_p90_ms: float | None = None
    itl_p99_ms: float | None = None
    decode_tokens_per_s: float | None = None  # new tokens per second of decode steps, all ranks
    decode_gbps: float | None = None  # bytes a step must read (weights + caches) / median step
    pct_of_decode_floor: float | None = None  # decode floor (bytes / 3.0 TB/s) over the median step
    greedy_steps_checked: int | None = None
    greedy_first_divergence: int | None = None  # first step whose token differs from the reference
    invalid_samples: int | None = None  # samples past the gate's per-sample limit (fp32: a logit beyond
    # the tolerance, 0 when VALID; bf16/fp16: KL beyond gate_limit, a VALID row may have some)
    # ---- the correctness gate (harness.jobs.gate) and the accuracy statistics (harness.jobs.accuracy) ----
    gate: str | None = None  # which rule judged `valid`: "fp32 1e-3" or "bf16 vs torch-bf16 x 4"
    gate_limit: float | None = None  # fp32: the tolerance per logit; bf16/fp16: the limit on kl_p50 (nats)
    kl_mean: float | None = None  # per-sample KL(p_answers || p_engine) of the softmaxes, nats
    kl_p50: float | None = None  # its median: what the bf16/fp16 gate judges
    kl_p99: float | None = None
    kl_max: float | None = None
    top5_agreement: float | None = None  # mean share of the answers' top 5 tokens in the engine's top 5
    status: str | None = None  # OK, FAILED or INTERRUPTED; None: derived from error when written
    error: str | None = None
    # ---- nested detail (JSON only) ---------------------------------------------------------
    per_rank: list[dict] = field(default_factory=list)  # timings + counters per rank
    latencies_ms: list[list[float]] = field(default_factory=list)  # per rank, per forward call
    ttft_samples_ms: list[float] = field(default_factory=list)  # generate: each generation's TTFT, in prompt order
    nvml: list[dict] = field(default_factory=list)  # per rank: NvmlSeries.as_dict()
    ran_indices: list[int] = field(default_factory=list)
    invalid_sample_indices: list[int] = field(default_factory=list)  # job sample indices, first 100
    op_profile: list[dict] = field(default_factory=list)  # --profile-ops: {name, calls, us}, most time first
    expert_placement: dict = field(default_factory=dict)  # per node: placement, cost model, per-rank load
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = _json_safe(dataclasses.asdict(self))
        d["status"] = record_status(d.get("status"), d.get("error"))
        return d

    def summary_row(self) -> dict:
        d = self.to_dict()
        return {k: d.get(k) for k in SUMMARY_COLUMNS + EXTRA_COLUMNS}

    def write(self, path: str | Path) -> Path:
        """Atomically: a reader never sees half a record."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def from_dict(cls, d: dict) -> "VariantRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def read(cls, path: str | Path) -> "VariantRecord":
        d = json.loads(Path(path).read_text())
        if not isinstance(d, dict) or "engine" not in d:
            raise ValueError("a record is a JSON object with an engine")
        return cls.from_dict(d)


def record_status(status, error) -> str:
    """A record's status; records written before the field existed derive it from error."""
    if isinstance(status, str) and status in STATUSES:
        return status
    return FAILED if isinstance(error, str) and error.strip() else OK


def _json_safe(x):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---- environment facts ---------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """HEAD of the checkout the harness runs from, '+dirty' when tracked files differ.
    A copy without .git (e.g. a tree shipped to a GPU machine) may set LFM2_GIT_COMMIT."""
    if os.environ.get("LFM2_GIT_COMMIT"):
        return os.environ["LFM2_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment_facts() -> dict:
    """git commit, torch/CUDA/driver versions; None for what this machine does not have."""
    import torch
    from harness.measure.nvml import driver_version
    return {
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "driver_version": driver_version(),
    }


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({name})" if name else "cpu"
