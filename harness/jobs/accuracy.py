"""How far an engine's last-position logits are from the reference's: the comparison statistics.

Per sample (one row of [samples, vocab] logits):
  * KL divergence KL(p_ref || p_engine) of the two softmaxes, in nats, computed in float64. It grows
    with the square of a logit error, so rounding (bf16: ~1e-3 relative) and a bug (an error of the
    logits' own scale) land orders of magnitude apart; a non-finite row has KL = inf.
  * top-k agreement: the share of the reference's k most likely tokens that are among the engine's
    k most likely (|top-k(engine) & top-k(reference)| / k); k = 1 is argmax agreement.
  * absolute error: max over the row's logits (the job's 1e-3 contract is on this one).
The aggregates over samples are LogitStats' fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _shapes(outputs, answers) -> tuple[np.ndarray, np.ndarray]:
    outputs, answers = np.asarray(outputs), np.asarray(answers)
    if outputs.shape != answers.shape or outputs.ndim != 2:
        raise ValueError(f"outputs {outputs.shape} and answers {answers.shape} must be one [samples, vocab] shape")
    return outputs, answers


def _pair(outputs, answers) -> tuple[np.ndarray, np.ndarray]:
    outputs, answers = _shapes(outputs, answers)
    return outputs.astype(np.float64), answers.astype(np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax in float64 (max subtracted first: no overflow)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


ROWS_PER_BLOCK = 256  # float64 temporaries of 256 x 65,536 logits: 134 MB each, whatever the job's size


def kl_per_sample(outputs, answers) -> np.ndarray:
    """KL(softmax(answers) || softmax(outputs)) per row, nats, float64 [samples]; inf for a row of
    outputs that is not finite."""
    outputs, answers = _shapes(outputs, answers)
    kl = np.empty(len(outputs))
    for lo in range(0, len(outputs), ROWS_PER_BLOCK):
        out, ans = _pair(outputs[lo:lo + ROWS_PER_BLOCK], answers[lo:lo + ROWS_PER_BLOCK])
        finite = np.isfinite(out).all(axis=1)
        log_p, log_q = log_softmax(ans), log_softmax(np.where(finite[:, None], out, 0.0))
        block = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
        kl[lo:lo + len(out)] = np.where(finite, np.maximum(block, 0.0), np.inf)  # equal rows may give -1e-17
    return kl


def topk_agreement_per_sample(outputs, answers, k: int) -> np.ndarray:
    """|top-k(outputs) & top-k(answers)| / k per row; a row that is not finite agrees on nothing."""
    outputs, answers = _shapes(outputs, answers)
    k = min(k, outputs.shape[1])
    finite = np.isfinite(outputs).all(axis=1)
    mine = np.argpartition(-np.where(finite[:, None], outputs, 0), k - 1, axis=1)[:, :k]
    ref = np.argpartition(-answers, k - 1, axis=1)[:, :k]
    shared = np.array([len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(mine, ref)], np.float64)
    return np.where(finite, shared / k, 0.0)


def max_abs_err_per_sample(outputs, answers) -> np.ndarray:
    outputs, answers = _shapes(outputs, answers)
    err = np.array([np.abs(o.astype(np.float64) - a).max() for o, a in zip(outputs, answers)])
    return np.where(np.isfinite(err), err, np.inf)


@dataclass(frozen=True)
class LogitStats:
    samples: int
    max_abs_err: float  # over every logit; inf when any output is not finite
    kl_mean: float  # nats, mean over samples
    kl_p50: float  # the median sample: what the bf16 gate judges (harness.jobs.gate)
    kl_p99: float  # the sample at the 99th percentile (nearest rank)
    kl_max: float
    top1_agreement: float  # fraction of samples whose argmax matches
    top5_agreement: float  # mean share of the reference's top 5 tokens in the engine's top 5
    kl: np.ndarray = field(repr=False, compare=False, default=None)  # per sample

    def columns(self) -> dict:
        """The record columns these statistics fill."""
        return {"max_abs_err": self.max_abs_err, "kl_mean": self.kl_mean, "kl_p99": self.kl_p99,
                "kl_max": self.kl_max, "top1_agreement": self.top1_agreement, "top5_agreement": self.top5_agreement}

    def __str__(self) -> str:
        return (f"KL mean {self.kl_mean:.3g} (p50 {self.kl_p50:.3g}, p99 {self.kl_p99:.3g}, max {self.kl_max:.3g}) "
                f"nats, top-1 {100 * self.top1_agreement:.1f}%, top-5 {100 * self.top5_agreement:.1f}%, "
                f"max abs err {self.max_abs_err:.3g} over {self.samples} samples")


def _nearest_rank(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q, method="higher")) if len(x) else float("nan")


def logit_stats(outputs, answers) -> LogitStats:
    outputs, answers = _shapes(outputs, answers)
    if not len(outputs):
        nan = float("nan")
        return LogitStats(0, nan, nan, nan, nan, nan, 0.0, 0.0, np.zeros(0))
    kl = kl_per_sample(outputs, answers)
    return LogitStats(
        samples=len(outputs), max_abs_err=float(max_abs_err_per_sample(outputs, answers).max()),
        kl_mean=float(kl.mean()), kl_p50=float(np.median(kl)), kl_p99=_nearest_rank(kl, 99), kl_max=float(kl.max()),
        top1_agreement=float(topk_agreement_per_sample(outputs, answers, 1).mean()),
        top5_agreement=float(topk_agreement_per_sample(outputs, answers, 5).mean()), kl=kl)
