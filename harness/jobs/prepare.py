"""Everything a measurement needs on disk before any rank starts: a checkpoint, inputs.bin and
(unless validation is off) answers.bin.

  * No --data: a seeded synthetic prompt set with the reference's answers, made once per
    (model, samples, seq_len, seed) and cached under <cache>/jobs/ ($LFM2_CACHE or
    ~/.cache/lfm2-infer, as the synthetic checkpoints).
  * --data without --answers: the reference computes the answers once and caches them next to
    the data, in a file named for the model (`inputs.answers-<model id>.bin`), so another model
    never validates against them.
  * Beside the answers, the bf16 gate's calibration (harness.jobs.gate: the reference run in bf16 on
    the first prompts), `<answers stem>.gate-<model id>-bf16.json`, made once. Another low
    precision (fp16) is calibrated by the first variant that needs it (harness.run.outputs).
The reference runs here, in the launching process, not inside the timed ranks.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UsageError
from harness.jobs.files import JobFileError, read_inputs


@dataclass(frozen=True)
class PreparedJob:
    model: str  # checkpoint path the ranks open
    model_label: str  # how reports name it
    inputs: Path
    answers: Path | None
    samples: int  # samples the variants are asked to run (first N of inputs.bin)
    seq_len: int
    greedy_answers: Path | None = None  # generate workload: the reference's greedy tokens (.npy)


def model_id(model_path: str | Path) -> str:
    """A short name that changes when the checkpoint does: folder name + hash of its files'
    paths, sizes and modification times (cheap: no weight is read)."""
    p = Path(model_path).resolve()
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    h = hashlib.sha1(str(p).encode())
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return f"{p.name}-{h.hexdigest()[:10]}"


def _cache_jobs_root() -> Path:
    from harness.checkpoints.synthetic import cache_root
    return cache_root() / "jobs"


def synthetic_job_folder(model_path: str | Path, samples: int, seq_len: int, data_seed: int = 0) -> Path:
    """Where the seeded prompt set and its answers for this model are cached."""
    return _cache_jobs_root() / model_id(model_path) / f"n{samples}-s{seq_len}-seed{data_seed}"


def cached_answers_path(data: str | Path, model_path: str | Path) -> Path:
    """Where the reference's answers for a user's inputs.bin are cached: beside it, named for the model."""
    data = Path(data)
    return data.with_name(f"{data.stem}.answers-{model_id(model_path)}.bin")


def synthetic_job(model_path: str, model_label: str, samples: int, seq_len: int, data_seed: int = 0,
                  validate: bool = True) -> PreparedJob:
    """The cached seeded prompt set (and answers) for this model; made on first use."""
    from harness.checkpoints.open import open_checkpoint
    from harness.jobs.files import make_job
    from harness.checkpoints.synthetic import _locked  # the same inter-process lock the checkpoint cache uses

    folder = synthetic_job_folder(model_path, samples, seq_len, data_seed)
    inputs, answers = folder / "inputs.bin", folder / "answers.bin"
    with _locked(folder.parent / f".{folder.name}.lock"):
        if inputs.exists():  # make_job writes answers first: inputs.bin present = complete
            pass
        elif validate:
            make_job(open_checkpoint(model_path), samples, seq_len, data_seed, folder)
            release_gpu_cache()
        else:  # the same prompts, without paying for the reference (kept apart: no answers)
            from harness.config import ModelConfig
            from harness.jobs.files import synthetic_prompts, write_inputs
            cfg = ModelConfig.from_json(model_path) if Path(model_path).is_dir() else open_checkpoint(model_path).config
            inputs = folder.with_name(folder.name + "-no-answers") / "inputs.bin"
            if not inputs.exists():
                write_inputs(inputs, synthetic_prompts(cfg.vocab_size, samples, seq_len, data_seed, cfg.bos_token_id))
    if validate:
        gate_calibration(model_path, inputs, answers, PREPARED_GATE_DTYPE)
    return PreparedJob(model_path, model_label, inputs, answers if validate else None, samples, seq_len)


def file_job(model_path: str, model_label: str, data: str | Path, answers: str | Path | None,
             samples: int | None, validate: bool = True) -> PreparedJob:
    """A user's inputs.bin; answers given, cached next to it, or computed now by the reference."""
    data = Path(data)
    if not data.is_file():
        raise UsageError(f"--data {data}: no such file (an inputs.bin: int32 n, int32 seq_len, ids); "
                         "make one with `python -m harness make-data`, or leave --data out for a synthetic set")
    tokens = read_inputs(data)
    n, seq_len = tokens.shape
    if samples is not None and samples > n:
        raise UsageError(f"--samples {samples} but {data} holds only {n} samples")
    samples = n if samples is None else samples
    if not validate:
        return PreparedJob(model_path, model_label, data, None, samples, seq_len)
    if answers is not None:
        answers = Path(answers)
        if not answers.is_file():
            raise UsageError(f"--answers {answers}: no such file (an answers.bin: int32 n, int32 vocab, float32 "
                             "logits); leave it out and the reference computes them")
    else:
        answers = cached_answers_path(data, model_path)
        if not answers.exists():
            _write_reference_answers(model_path, tokens, answers)
    gate_calibration(model_path, data, answers, PREPARED_GATE_DTYPE)
    return PreparedJob(model_path, model_label, data, answers, samples, seq_len)


PREPARED_GATE_DTYPE = "bf16"  # the dtype the optimized and hf engines run by default


def gate_calibration(model_path: str, inputs: str | Path, answers: str | Path, dtype: str, device: str | None = None):
    """The low-precision gate's calibration for `dtype` on these answers (harness.jobs.gate), read
    from beside them or made now: -> (Calibration, a note saying which); (None, None) for a dtype
    the fp32 contract judges."""
    from harness.jobs import gate
    if gate.low_precision(dtype) is None:
        return None, None
    made = gate.cached_calibration(answers, inputs, model_path, model_id(model_path), dtype, device)
    release_gpu_cache()
    return made


def _write_reference_answers(model_path: str, tokens: np.ndarray, out: Path) -> None:
    from harness.checkpoints.open import open_checkpoint
    from harness.jobs.files import reference_answers, write_logits

    ckpt = open_checkpoint(model_path)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= ckpt.config.vocab_size):
        raise JobFileError(f"token ids outside the model's vocabulary [0, {ckpt.config.vocab_size})")
    write_logits(out, reference_answers(ckpt, tokens, desc=f"reference answers for {out.name}"))  # atomic
    release_gpu_cache()


def release_gpu_cache() -> None:
    """The reference may have run on the GPU in this process: hand its memory back before the
    measured ranks start on the same GPU."""
    import sys
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


GREEDY_CHECKED_STEPS = 32  # generated tokens must equal the reference's for these steps


def greedy_answers_path(inputs: Path, model_path: str | Path, samples: int, max_new_tokens: int) -> Path:
    """Where the reference's greedy tokens for these prompts are cached: beside the inputs."""
    steps = min(max_new_tokens, GREEDY_CHECKED_STEPS)
    return inputs.with_name(f"{inputs.stem}.greedy-{model_id(model_path)}-n{samples}-t{steps}.npy")


def with_greedy_answers(job: PreparedJob, max_new_tokens: int) -> PreparedJob:
    """The job plus the reference's greedy tokens for its prompts (cached beside the inputs)."""
    import dataclasses

    steps = min(max_new_tokens, GREEDY_CHECKED_STEPS)
    out = greedy_answers_path(job.inputs, job.model, job.samples, max_new_tokens)
    if not out.exists():
        import torch

        from harness.checkpoints.open import open_checkpoint
        from harness.engines.reference import WeightCache
        from harness.engines.reference_generate import reference_generate

        ckpt = open_checkpoint(job.model)
        prompts = read_inputs(job.inputs, ckpt.config.vocab_size)[:job.samples]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float64 if device == "cpu" else torch.float32
        torch.backends.cuda.matmul.allow_tf32 = False
        # the upcast weights stay cached: fp32 on a GPU (33 GB at full size) fits; the CPU runs small presets
        tokens = np.stack(reference_generate(ckpt, list(prompts), steps, dtype=dtype, device=device,
                                             cache=WeightCache()).tokens)
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, tokens)
        tmp.replace(out)
        release_gpu_cache()
    return dataclasses.replace(job, greedy_answers=out)
