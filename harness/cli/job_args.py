"""The options `run` and `compare` share (model, data, budget, MPI), their parsing and checks.

Every check raises UsageError with a message that says what to type instead, and happens before
any model is generated or any rank is started.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from harness.cli.model_args import add_model_args, model_path
from harness.cli.run_folder import add_run_folder_args
from harness.engines.base import ENGINES, PHASE_ENGINES, UnknownEngine
from harness.errors import UsageError

DEFAULT_SAMPLES = 32
DEFAULT_SEQ_LEN = 16
DEFAULT_BUDGET_S = 60.0


# ---- value parsers ---------------------------------------------------------------------------
def parse_phases(text: str) -> list[int]:
    """'0-5', '0,2,4', '3', 'none' -> phase numbers (0..5, ranges ascending)."""
    text = text.strip().lower()
    if text in ("", "none"):
        return []
    phases: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            a, b = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part), int(part))
        except ValueError:
            raise UsageError(f"--phases {text!r}: expected a range like 0-5, a list like 0,2,4, a single "
                             "phase like 3, or 'none'") from None
        if a > b:
            raise UsageError(f"--phases {text}: the range {a}-{b} runs backwards; write {b}-{a}")
        chunk = list(range(a, b + 1))
        bad = [p for p in chunk if not 0 <= p < len(PHASE_ENGINES)]
        if bad:
            raise UsageError(f"--phases {text}: phase {bad[0]} does not exist; phases are 0..{len(PHASE_ENGINES) - 1}")
        phases += [p for p in chunk if p not in phases]
    return phases


def parse_int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    """'16,128,512' -> [16, 128, 512], each >= minimum."""
    out = []
    for part in str(text).split(","):
        try:
            v = int(part.strip())
        except ValueError:
            raise UsageError(f"{flag} {text!r}: expected whole numbers separated by commas, e.g. 1,2,4") from None
        if v < minimum:
            raise UsageError(f"{flag} {text}: {v} is too small (at least {minimum})")
        if v not in out:
            out.append(v)
    return out


def check_engine(name: str) -> str:
    if name != "phase0" and name not in ENGINES:
        raise UnknownEngine(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)} (or phase0 = baseline)")
    return "baseline" if name == "phase0" else name


def parse_options(items: list[str] | None) -> dict:
    """['threads=4', 'name=x'] -> {'threads': 4, 'name': 'x'} (values read as JSON when they parse)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def at_least(flag: str, value, minimum):
    if value is not None and value < minimum:
        raise UsageError(f"{flag} {value}: must be at least {minimum}")
    return value


# ---- the shared options ----------------------------------------------------------------------
def add_job_args(p: argparse.ArgumentParser, batch_default: int | None = None) -> None:
    add_model_args(p)
    d = p.add_argument_group("data (default: a seeded synthetic prompt set with reference answers, cached)")
    d.add_argument("--data", metavar="INPUTS_BIN", help="the job's inputs.bin (int32 n, int32 seq_len, ids); "
                   "its seq_len is used, so --seq-len must not be given with it")
    d.add_argument("--answers", metavar="ANSWERS_BIN", help="reference logits for --data (default: computed "
                   "once by the reference and cached next to the data)")
    d.add_argument("--samples", type=int, help=f"number of samples (default: {DEFAULT_SAMPLES}, or all of --data)")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic prompts (default: 0)")
    d.add_argument("--no-validate", action="store_true", help="skip answers entirely (valid is left empty)")
    m = p.add_argument_group("measurement")
    m.add_argument("--batch", type=int, default=batch_default,
                   help="most samples per forward call (default: " + (str(batch_default) if batch_default else
                   "each engine's max_batch") + "); engines that take fewer get fewer")
    m.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help="timed-region budget per variant in seconds: a slow variant runs as many whole batches "
                        "as fit (at least one) and is reported over those (default: %(default)g)")
    m.add_argument("--warmup", type=int, default=3, help="untimed forwards of sample 0 first (default: 3)")
    m.add_argument("--workload", choices=["prefill", "generate"], default="prefill",
                   help="prefill: the job's last-position logits (default); generate: greedy prefill + "
                        "decode with caches, measuring time to first token and inter-token latency "
                        "(engines that generate: reference, hf, optimized)")
    m.add_argument("--max-new-tokens", type=int, default=32,
                   help="generate: new tokens per prompt (default: %(default)s); the first 32 are checked "
                        "against the reference's greedy tokens")
    m.add_argument("--dtype", help="engine dtype option, e.g. fp32, bf16 (default: the engine's own)")
    m.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where engines run: auto = the reference on the CPU, others on a GPU when there is one")
    m.add_argument("--profile-ops", action="store_true",
                   help="after the timed region, run one more forward (with --workload generate: one decode step "
                        "after a prefill) under torch.profiler and record its GPU kernels (or CPU ops) by time: "
                        "report.html's 'Where the time goes'; timings are unaffected")
    m.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="extra engine constructor option (repeatable; VALUE read as JSON when it parses)")
    r = p.add_argument_group("MPI and output")
    r.add_argument("--hostfile", help="passed to mpiexec (-f for MPICH, --hostfile for Open MPI) to span nodes")
    r.add_argument("--mpiexec-args", metavar="ARGS", help="extra mpiexec options, one quoted string "
                   "(e.g. \"--mca btl self,vader\" for Open MPI); the flavour's own needs are added already")
    r.add_argument("--timeout-s", type=float, help="kill a variant's mpiexec after this long "
                   "(default: budget + 1800 s for load and warm-up)")
    add_run_folder_args(r)


def check_job_args(args) -> None:
    at_least("--samples", args.samples, 1)
    at_least("--batch", args.batch, 1)
    at_least("--warmup", args.warmup, 0)
    at_least("--max-new-tokens", args.max_new_tokens, 1)
    if args.budget_s <= 0:
        raise UsageError(f"--budget-s {args.budget_s:g}: must be positive")
    if args.timeout_s is not None and args.timeout_s <= 0:
        raise UsageError(f"--timeout-s {args.timeout_s:g}: must be positive")
    if args.answers and not args.data:
        raise UsageError("--answers needs --data (the answers belong to a given inputs.bin)")
    if args.data and not Path(args.data).is_file():
        raise UsageError(f"--data {args.data}: no such file; make one with `python -m harness make-data` or "
                         "leave --data out to use a synthetic prompt set")
    if args.answers and not Path(args.answers).is_file():
        raise UsageError(f"--answers {args.answers}: no such file")
    if args.hostfile and not Path(args.hostfile).is_file():
        raise UsageError(f"--hostfile {args.hostfile}: no such file")
    if args.model and not Path(args.model).exists():
        raise UsageError(f"--model {args.model}: no such file or folder (a Hugging Face folder or a model.bin; "
                         "make one with `python -m harness make-model`, or use --preset)")


def prepare_jobs(args, seq_lens: list[int] | None):
    """seq_len -> PreparedJob: the given --data, or one cached synthetic set per seq_len."""
    from harness.jobs.prepare import file_job, synthetic_job
    # Absolute paths: the ranks may start in another working directory (mpiexec, other nodes).
    path = str(Path(model_path(args)).resolve())
    label = args.model or f"synthetic {args.preset} (seed {args.seed}{f', skew {args.skew:g}' if args.skew else ''})"
    validate = not args.no_validate
    if args.data:
        answers = Path(args.answers).resolve() if args.answers else None
        job = file_job(path, label, Path(args.data).resolve(), answers, args.samples, validate)
        if args.workload == "generate" and validate:
            from harness.jobs.prepare import with_greedy_answers
            job = with_greedy_answers(job, args.max_new_tokens)
        return {job.seq_len: job}
    n = args.samples or DEFAULT_SAMPLES
    jobs = {s: synthetic_job(path, label, n, s, args.data_seed, validate) for s in seq_lens}
    if args.workload == "generate" and validate:
        from harness.jobs.prepare import with_greedy_answers
        jobs = {s: with_greedy_answers(job, args.max_new_tokens) for s, job in jobs.items()}
    return jobs


def settings_from(args):
    from harness.run.variant import RunSettings
    return RunSettings(run_id=args.run_id, budget_s=args.budget_s, warmup=args.warmup, device=args.device,
                       options=parse_options(args.option),
                       hostfile=str(Path(args.hostfile).resolve()) if args.hostfile else None, timeout_s=args.timeout_s,
                       mpiexec_args=shlex.split(args.mpiexec_args or ""),
                       outputs=getattr(args, "outputs", None), workload=args.workload,
                       max_new_tokens=args.max_new_tokens, profile_ops=args.profile_ops)
