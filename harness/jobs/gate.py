"""The correctness gate: which rule says VALID for an engine's logits, by the engine's dtype.

  * fp32 (and wider, and any dtype not listed below), gate "fp32 1e-3": the job's contract
    (docs/usage.md, the job), every logit within 1e-3 (absolute) of the answer; NaN never passes.
  * bf16 and fp16, gate "bf16 vs torch-bf16 x 4": the median over samples of the per-sample
    KL(p_answers || p_engine) (harness.jobs.accuracy) must be at most FACTOR times the median that
    a plain torch forward in the same dtype on the same weights scores against the same answers
    (the reference forward of harness.engines.reference run in that dtype on the job's first
    CALIBRATION_SAMPLES prompts: the calibration). Every logit must also be finite.

Why this statistic (CPU calibration on the tiny and small presets, 128-256 prompts of 16 tokens;
the numbers in tests/test_gate_cpu_mutations.py's output and the project docs): a bf16 forward of
random synthetic weights flips routing choices on most prompts (plain torch bf16 routes ~80% of
tiny's prompts differently from fp64 somewhere), and a flipped token moves its sample's KL about as
far as a bug does, so the mean, a high percentile or the max of the KL cannot tell rounding from
bugs (on small, plain torch bf16's 90th percentile, 9e-3 nats, is where the bugs' medians lie), nor
can top-1 on near-flat logits. The median sample can: on small, plain torch bf16 1.6e-4 nats and
transformers' bf16 1.1e-4, while planted bugs gave 5.7e-3 (one expert's down-projection rows
swapped) to 6.2e-2 (last layer skipped), 36-380x; on tiny 13-2900x. Routing flips forced on 8 of
128 prompts moved the median by 1-6%. FACTOR = 4 sits between the clean engines (<= 1x) and the
mildest bug (13x). Blind spot, by design: a bug that moves fewer than about half the samples past
the limit (an expert few tokens use, say) passes; the fp32 contract catches it in an fp32 run.

The calibration is made once per answers file, model and dtype and cached beside answers.bin as
`<answers stem>.gate-<model id>-<dtype>.json` (harness.jobs.prepare.gate_calibration names the
model); it records the answers file's size and mtime and is remade when they change.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.atomic import write_json_atomic
from harness.jobs.accuracy import LogitStats, logit_stats
from harness.jobs.files import TOLERANCE, JobFileError, validate

FACTOR = 4.0  # the engine's median KL may be this many times plain torch's in its dtype
CALIBRATION_SAMPLES = 128  # the job's first prompts the torch forward runs on
CALIBRATION_VERSION = 1  # bump when the calibration's meaning changes: cached files are remade

_LOW_PRECISION = {"bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
                  "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16"}


def low_precision(dtype) -> str | None:
    """'bf16' or 'fp16' for an engine dtype judged by the calibrated gate; None for the fp32 contract."""
    return _LOW_PRECISION.get(str(dtype).strip().lower()) if dtype is not None else None


def _short(x: float) -> str:
    """1e-3 rather than 0.001: how the contract is written."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}" if float(mantissa) * 10 ** int(exponent) == x else f"{x:g}"


def gate_name(dtype, tol: float = TOLERANCE) -> str:
    """The gate that judges this dtype, as records name it."""
    lp = low_precision(dtype)
    return f"{lp} vs torch-{lp} x {FACTOR:g}" if lp else f"fp32 {_short(tol)}"


# ----- the calibration: plain torch in the engine's dtype against the same answers -------------------
@dataclass(frozen=True)
class Calibration:
    dtype: str  # bf16 | fp16
    samples: int  # prompts the torch forward ran (the job's first)
    kl_p50: float  # what the gate scales: the median per-sample KL, nats
    kl_mean: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    top5_agreement: float
    max_abs_err: float
    device: str  # where the torch forward ran
    answers_size: int = -1  # the answers file it was made against, to notice a rewritten one
    answers_mtime_ns: int = -1
    version: int = CALIBRATION_VERSION

    @property
    def limit(self) -> float:
        return FACTOR * self.kl_p50

    def matches(self, answers: Path) -> bool:
        st = Path(answers).stat()
        return (self.version, self.answers_size, self.answers_mtime_ns) == (CALIBRATION_VERSION, st.st_size,
                                                                            st.st_mtime_ns)

    def write(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> "Calibration | None":
        """The cached calibration, or None when there is none or it cannot be read."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def calibration_path(answers, model_key: str, dtype: str) -> Path:
    answers = Path(answers)
    return answers.with_name(f"{answers.stem}.gate-{model_key}-{low_precision(dtype) or dtype}.json")


def calibrate(ckpt, tokens: np.ndarray, answers: np.ndarray, dtype: str, device: str | None = None) -> Calibration:
    """Run the reference forward in `dtype` on the first CALIBRATION_SAMPLES prompts and measure it
    against their answers. GEMMs accumulate in fp32 (no reduced-precision reductions), as cuBLAS
    and the engines here do."""
    import torch

    from harness.engines.reference import WeightCache, reference_logits

    lp = low_precision(dtype)
    if lp is None:
        raise ValueError(f"dtype {dtype!r} is judged by the fp32 contract and needs no calibration")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = min(len(tokens), len(answers), CALIBRATION_SAMPLES)
    if n == 0:
        raise ValueError("no prompts to calibrate the gate on")
    if np.shape(answers)[1] != ckpt.config.vocab_size:
        raise JobFileError(f"the answers have {np.shape(answers)[1]} logits per sample, the model "
                           f"{ckpt.config.vocab_size}: give the answers of this model (or leave --answers out)")
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)
    matmul.allow_bf16_reduced_precision_reduction = matmul.allow_fp16_reduced_precision_reduction = False
    try:
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[lp]
        out = reference_logits(ckpt, np.asarray(tokens)[:n], dtype=torch_dtype, device=device, cache=WeightCache())
    finally:
        matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction = saved
    s = logit_stats(out, np.asarray(answers)[:n])
    if not np.isfinite(s.kl_p50):
        raise ValueError(f"the torch {lp} forward gave non-finite logits; the gate cannot be calibrated on this model")
    return Calibration(lp, n, s.kl_p50, s.kl_mean, s.kl_p99, s.kl_max, s.top1_agreement, s.top5_agreement,
                       s.max_abs_err, str(device))


def cached_calibration(answers, inputs, ckpt_or_path, model_key: str, dtype: str,
                       device: str | None = None) -> tuple[Calibration, str]:
    """The calibration for these answers, model and dtype: the cached one beside the answers, else
    made now (and cached when the folder is writable). -> (calibration, a note saying which)."""
    from harness.jobs.files import read_inputs, read_logits

    answers = Path(answers)
    path = calibration_path(answers, model_key, dtype)

    def cached():
        c = Calibration.read(path)
        return c if c is not None and c.matches(answers) else None

    def make() -> Calibration:
        ckpt = ckpt_or_path
        if isinstance(ckpt, (str, Path)):
            from harness.checkpoints.open import open_checkpoint
            ckpt = open_checkpoint(str(ckpt))
        n = CALIBRATION_SAMPLES
        c = calibrate(ckpt, read_inputs(inputs)[:n], read_logits(answers)[:n], dtype, device)
        st = answers.stat()
        return Calibration(**{**asdict(c), "answers_size": st.st_size, "answers_mtime_ns": st.st_mtime_ns})

    if (c := cached()) is not None:
        return c, f"gate calibration read from {path.name}"
    if not os.access(answers.parent, os.W_OK):
        return make(), f"gate calibration made now (not cached: {answers.parent} is read-only)"
    from harness.checkpoints.synthetic import _locked  # the inter-process lock of the caches
    with _locked(path.with_name(f".{path.name}.lock")):
        if (c := cached()) is None:
            c = make()
            c.write(path)
            return c, f"gate calibration made and cached as {path.name}"
    return c, f"gate calibration read from {path.name}"


# ----- the verdict ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateVerdict:
    valid: bool
    gate: str  # which rule judged: "fp32 1e-3" or "bf16 vs torch-bf16 x 4"
    limit: float  # fp32: the tolerance per logit; bf16/fp16: the limit on the median KL (nats)
    stats: LogitStats
    beyond: tuple = ()  # samples (rows) past the per-sample limit: a logit beyond tolerance, or KL beyond limit
    calibration: Calibration | None = None

    def record_columns(self) -> dict:
        return {**self.stats.columns(), "valid": bool(self.valid), "kl_p50": self.stats.kl_p50, "gate": self.gate,
                "gate_limit": self.limit, "invalid_samples": len(self.beyond)}

    def reason(self) -> str:
        """The numbers the verdict rests on, in words."""
        s, c = self.stats, self.calibration
        if c is None:
            beyond = f", {len(self.beyond)} of {s.samples} samples beyond it" if self.beyond else ""
            return f"max abs err {s.max_abs_err:.3g} {'<=' if self.valid else 'beyond'} {self.limit:g}{beyond}"
        if not np.isfinite(s.max_abs_err):
            return "non-finite logits"
        return (f"median KL {s.kl_p50:.3g} {'<=' if self.valid else '>'} {self.limit:.3g} nats = {FACTOR:g} x "
                f"torch-{c.dtype}'s {c.kl_p50:.3g} on {c.samples} prompts; {len(self.beyond)} of {s.samples} "
                f"samples beyond the limit")

    def __str__(self) -> str:
        s = self.stats
        return (f"{'VALID' if self.valid else 'INVALID'} by the gate '{self.gate}' ({self.reason()}; top-1 "
                f"{100 * s.top1_agreement:.1f}%, top-5 {100 * s.top5_agreement:.1f}%, KL mean {s.kl_mean:.3g} / max "
                f"{s.kl_max:.3g}, max abs err {s.max_abs_err:.3g} over {s.samples} samples)")


def judge(outputs, answers, dtype, tol: float = TOLERANCE, calibration: Calibration | None = None) -> GateVerdict:
    """The verdict of dtype's gate on `outputs` against `answers` (rows paired). bf16/fp16 need the
    calibration (cached_calibration)."""
    stats = logit_stats(outputs, answers)
    lp = low_precision(dtype)
    if lp is None:
        v = validate(outputs, answers, tol)
        return GateVerdict(v.valid, gate_name(dtype, tol), tol, stats, v.invalid_rows)
    if calibration is None or calibration.dtype != lp:
        raise ValueError(f"the {lp} gate needs a {lp} calibration (gate.cached_calibration), got "
                         f"{calibration.dtype if calibration else None}")
    limit = calibration.limit
    valid = stats.samples > 0 and bool(np.isfinite(stats.max_abs_err)) and stats.kl_p50 <= limit
    beyond = tuple(int(i) for i in np.flatnonzero(~(stats.kl <= limit)))  # NaN / inf count as beyond
    return GateVerdict(valid, gate_name(lp), limit, stats, beyond, calibration)
