"""Run one suite part into results/<gpu>/<part>/, nothing half-written.

The part's jobs run into a hidden folder beside the results (results/.<part>.partial-<pid>); when
every group has run, the report and part.json are written there, the mpiexec specs and the logs of
groups that ran cleanly are dropped (the records carry what a reader needs; a failed group keeps
its logs), and the folder is renamed into place. An existing part folder is replaced only with
--force, and only at that rename.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import time
from pathlib import Path

from harness.errors import UsageError
from harness.jobs.prepare import PreparedJob
from harness.report.part_meta import PartMeta
from harness.report.records import VariantRecord
from harness.suite.parts import GREEDY_PROMPTS, JOB_SAMPLES, Group, Part, fingerprint, smoke

PRESET, SMOKE_PRESET = "lfm2-8b-a1b", "tiny"
GROUP_TIMEOUT_S = 480.0  # a hung job must not eat a 10-minute device call; the slowest group takes ~130 s


def gpu_folder(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-40GB' -> 'a100', a CPU -> 'cpu'; else a slug."""
    if device_name.lower().startswith("cpu"):
        return "cpu"
    model = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name.upper().replace("-", " "))
    if model:
        return model.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown"


def this_device(smoke_run: bool) -> str:
    """The name of the GPU the part will measure (or the CPU's, for --smoke)."""
    if smoke_run:
        from harness.report.records import cpu_name
        return cpu_name()
    import torch
    if not torch.cuda.is_available():
        raise UsageError("no GPU visible to torch: the suite measures GPU engines. On a CPU machine, "
                         "`python -m harness suite --smoke` runs the same flow with the reference standing in")
    return torch.cuda.get_device_name(0)


def part_folder(out: Path, part: Part, device: str) -> Path:
    return Path(out) / gpu_folder(device) / part.name


def part_command(part: Part, smoke_run: bool) -> str:
    return shlex.join(["python", "-m", "harness", "suite", "--part", part.name] + (["--smoke"] if smoke_run else []))


def _model(part: Part, smoke_run: bool) -> tuple[str, str]:
    from harness.checkpoints.synthetic import cached_synthetic
    preset = SMOKE_PRESET if smoke_run else PRESET
    path = str(Path(cached_synthetic(preset, seed=0, skew=part.skew)).resolve())
    return path, f"synthetic {preset} (seed 0{f', skew {part.skew:g}' if part.skew else ''})"


def _jobs(part: Part, model: str, label: str, smoke_run: bool) -> dict[tuple[int, str], PreparedJob]:
    """One cached prompt set per (prompt length, workload), with the reference's answers (and, for
    generate, its greedy tokens); shapes take their first `samples`."""
    from harness.jobs.prepare import synthetic_job, with_greedy_answers
    need: dict[tuple[int, str], int] = {}
    for g in part.groups:
        for s in g.shapes:
            key = (s.seq_len, g.workload)
            need[key] = max(need.get(key, 0), s.samples)
    jobs = {}
    for (seq_len, workload), n in sorted(need.items()):
        size = n if smoke_run else max(n, JOB_SAMPLES.get(seq_len, n))
        job = synthetic_job(model, label, size, seq_len)
        if workload == "generate":
            new = max(g.max_new_tokens for g in part.groups if g.workload == "generate")
            # the reference generates prompt by prompt (~1 s each at full size): its tokens for the first
            # GREEDY_PROMPTS only; a shape with more prompts is checked on those (harness.run.generate)
            job = with_greedy_answers(dataclasses.replace(job, samples=min(GREEDY_PROMPTS, size)), new)
        jobs[seq_len, workload] = job
    return jobs


def _members(group: Group, jobs, part_name: str, device: str):
    from harness.run.variant import RunSettings, Variant
    members = []
    for s in group.shapes:
        job = dataclasses.replace(jobs[s.seq_len, group.workload], samples=s.samples)
        settings = RunSettings(run_id=part_name, budget_s=s.budget_s, warmup=s.warmup, device=device,
                               options=dict(group.options), workload=group.workload,
                               max_new_tokens=group.max_new_tokens, timeout_s=GROUP_TIMEOUT_S,
                               nvml_interval_s=s.nvml_interval_s, profile_ops=group.profile_ops)
        members.append((Variant(group.engine, s.seq_len, group.ranks, s.batch, group.dtype, label=group.label), job, settings))
    return members


def _routing_note(part: Part, model: str, jobs, smoke_run: bool) -> list[str]:
    """A skewed part measures how uneven its checkpoint routes (the reference, first 64 prompts)."""
    if not part.skew:
        return []
    import numpy as np
    import torch

    from harness.checkpoints.open import open_checkpoint
    from harness.jobs.files import read_inputs
    from harness.jobs.prepare import release_gpu_cache
    from harness.measure.routing import layer_shares
    job = jobs[min(seq for seq, _ in jobs), "prefill"]
    tokens = read_inputs(job.inputs)[:64]
    device = "cuda" if (torch.cuda.is_available() and not smoke_run) else "cpu"
    shares = layer_shares(open_checkpoint(model), tokens, device)
    release_gpu_cache()
    return [f"routing on this checkpoint (reference, {len(tokens)} prompts of {tokens.shape[1]} tokens): the busiest "
            f"quarter of the experts took {100 * np.mean(list(shares.values())):.1f} % of the routed slots (mean "
            f"over {len(shares)} MoE layers, {100 * min(shares.values()):.0f}-{100 * max(shares.values()):.0f} %)"]


def _prune(folder: Path, records_by_group: dict[str, list[VariantRecord]]) -> None:
    """Keep records, report and part.json; logs only of groups with a failure."""
    shutil.rmtree(folder / "specs", ignore_errors=True)
    logs = folder / "logs"
    for name, records in records_by_group.items():
        if not any(r.error for r in records):
            for f in logs.glob(f"{name}.*"):  # its files, and the folder of its ranks' status
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
    if logs.is_dir() and not any(logs.iterdir()):
        logs.rmdir()


def _repoint(records: Path, tmp: Path, final: Path) -> None:
    """Failure messages name the job's logs under the hidden folder; point them where they will be."""
    pairs = [(str(tmp.resolve()), str(final.resolve())), (str(tmp), str(final))]  # absolute first
    for path in records.glob("*.json"):
        text = path.read_text()
        fixed = text
        for old, new in pairs:
            fixed = fixed.replace(old, new)
        if fixed != text:
            path.write_text(fixed)


def _move_into_place(tmp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old)


def check_free(out: Path, parts: list[Part], device: str, force: bool) -> None:
    taken = [part_folder(out, p, device) for p in parts if part_folder(out, p, device).exists()]
    if taken and not force:
        raise UsageError(f"{', '.join(map(str, taken))} already exist(s); give --force to measure again and replace "
                         "them (git keeps the old ones), or --out another folder")


def run_part(planned: Part, out: Path, device: str, smoke_run: bool = False, say=print) -> tuple[Path, list]:
    """Measure one part; -> (its folder, its records). The caller checked the folder is free."""
    from harness.report.html import write_report
    from harness.report.records import git_commit
    from harness.run.variant import run_group

    part = smoke(planned) if smoke_run else planned
    t0 = time.time()
    model, label = _model(part, smoke_run)
    for stale in Path(out).glob(f".{part.name}.partial-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(out) / f".{part.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        say(f"{part.name}: preparing prompts and the reference's answers ({label})")
        jobs = _jobs(part, model, label, smoke_run)
        notes = list(part.notes) + _routing_note(part, model, jobs, smoke_run)
        by_group, records, roles = {}, [], {}
        for i, (want, group) in enumerate(zip(planned.groups, part.groups)):
            say(f"{part.name}: [{i + 1}/{len(part.groups)}] {group.name}: {len(group.shapes)} shape(s) on one load")
            members = _members(group, jobs, part.name, "cpu" if smoke_run else "auto")
            # what the headline compares: the engine and dtype the part planned (a stand-in ran in a smoke run)
            roles.update({v.name: {"role": want.engine, "dtype": want.dtype or "fp32", "label": want.label}
                          for v, _, _ in members})
            got = run_group(members, tmp, group.name)
            by_group[group.name] = got
            records += got
            for r in got:
                say(f"    {r.variant}: " + (f"FAILED ({r.error.strip().splitlines()[0]})" if r.error else
                                           f"{r.samples} samples, {r.tokens_per_s or 0:,.1f} tokens/s"))
        from harness.checkpoints.open import open_checkpoint
        meta = PartMeta(part=part.name, what=planned.what, command=part_command(planned, smoke_run),
                        commit=git_commit(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        device=device, duration_s=round(time.time() - t0, 1), model=label,
                        model_config=open_checkpoint(model).config.to_hf_dict(), kind=part.kind,
                        roles=roles, notes=notes, smoke=smoke_run, definition=fingerprint(planned))
        meta.write(tmp)
        final = part_folder(out, part, device)
        _repoint(tmp / "records", tmp, final)
        write_report([tmp])
        _prune(tmp, by_group)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, records


def commit_warning() -> str | None:
    """Why results/README.md could not name the code measured, or None."""
    from harness.report.records import git_commit
    commit = git_commit()
    if commit is None:
        return ("no git commit found (no .git here?): set LFM2_GIT_COMMIT to the commit of this tree, or "
                "results/README.md cannot say which code was measured")
    if commit.endswith("+dirty"):
        return (f"the tree differs from commit {commit[:-6]} (tracked files changed): commit first, so the "
                "published commit is the code measured")
    return None
