"""Synthetic checkpoints: random weights of the right shapes, so every engine can run without
the real 16.7 GB download.

Each tensor is a pure function of (seed, name) (a torch.Generator seeded by a hash of both), so
tensors can be generated in any order, one at a time, and the same seed always gives the same
bytes. Values follow a usual init so activations keep realistic magnitudes:
    linear weights, embedding, router gate   normal(0, 0.02)
    RMSNorm weights (incl. q/k layernorm)    1 + normal(0, 0.05)
    conv.conv.weight                         uniform(+-1/sqrt(k)), nn.Conv1d's init for fan_in k=3
    expert_bias (float32)                    normal(0, 0.05) + skew profile
Weights are generated in fp32 and rounded to bf16 like the real checkpoint; expert_bias stays fp32.
`skew` > 0 adds skew * linspace(1, 0) to expert_bias over a per-layer random order of experts,
so a few experts win most top-k slots (realistic load imbalance for expert-parallel tests).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm import tqdm

from harness.atomic import write_json_atomic
from harness.checkpoints.base import Checkpoint, DictCheckpoint, expected_shapes, keeps_fp32
from harness.config import ModelConfig, get_preset
from harness.checkpoints.prefetch import prefetched
from harness.checkpoints.safetensors_stream import INDEX_FILE, SINGLE_FILE, SafetensorsStreamWriter, TensorSpec
from harness.checkpoints.staging import staged_folder

GENERATOR_VERSION = 1  # bump when the values change, so cached folders are regenerated
MARKER = "synthetic.json"  # names the parameters and every file's size: what is_complete checks
_CHUNK = 1 << 22  # fp32 values generated per step (16 MiB): bounds the scratch memory


def _generator(seed: int, name: str, purpose: str = "values") -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}\0{name}\0{purpose}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _fill(out: torch.Tensor, g: torch.Generator, draw) -> torch.Tensor:
    """Fill `out` chunk by chunk with fp32 values from draw(buffer, g), rounded to out's dtype."""
    flat = out.view(-1)
    buf = torch.empty(min(_CHUNK, flat.numel()), dtype=torch.float32)
    for start in range(0, flat.numel(), _CHUNK):
        b = buf[: min(_CHUNK, flat.numel() - start)]
        draw(b, g)
        flat[start:start + b.numel()].copy_(b)
    return out


def _skew_profile(cfg: ModelConfig, name: str, seed: int, skew: float) -> torch.Tensor:
    E = cfg.num_experts
    order = torch.randperm(E, generator=_generator(seed, name, "skew-order"))
    profile = torch.zeros(E, dtype=torch.float32)
    profile[order] = skew * torch.linspace(1.0, 0.0, E)
    return profile


def synthetic_tensor(cfg: ModelConfig, name: str, seed: int, skew: float = 0.0) -> torch.Tensor:
    """One tensor, determined by (seed, name) and, for expert_bias, skew."""
    shape = expected_shapes(cfg)[name]
    g = _generator(seed, name)
    if keeps_fp32(name):
        t = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.05, generator=g)
        return t + _skew_profile(cfg, name, seed, skew) if skew else t
    out = torch.empty(shape, dtype=torch.bfloat16)
    if name.endswith("norm.weight"):  # operator/ffn/embedding norms and q/k_layernorm
        return _fill(out, g, lambda b, g: b.normal_(0.0, 0.05, generator=g).add_(1.0))
    if name.endswith("conv.conv.weight"):
        bound = 1.0 / math.sqrt(cfg.conv_L_cache)
        return _fill(out, g, lambda b, g: b.uniform_(-bound, bound, generator=g))
    return _fill(out, g, lambda b, g: b.normal_(0.0, 0.02, generator=g))


class SyntheticCheckpoint(Checkpoint):
    """Generates each tensor on request and keeps nothing: any model size, memory of one tensor."""

    def __init__(self, cfg: ModelConfig, seed: int = 0, skew: float = 0.0):
        self.config, self.seed, self.skew = cfg, seed, skew
        self.source = f"synthetic:{cfg.name}:seed={seed}:skew={skew:g}"

    def raw(self, name: str) -> torch.Tensor:
        return synthetic_tensor(self.config, name, self.seed, self.skew)


def synthetic_checkpoint(cfg: ModelConfig, seed: int = 0, skew: float = 0.0) -> DictCheckpoint:
    """All tensors in memory (small presets and tests)."""
    lazy = SyntheticCheckpoint(cfg, seed, skew)
    return DictCheckpoint(cfg, {n: lazy.raw(n) for n in lazy.names()}, source=lazy.source)


def _marker(cfg: ModelConfig, seed: int, skew: float) -> dict:
    return {"preset": cfg.name, "seed": seed, "skew": skew, "dtype": "bfloat16", "expert_bias_dtype": "float32",
            "generator_version": GENERATOR_VERSION, "config": cfg.to_hf_dict()}


def write_synthetic(cfg: ModelConfig, out_dir: str | Path, seed: int = 0, skew: float = 0.0,
                    shard_bytes: int | None = 5 * 2**30, progress: bool = True) -> Path:
    """Write a Hugging Face folder (config.json, safetensors with `model.` names, per-expert
    layout, synthetic.json) one tensor at a time. transformers' from_pretrained loads it.
    The folder is written under a temporary name and replaces `out_dir` whole when complete
    (harness.checkpoints.staging): an interrupted write leaves `out_dir` as it was."""
    out = Path(out_dir)
    src = SyntheticCheckpoint(cfg, seed, skew)
    shapes = expected_shapes(cfg)
    specs = [TensorSpec("model." + n, s, torch.float32 if keeps_fp32(n) else torch.bfloat16) for n, s in shapes.items()]
    total = sum(s.nbytes for s in specs)
    with staged_folder(out) as tmp:
        with SafetensorsStreamWriter(tmp, specs, shard_bytes, metadata={"synthetic_seed": str(seed)}) as w, \
                tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=f"synthetic {cfg.name}") as bar:
            for (spec, n), t in prefetched(lambda sn: src.raw(sn[1]), list(zip(specs, shapes))):
                w.write(spec.name, t)
                bar.update(spec.nbytes)
                del t
        files = w.files + ([INDEX_FILE] if len(w.files) > 1 else [])
        write_json_atomic(tmp / "config.json", cfg.to_hf_dict())
        marker = _marker(cfg, seed, skew) | {"total_size": total,
                                             "files": {f: (tmp / f).stat().st_size for f in files}}
        write_json_atomic(tmp / MARKER, marker)
    return out


def is_complete(folder: Path, cfg: ModelConfig, seed: int, skew: float) -> bool:
    """True when `folder` holds a finished write_synthetic of exactly these parameters."""
    try:
        m = json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if {k: m.get(k) for k in _marker(cfg, seed, skew)} != _marker(cfg, seed, skew):
        return False
    files = m.get("files") or {}
    if SINGLE_FILE not in files and INDEX_FILE not in files:
        return False
    return (folder / "config.json").exists() and all(
        (folder / f).exists() and (folder / f).stat().st_size == size for f, size in files.items())


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("LFM2_CACHE") or Path.home() / ".cache" / "lfm2-infer")


def cache_folder(preset: str, seed: int = 0, skew: float = 0.0, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / f"{preset}-seed{seed}-skew{skew:g}-bf16"


@contextlib.contextmanager
def _locked(lock_path: Path):
    """Serialise generation of one folder between processes (e.g. MPI ranks on one node)."""
    import fcntl
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_synthetic(preset: str, seed: int = 0, skew: float = 0.0, cache_dir: str | Path | None = None,
                     progress: bool = True, force: bool = False, shard_bytes: int | None = 5 * 2**30) -> Path:
    """The synthetic folder for (preset, seed, skew) in the cache, generated on first use.

    Cache: `cache_dir`, else $LFM2_CACHE, else ~/.cache/lfm2-infer. A folder without a matching
    marker (an interrupted or older generation) is regenerated.
    """
    cfg = get_preset(preset)
    folder = cache_folder(preset, seed, skew, cache_dir)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if force or not is_complete(folder, cfg, seed, skew):
            write_synthetic(cfg, folder, seed=seed, skew=skew, shard_bytes=shard_bytes, progress=progress)
    return folder
