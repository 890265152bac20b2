"""The job's files, exactly as the original program defines them, synthetic prompt sets, and validation.

inputs.bin:              int32 num_samples, int32 seq_len, then num_samples*seq_len int32 ids
outputs.bin/answers.bin: int32 num_samples, int32 vocab_size, then float32 logits (last position)
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOLERANCE = 1e-3  # absolute, per logit (the original program's check)


class JobFileError(ValueError):
    """A job file that is missing, truncated or inconsistent."""


def _atomic_write(path: Path, header: np.ndarray, body: np.ndarray) -> None:
    """Write to a temp file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.astype("<i4").tobytes())
            f.write(np.ascontiguousarray(body).tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _header(path: Path, what: str) -> tuple[int, int]:
    """(n, m) from the 8-byte header, after checking that the file holds exactly n x m values."""
    path = Path(path)
    if not path.is_file():
        raise JobFileError(f"no {what} file at {path}; make one with `python -m harness make-data`")
    size = path.stat().st_size
    if size < 8:
        raise JobFileError(f"{path} is {size} bytes: too short for the 8-byte header of a {what} file")
    with open(path, "rb") as f:
        n, m = (int(v) for v in np.frombuffer(f.read(8), "<i4"))
    if n < 0 or m <= 0:
        raise JobFileError(f"{path}: header says {n} x {m}, which is not a valid {what} file")
    want = 8 + 4 * n * m
    if size != want:
        raise JobFileError(f"{path}: header says {n} x {m} values ({want} bytes) but the file has "
                           f"{size} bytes (truncated or not a {what} file)")
    return n, m


def _read(path: Path, body_dtype: str, what: str) -> tuple[int, int, np.ndarray]:
    n, m = _header(path, what)
    raw = Path(path).read_bytes()
    return n, m, np.frombuffer(raw[8:], body_dtype).reshape(n, m).copy()


def logits_shape(path) -> tuple[int, int]:
    """(num_samples, vocab_size) of an answers.bin or outputs.bin, checked against its size,
    without reading the logits."""
    return _header(path, "logits")


def write_inputs(path, tokens: np.ndarray) -> None:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise JobFileError(f"tokens must be [num_samples, seq_len], got shape {tokens.shape}")
    _atomic_write(path, np.array(tokens.shape), tokens.astype("<i4"))


def read_inputs(path, vocab_size: int | None = None) -> np.ndarray:
    """int32 [num_samples, seq_len]; with vocab_size, ids outside [0, vocab) are rejected."""
    n, s, ids = _read(path, "<i4", "inputs")
    if vocab_size is not None and ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(np.argmax((ids < 0) | (ids >= vocab_size)))
        raise JobFileError(f"{path}: token id {ids.flat[bad]} (sample {bad // s}, position {bad % s}) "
                           f"is outside the model's vocabulary [0, {vocab_size})")
    return ids.astype(np.int32)


def write_logits(path, logits: np.ndarray) -> None:
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2:
        raise JobFileError(f"logits must be [num_samples, vocab], got shape {logits.shape}")
    _atomic_write(path, np.array(logits.shape), logits.astype("<f4"))


def read_logits(path) -> np.ndarray:
    return _read(path, "<f4", "logits")[2]


def synthetic_prompts(vocab_size: int, num_samples: int, seq_len: int | tuple[int, int], seed: int = 0,
                      bos_token_id: int | None = 1) -> list[np.ndarray] | np.ndarray:
    """Seeded random prompts. A fixed seq_len gives an int32 [n, S] array (the job's shape);
    a (min, max) range gives a list of int32 arrays of lengths drawn uniformly from it.
    Ids avoid the special tokens below 8 except a leading BOS, like real chat prompts."""
    rng = np.random.default_rng(seed)
    low = min(8, vocab_size - 1)

    def one(length: int) -> np.ndarray:
        ids = rng.integers(low, vocab_size, size=length, dtype=np.int64).astype(np.int32)
        if bos_token_id is not None and length:
            ids[0] = bos_token_id
        return ids

    if isinstance(seq_len, tuple):
        lo, hi = seq_len
        return [one(int(L)) for L in rng.integers(lo, hi + 1, size=num_samples)]
    return np.stack([one(seq_len) for _ in range(num_samples)]) if num_samples else np.zeros((0, seq_len), np.int32)


@dataclass(frozen=True)
class Validation:
    valid: bool
    max_abs_err: float
    top1_agreement: float  # fraction of samples whose argmax matches
    samples: int
    invalid_rows: tuple = ()  # rows (of the arrays given) with any logit beyond tol or not finite

    def __str__(self) -> str:
        beyond = f", {len(self.invalid_rows)} of {self.samples} samples beyond tolerance" if self.invalid_rows else ""
        return (f"{'VALID' if self.valid else 'INVALID'} (max abs err {self.max_abs_err:.3g}, "
                f"top-1 {100 * self.top1_agreement:.1f}% over {self.samples} samples{beyond})")


def validate(outputs: np.ndarray, answers: np.ndarray, tol: float = TOLERANCE) -> Validation:
    """VALID when every logit is within `tol` (absolute) of the answer; NaN is never valid: the job's
    contract, which judges fp32 engines (bf16 and fp16 ones are judged by harness.jobs.gate). The
    samples beyond tolerance are named, so a rare failure (e.g. two experts' router scores tied
    within rounding: `python -m harness explain`) can be told from a broken engine."""
    outputs, answers = np.asarray(outputs, np.float32), np.asarray(answers, np.float32)
    if outputs.shape != answers.shape:
        raise JobFileError(f"outputs {outputs.shape} and answers {answers.shape} differ in shape")
    if outputs.size == 0:
        return Validation(False, float("nan"), 0.0, 0)
    err = np.abs(outputs.astype(np.float64) - answers)
    max_err = float(np.nanmax(err)) if not np.isnan(err).all() else float("nan")
    finite = bool(np.isfinite(err).all())
    bad_rows = ~(err <= tol).all(axis=1)  # NaN compares false, so a NaN row is bad
    top1 = float(np.mean(outputs.argmax(1) == answers.argmax(1)))
    return Validation(finite and max_err <= tol, max_err if finite else float("inf"), top1, len(outputs),
                      tuple(int(i) for i in np.flatnonzero(bad_rows)))


def reference_answers(ckpt, tokens: np.ndarray, device: str | None = None, progress: bool = True,
                      desc: str = "reference answers") -> np.ndarray:
    """The reference's last-position logits for every prompt: float64 on the CPU, or float32 on a
    GPU (TF32 off) when one is present. Either is far inside the 1e-3 contract except at a router
    near-tie, where any two fp32 implementations may pick different experts (docs/usage.md,
    near-ties; `harness explain` tells those samples from bugs). Batches of about 4,096 tokens go
    through together; upcast weights stay cached between batches."""
    import torch
    from tqdm import tqdm

    from harness.engines.reference import WeightCache, reference_logits

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float64 if device == "cpu" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cache = WeightCache()
    tokens = np.asarray(tokens)
    step = max(1, 4096 // max(1, tokens.shape[1]))
    answers = np.zeros((len(tokens), ckpt.config.vocab_size), np.float32)
    with tqdm(total=len(tokens), desc=f"{desc} ({device}, {dtype})", disable=not progress, unit="sample") as bar:
        for lo in range(0, len(tokens), step):
            answers[lo:lo + step] = reference_logits(ckpt, tokens[lo:lo + step], dtype=dtype, device=device,
                                                     cache=cache)
            bar.update(len(tokens[lo:lo + step]))
    cache.tensors.clear()
    return answers


def make_job(ckpt, num_samples: int, seq_len: int, seed: int, out_dir, device: str | None = None,
             progress: bool = True) -> tuple[Path, Path]:
    """Write inputs.bin and answers.bin (the reference's logits) for a seeded prompt set."""
    out_dir = Path(out_dir)
    tokens = synthetic_prompts(ckpt.config.vocab_size, num_samples, seq_len, seed, ckpt.config.bos_token_id)
    answers = reference_answers(ckpt, tokens, device, progress)
    inputs_path, answers_path = out_dir / "inputs.bin", out_dir / "answers.bin"
    write_logits(answers_path, answers)  # answers first: inputs.bin present means the job is complete
    write_inputs(inputs_path, tokens)
    return inputs_path, answers_path
