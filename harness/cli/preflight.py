"""Checks `run` and `compare` make before anything is generated, written or launched.

Each problem found is one line, all of them at once, exit status 2, and nothing on disk has
changed. What is checked:
  * the checkpoint given with --model opens: config, every file present and whole;
  * --data: every token id inside the model's vocabulary (the first one outside is named with
    its sample and position), --samples no more than it holds; --answers: as many samples as
    --data, the model's vocabulary, and the size its header promises;
  * the engines can run here: GPU engines with no GPU visible get one message for all of them,
    --device cpu is refused for engines that are CUDA kernels, --workload generate for engines
    that do not generate, hf for a model.bin;
  * the job fits: disk for a synthetic checkpoint still to be written, memory for the reference
    answers still to be computed on the CPU and for the CPU engines' weights in every rank, and
    GPU memory for the engines that hold the whole model on their GPU (optimized, hf on a GPU),
    with the ranks that share one GPU counted together.
"""
from __future__ import annotations

import functools
from pathlib import Path

from harness.errors import UsageError

CPU_ENGINES = ("reference", "hf")  # the others are CUDA kernels: a GPU or nothing
GB = 1e9


class PreflightError(UsageError):
    """Everything that stops the job from starting, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\nerror: ".join(problems))


def preflight(args, engines: list[str], ranks: list[int], seq_lens: list[int], command: str) -> None:
    problems: list[str] = []
    cfg = _model_config(args, problems)
    if cfg is not None:
        n_data = _check_data(args, cfg, problems)
        _check_fit(args, cfg, engines, max(ranks), seq_lens, n_data, problems)
    _check_engines(args, engines, command, problems)
    if problems:
        raise PreflightError(problems)


# ---- the model ----------------------------------------------------------------------------------
def _model_config(args, problems: list[str]):
    from harness.checkpoints.base import CheckpointError
    from harness.config import ConfigError, get_preset
    if not args.model:
        return get_preset(args.preset)
    from harness.checkpoints.open import open_checkpoint
    try:
        return open_checkpoint(args.model).config
    except (CheckpointError, ConfigError) as e:
        problems.append(f"--model {args.model}: {e}")
        return None


# ---- the job's files ----------------------------------------------------------------------------
def _check_data(args, cfg, problems: list[str]) -> int | None:
    """Samples in --data (None without it)."""
    if not args.data:
        return None
    from harness.jobs.files import JobFileError, logits_shape, read_inputs
    try:
        n = len(read_inputs(args.data, cfg.vocab_size))
    except JobFileError as e:
        problems.append(f"--data: {e}")
        return None
    if args.samples is not None and args.samples > n:
        problems.append(f"--samples {args.samples}: {args.data} holds only {n} samples")
    if args.answers:
        try:
            an, am = logits_shape(args.answers)
        except JobFileError as e:
            problems.append(f"--answers: {e}")
            return n
        if an != n:
            problems.append(f"--answers {args.answers} holds {an} samples but --data {args.data} holds {n}: they "
                            "are not the answers of these inputs (leave --answers out and the reference computes them)")
        if am != cfg.vocab_size:
            problems.append(f"--answers {args.answers} has {am} logits per sample but the model's vocabulary is "
                            f"{cfg.vocab_size}: they are another model's answers")
    return n


# ---- the engines ---------------------------------------------------------------------------------
def _check_engines(args, engines: list[str], command: str, problems: list[str]) -> None:
    gpu_only = [e for e in engines if e not in CPU_ENGINES]
    if args.device == "cpu" and gpu_only:
        problems.append(f"--device cpu: {_names(gpu_only)} {_verb(gpu_only, 'runs', 'run')} only on a GPU (CUDA "
                        "kernels); --device cpu applies to reference and hf")
    if args.workload == "generate":
        from harness.engines.base import engine_class
        cannot = [e for e in engines if not getattr(engine_class(e), "supports_generation", False)]
        if cannot:
            problems.append(f"--workload generate: {_names(cannot)} {_verb(cannot, 'does', 'do')} not generate; the "
                            "engines that do: reference, hf, optimized")
    if "hf" in engines and args.model and not (Path(args.model) / "config.json").is_file():
        problems.append(f"hf loads a Hugging Face folder (config.json + safetensors), not {args.model}; make one "
                        "with `python -m harness make-model --format hf`")
    need_gpu = [e for e in engines if e not in CPU_ENGINES or args.device == "gpu"]
    if args.device == "cpu" or not need_gpu or args.hostfile:  # other hosts may have the GPUs this one lacks
        return
    if not _gpu_here():
        instead = ("--engine reference" if command == "run" else "--phases none --engines reference")
        problems.append(f"no GPU is visible on this machine (check nvidia-smi and CUDA_VISIBLE_DEVICES) and "
                        f"{_names(need_gpu)} {_verb(need_gpu, 'needs', 'need')} one: run on a GPU machine, or measure "
                        f"the CPU engines here with `{instead}`")


def _names(engines: list[str]) -> str:
    return ", ".join(engines)


def _verb(engines: list[str], one: str, several: str) -> str:
    return one if len(engines) == 1 else several


def _gpu_here() -> bool:
    return bool(_gpu_sizes())


@functools.lru_cache(maxsize=1)
def _gpu_sizes() -> tuple[int, ...]:
    """Each visible GPU's total memory (asked of the driver once per process)."""
    from harness.run.ranks import gpu_memory_bytes
    return tuple(gpu_memory_bytes())


# ---- memory and disk -------------------------------------------------------------------------------
def _check_fit(args, cfg, engines: list[str], ranks: int, seq_lens: list[int], n_data: int | None,
               problems: list[str]) -> None:
    from harness.measure.machine import available_memory_bytes, free_disk_bytes
    from harness.measure.model_stats import model_stats
    params = model_stats(cfg).total_params
    model_folder = _synthetic_folder(args) if not args.model else None
    smaller = "use --preset small or --preset tiny" if not args.model else "use a smaller checkpoint"
    unwritten = model_folder is not None and not _complete(model_folder, args)  # a synthetic model still to make
    if unwritten:
        need, free = params * 2, free_disk_bytes(model_folder.parent)  # bf16 weights
        if need > free:
            problems.append(f"the synthetic {cfg.name} checkpoint takes {need / GB:.1f} GB in {model_folder.parent}, "
                            f"which has {free / GB:.1f} GB free: {smaller}, or point LFM2_CACHE at a larger disk")
    needs = []  # (bytes, what takes them); the jobs run one after the other, so the largest counts
    if _answers_to_compute(args, seq_lens, model_folder, unwritten, n_data) and not _gpu_here():
        needs.append((params * 8, "computing the reference answers on the CPU (float64 weights)"))
    if not args.hostfile:  # across hosts, each holds only its own ranks
        for engine in engines:
            per_rank = _cpu_weight_bytes(engine, args, params)
            if per_rank:
                needs.append((per_rank * ranks, f"{engine} on {ranks} rank(s) ({per_rank / GB:.1f} GB of weights "
                                                "each)"))
    avail = available_memory_bytes()
    if needs and avail is not None:
        need, what = max(needs, key=lambda n: n[0])  # the first of equals: the answers come first
        if need > avail:
            problems.append(f"{what} needs {need / GB:.1f} GB of memory and this machine has {avail / GB:.1f} GB "
                            f"available: {smaller}, fewer ranks, or a machine with a GPU")
    if not args.hostfile:  # (a hostfile's GPUs are not this machine's)
        _check_gpu_fit(args, engines, ranks, params, smaller, problems)


def _check_gpu_fit(args, engines: list[str], ranks: int, params: int, smaller: str, problems: list[str]) -> None:
    """Refuse what cannot fit: the weights alone (a lower bound of what the engine allocates) of the
    ranks that share a GPU (round-robin, harness.run.ranks.select_gpu) against its total memory (an
    upper bound of what it can give). Nothing to check on a machine without a GPU."""
    sizes = _gpu_sizes()
    if not sizes:
        return
    per_gpu = -(-ranks // len(sizes))  # the busiest GPU's ranks
    for engine in engines:
        per_rank, dtype = _gpu_weight_bytes(engine, args, params)
        if per_rank and per_rank * per_gpu > min(sizes):
            where = "this machine's one GPU" if len(sizes) == 1 else f"one of the {len(sizes)} GPUs here"
            share = f"{per_gpu} ranks share {where}: " if per_gpu > 1 else ""
            fixes = [f for f, ok in (("fewer ranks (--ranks)", per_gpu > 1), ("--dtype bf16", dtype == "fp32"),
                                     (smaller, True)) if ok]
            problems.append(f"{engine} holds {per_rank / GB:.1f} GB of {dtype} weights on its GPU per rank; "
                            f"{share}{per_rank * per_gpu / GB:.1f} GB against {min(sizes) / GB:.1f} GB of GPU "
                            f"memory: {', '.join(fixes)}")


def _gpu_weight_bytes(engine: str, args, params: int) -> tuple[int, str]:
    """Bytes of weights one rank of `engine` keeps on its GPU, all of the model, and their dtype (0:
    the engine streams what does not fit, runs on the CPU, or its residency is its own plan)."""
    from harness.measure.floors import WEIGHT_BYTES
    dtype = args.dtype or "bf16"
    on_gpu = engine == "optimized" or engine == "hf" and args.device != "cpu"
    if not on_gpu or dtype not in WEIGHT_BYTES:
        return 0, dtype
    return params * WEIGHT_BYTES[dtype], dtype


def _synthetic_folder(args) -> Path:
    from harness.checkpoints.synthetic import cache_folder
    return cache_folder(args.preset, args.seed, args.skew)


def _complete(folder: Path, args) -> bool:
    from harness.checkpoints.synthetic import is_complete
    from harness.config import get_preset
    return is_complete(folder, get_preset(args.preset), args.seed, args.skew)


def _answers_to_compute(args, seq_lens: list[int], model_folder: Path | None, unwritten: bool,
                        n_data: int | None) -> bool:
    """Will the reference run in this process (answers or greedy tokens not cached yet)?"""
    if args.no_validate or args.answers and args.workload != "generate":
        return False
    from harness.cli.job_args import DEFAULT_SAMPLES
    from harness.jobs.prepare import cached_answers_path, greedy_answers_path, synthetic_job_folder
    model = Path(args.model).resolve() if args.model else model_folder
    if model is None or unwritten:
        return True  # the model is not written yet, so nothing computed from it is cached
    if args.data:
        data = Path(args.data).resolve()
        inputs = [(data, args.samples or n_data or 0)]
        missing = not args.answers and not cached_answers_path(data, model).exists()
    else:
        n = args.samples or DEFAULT_SAMPLES
        inputs = [(synthetic_job_folder(model, n, s, args.data_seed) / "inputs.bin", n) for s in seq_lens]
        missing = any(not path.exists() for path, _ in inputs)
    if args.workload == "generate":
        missing = missing or any(not greedy_answers_path(path, model, n, args.max_new_tokens).exists()
                                 for path, n in inputs)
    return missing


def _cpu_weight_bytes(engine: str, args, params: int) -> int:
    """Bytes of weights one rank of a CPU engine holds in memory (0: the engine runs on a GPU)."""
    if engine == "reference" and args.device != "gpu":
        return params * (4 if args.dtype == "fp32" else 8)  # upcast once and cached, float64 by default
    if engine == "hf" and (args.device == "cpu" or args.device == "auto" and not _gpu_here()):
        return params * (4 if args.dtype == "fp32" else 2)
    return 0
