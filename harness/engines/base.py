"""The one interface the harness drives every variant through, and the registry of variants.

An engine is built once from a checkpoint and a device, then asked for the last-position logits
of batches of prompts. The harness times `forward` calls between barriers; everything an engine
does at construction (weight upload for resident engines, kernel compilation) is load time.

The timed loop hands each batch's rows of one output array made before the clock to
`forward_into` (inside `outputs_held(array)`), so an engine that can copy its logits straight
into them spares the host its copies. Engines that keep caches also generate (`prefill`,
`decode`; `supports_generation`).
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Counters:
    """Data movement and allocation an engine did, accumulated until `reset`.

    Every host<->device copy and every device allocation an engine makes is counted here (the
    GPU runtime's transfer layer does it), so the harness can report PCIe bytes per sample.
    """
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    h2d_pinned_bytes: int = 0
    d2h_pinned_bytes: int = 0
    h2d_copies: int = 0
    d2h_copies: int = 0
    h2d_seconds: float = 0.0
    d2h_seconds: float = 0.0
    device_allocs: int = 0
    device_alloc_bytes: int = 0
    weight_h2d_bytes: int = 0  # the part of h2d_bytes that was model weights
    extra: dict = field(default_factory=dict)

    def reset(self) -> None:
        fresh = Counters()
        self.__dict__.update(fresh.__dict__)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


class Engine:
    """Base class. Subclasses set `name`, `phase`, `dtype` and implement `forward`."""

    name = "engine"
    phase: int | None = None  # 0..5 for the roadmap phases, None otherwise
    dtype = "fp32"
    supports_generation = False
    # Largest number of prompts the engine takes in one forward. 1 means the harness feeds
    # one sample per call (the baseline pattern); engines that batch raise it.
    max_batch = 1

    def __init__(self, checkpoint, device: int | str = 0, **options):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.device = device
        self.options = options
        self.counters = Counters()

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: int32 [batch, seq_len] -> float32 [batch, vocab] last-position logits."""
        raise NotImplementedError

    def forward_into(self, tokens: np.ndarray, out: np.ndarray) -> None:
        """forward's logits written into `out` (float32 [batch, vocab], rows of the caller's array);
        engines that can put them there without a host copy override it."""
        out[:] = np.asarray(self.forward(tokens), dtype=np.float32).reshape(out.shape)

    def outputs_held(self, array: np.ndarray):
        """A context inside which every forward_into's `out` lies in `array` (the timed loop's
        output rows): an engine may page-lock it for the while, so its copies land there directly."""
        return contextlib.nullcontext()

    def touched_experts(self, tokens: np.ndarray) -> list[int] | None:
        """How many distinct experts the engine's own router picked in each MoE layer for one
        forward of `tokens` (run outside any timing), or None where the engine cannot say. The
        harness turns it into the bytes that forward had to read (its weight-streaming floor)."""
        return None

    # ----- generation (engines with supports_generation = True) ----------------------------------
    def prefill(self, prompts: np.ndarray) -> np.ndarray:
        """Start generating: prompts int32 [batch, prompt_len] -> last-position logits [batch, vocab],
        keeping each sequence's KV cache and conv state for `decode`."""
        raise NotImplementedError(f"engine {self.name!r} does not generate (only prefill)")

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """One step: the next token of every sequence, int32 [batch] -> logits [batch, vocab]."""
        raise NotImplementedError(f"engine {self.name!r} does not generate (only prefill)")

    def profile(self, tokens: np.ndarray, on_gpu: bool) -> list[dict]:
        """One forward of `tokens` under torch.profiler: its GPU kernels (on_gpu) or torch ops, by
        time (harness.measure.op_profile). Engines whose forward replays a CUDA graph override this to
        profile the same launches eagerly."""
        from harness.measure.op_profile import profile_ops
        return profile_ops(lambda: self.forward(tokens), on_gpu, self.synchronize)

    def profile_decode(self, prompts: np.ndarray, on_gpu: bool) -> list[dict]:
        """Prefill `prompts`, then one greedy decode step under torch.profiler: its GPU kernels
        (on_gpu) or torch ops, by time. Engines whose step replays a CUDA graph override this to
        profile the same launches eagerly."""
        from harness.measure.op_profile import profile_ops
        first = np.asarray(self.prefill(prompts)).argmax(1).astype(np.int32)
        return profile_ops(lambda: self.decode_greedy(first), on_gpu, self.synchronize)

    def decode_greedy(self, tokens: np.ndarray) -> np.ndarray:
        """One step that returns each sequence's argmax token (int32 [batch]) instead of its logits;
        engines that can choose on the device override it (fewer bytes back per step)."""
        return np.asarray(self.decode(tokens)).argmax(1).astype(np.int32)

    def synchronize(self) -> None:
        """Block until all device work this engine queued has finished (no-op on the CPU)."""

    def close(self) -> None:
        """Release device memory; the engine is unusable afterwards."""


# Engine name -> "module:Class". Imported lazily so the CPU-only engines never import PyCUDA.
ENGINES: dict[str, str] = {
    "reference": "harness.engines.reference_engine:ReferenceEngine",
    "hf": "harness.engines.hf:HFEngine",
    "baseline": "baseline.engine:BaselineEngine",
    "phase1": "phases.phase1.engine:Phase1Engine",
    "phase2": "phases.phase2.engine:Phase2Engine",
    "phase3": "phases.phase3.engine:Phase3Engine",
    "phase4": "phases.phase4.engine:Phase4Engine",
    "phase5": "phases.phase5.engine:Phase5Engine",
    "optimized": "optimized.engine:OptimizedEngine",
}
PHASE_ENGINES = ["baseline", "phase1", "phase2", "phase3", "phase4", "phase5"]  # index = phase


class UnknownEngine(ValueError):
    pass


def engine_class(name: str):
    if name == "phase0":
        name = "baseline"
    if name not in ENGINES:
        raise UnknownEngine(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)} (or phase0 = baseline)")
    module, cls = ENGINES[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            raise UnknownEngine(f"engine {name!r} is not built yet (no module {module})") from None
        raise
    return getattr(mod, cls)
