"""The suite's parts: what each measures, on which shapes, with which samples, budgets and warm-ups.

A part is a list of groups; a group is one engine (dtype, rank count, options) that one mpiexec
job loads ONCE and runs several shapes on (harness.run.variant.run_group). Loading is the cost
that dominates on the H100: a job starts Python, imports torch, opens the 16.7 GB synthetic
checkpoint and builds the engine (~5-20 s: optimized ~8, hf ~19, phases 0-3 ~12-18), while the
fast engines' shapes time in about a second. Sample counts and budgets are per shape, chosen so
every variant meets the suite's minimum (prefill: 10 s timed or 256 samples; ladder at 16 tokens:
2 timed samples for phases 0-1; at 128 tokens one sample, no warm-up, since a phase 0 sample takes
~106 s there) and no more. The costs quoted are estimates from per-sample times and load_s on an H100, including the
reference's answers; `suite --help` adds the time each part took where results/ holds it.

Prompts: one seeded synthetic set per prompt length with the reference's fp32 answers on the GPU,
of JOB_SAMPLES prompts; a shape takes its first `samples`, so parts run in one session share the
reference's work through the cache.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from harness.engines.base import PHASE_ENGINES
from harness.measure.routing import SKEW_70

JOB_SAMPLES = {1: 64, 16: 1024, 128: 64, 512: 256}  # prompts per cached prompt set, per length
LADDER_BATCH = 1024  # one cap for every phase, so each (seq_len, ranks) is one speedup group
GREEDY_PROMPTS = 64  # decode: prompts whose reference greedy tokens are computed


@dataclass(frozen=True)
class Shape:
    seq_len: int
    batch: int  # most samples per forward call
    samples: int
    budget_s: float
    warmup: int
    nvml_interval_s: float = 0.1  # 1 s for the minute-long forwards: their records and plots stay small


@dataclass(frozen=True)
class Group:
    engine: str
    dtype: str | None  # None: the engine's own (phases: fp32)
    ranks: int
    shapes: tuple[Shape, ...]
    options: tuple[tuple[str, object], ...] = ()  # engine options, e.g. (("expert_parallel", True),)
    label: str | None = None  # variant-name suffix telling these runs from the same shapes without the options
    workload: str = "prefill"
    max_new_tokens: int = 32
    profile_ops: bool = False  # after its timed region, one forward (or decode step) per shape under torch.profiler (report: where the time goes)

    @property
    def name(self) -> str:
        return "-".join([self.engine] + ([self.dtype] if self.dtype else []) + [f"r{self.ranks}"]
                        + ([self.label] if self.label else []))


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    cost: str  # how long it takes on one H100, loading included
    groups: tuple[Group, ...]
    skew: float = 0.0
    kind: str = "throughput"  # or "accuracy"
    notes: tuple[str, ...] = field(default=())


def _peers(dtype: str, shapes: tuple[Shape, ...], profile: bool = False) -> tuple[Group, Group]:
    """optimized and hf on the same shapes; with `profile` the optimized engine's kernels are profiled."""
    return Group("optimized", dtype, 1, shapes, profile_ops=profile), Group("hf", dtype, 1, shapes)


def _ladder(seq_len: int, ranks: tuple[int, ...] = (1, 2)) -> Part:
    """Phases 0-5 in fp32 at the given rank counts, and phase 5 at 2 ranks with expert parallelism.

    At 128 tokens one job per rank count: phases 0 and 1 alone time ~390 s there, so both rank
    counts with their 13 loads (~10 min) would not fit one part's 10 minutes."""
    def shape(phase: int, ranks: int) -> Shape:
        if phase <= 3:  # re-upload weights every forward: ~10 s (phase 0, 16 tokens) to ~106 s (128)
            slow = seq_len >= 128
            return Shape(seq_len, LADDER_BATCH, samples=ranks if slow else 2, budget_s=1.0 if slow else 120.0,
                         warmup=0 if slow else 1, nvml_interval_s=1.0)
        if phase == 4:  # ~4 samples/s; one sample per call up to max_batch 8
            return Shape(seq_len, LADDER_BATCH, samples=64 if seq_len < 128 else 16, budget_s=5.0, warmup=1)
        # phase 5: ~124 samples/s at 16 tokens, ~16 at 128, all of a rank's samples in one call
        return Shape(seq_len, LADDER_BATCH, samples=256 if seq_len < 128 else 32, budget_s=10.0, warmup=1)
    groups = [Group(engine, None, r, (shape(phase, r),)) for r in ranks for phase, engine in enumerate(PHASE_ENGINES)]
    if 2 in ranks:
        groups.append(Group("phase5", None, 2, (shape(5, 2),), options=(("expert_parallel", True),), label="ep"))
    if seq_len >= 128:
        slow = {1: "~106 and ~79 s for phases 0 and 1", 2: "~108 and ~98 s for phases 0 and 1 (a sample per rank)"}
        cost = f"~{4 if ranks == (1,) else 5} min: {'; '.join(slow[r] for r in ranks)}, plus {len(groups)} loads"
    else:
        cost = f"~6 min: {len(groups)} jobs of ~12 s load; phases 0-1 ~10 s a sample"
    where = " and ".join(f"{r} rank{'s' if r > 1 else ''}" for r in ranks)
    ep = ", and phase 5 at 2 ranks with expert_parallel=true" if 2 in ranks else ""
    name = f"ladder-{seq_len}" + ("" if ranks == (1, 2) else "-" + "".join(f"r{r}" for r in ranks))
    return Part(name, f"phases 0-5 (fp32) at {seq_len} tokens, {where} on one GPU{ep}: samples/s and the speedup "
                f"of each phase", cost, tuple(groups))


LADDERS = (_ladder(16), _ladder(128, (1,)), _ladder(128, (2,)))

PREFILL = Part(
    "prefill", "optimized beside hf in the same run: bf16 1x16, 64x16, 8x512, 16x512 and fp32 64x16 (tokens/s, "
    "% of the floor)", "~3 min: 4 loads (optimized, hf; bf16 and fp32), ~15 s of timed forwards",
    _peers("bf16", (Shape(16, 1, 256, 10.0, 3), Shape(16, 64, 1024, 10.0, 3), Shape(512, 8, 256, 10.0, 3),
                    Shape(512, 16, 256, 10.0, 3)), profile=True)
    + _peers("fp32", (Shape(16, 64, 1024, 10.0, 3),), profile=True))

PREFILL_SKEW = Part(
    "prefill-skew", f"the prefill headline shapes (bf16 64x16, 8x512) on the synthetic model made with make-model "
    f"--skew {SKEW_70:g}, where the busiest quarter of the experts takes ~70 % of the routed tokens",
    "~2-3 min: generating the skewed 16.7 GB checkpoint (~40-75 s), its answers, 2 loads",
    _peers("bf16", (Shape(16, 64, 1024, 10.0, 3), Shape(512, 8, 256, 10.0, 3))), skew=SKEW_70,
    notes=(f"skew {SKEW_70:g}: the busiest quarter of the experts takes ~70 % of the routed slots, measured on the "
           "reference's routing of the `small` preset (python -m harness.measure.routing)",))

# Batch 64 runs 4 generations, so its TTFT is a median, not one sample (hf ~4.6 s each, inside the 30 s budget).
DECODE = Part(
    "decode", "generation beside hf: batch 1 and batch 64 prompts of 16 tokens, 64 new tokens each (TTFT, "
    "inter-token latency, % of the decode floor; batch 64 over 4 generations); greedy tokens checked against the "
    "reference for 32 steps on the first 64 prompts",
    "~3.5 min: the reference's greedy tokens for 64 prompts, 2 loads; hf takes ~6.5 s per batch-1 prompt and "
    "~4.6 s per batch-64 generation",
    tuple(replace(g, workload="generate", max_new_tokens=64) for g in
          _peers("bf16", (Shape(16, 1, 8, 10.0, 1), Shape(16, 64, 256, 30.0, 1)), profile=True)))

ACCURACY = Part(
    "accuracy", "bf16 engines against the fp32 reference on 256 prompts of 16 tokens and 128 of 512: max abs error, "
    "KL divergence, top-1 and top-5 agreement, optimized beside hf",
    "~1 min: 2 loads, every prompt runs (no budget cut)",
    _peers("bf16", (Shape(16, 64, 256, 120.0, 1), Shape(512, 16, 128, 120.0, 1))), kind="accuracy")

# (seq_len, batch): 16 to 16,384 tokens per forward, then the 1-token prompt last, the shape furthest from
# what the engines' prefill paths are tuned for (a failure that poisons the engine costs only itself)
SWEEP_SHAPES = ((16, 1), (16, 4), (16, 16), (16, 64), (512, 4), (512, 8), (512, 16), (512, 32), (1, 1))
SWEEP = Part(
    "sweep", "tokens per forward from 1 to 16,384 (batch x seq_len) for optimized and hf in bf16: the roofline "
    "against the compute and weight-streaming floors",
    "~1 min: 2 loads, 9 shapes each of ~2 s timed after 2 warm-ups",
    _peers("bf16", tuple(Shape(s, b, min(JOB_SAMPLES[s], max(4 * b, 64)), 2.0, 2) for s, b in SWEEP_SHAPES)))

PARTS: dict[str, Part] = {p.name: p for p in (*LADDERS, PREFILL, PREFILL_SKEW, DECODE, ACCURACY, SWEEP)}


def fingerprint(part: Part) -> str:
    """A short hash of what the part measures (its groups with their shapes, options and workloads,
    its checkpoint's skew, its kind), not of how it is described: part.json keeps it, so `suite --help`
    can tell a published part measured under another definition."""
    return hashlib.sha256(repr((part.groups, part.skew, part.kind)).encode()).hexdigest()[:12]


def smoke(part: Part) -> Part:
    """The part with the `reference` engine standing in for every engine on the CPU and a few
    samples per shape: the whole flow (jobs, groups, records, report, part.json) in seconds, for
    tests. Every group keeps its own variant names (the planned engine becomes part of the label)."""
    groups = []
    for g in part.groups:
        label = "-".join(["as", g.engine] + ([g.dtype] if g.dtype else []) + ([g.label] if g.label else []))
        shapes = tuple(replace(s, samples=min(s.samples, 4), budget_s=5.0, warmup=min(s.warmup, 1)) for s in g.shapes)
        groups.append(replace(g, engine="reference", dtype=None, options=(), label=label, shapes=shapes,
                              max_new_tokens=min(g.max_new_tokens, 4)))
    return replace(part, groups=tuple(groups))
