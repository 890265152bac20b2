"""A Hugging Face checkpoint folder: config.json plus one or several safetensors files.

Tensors are memory-mapped by `safetensors.safe_open` (several MPI ranks on one node share the
page cache, nothing is read until used). Names on disk carry the `model.` prefix; it is
stripped. Experts may be stored per expert (the original Liquid layout, and what
`save_pretrained` writes) or pre-fused as transformers v5 holds them in memory:
    layers.{i}.feed_forward.experts.gate_up_proj  [E, 2*Im, H]  = cat(w1, w3) per expert
    layers.{i}.feed_forward.experts.down_proj     [E, H, Im]    = w2 per expert
Both are exposed under the per-expert names. `lm_head.weight` is tied to
the embedding and ignored.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from harness.checkpoints.base import Checkpoint, CheckpointError, expected_shapes
from harness.config import ConfigError, ModelConfig
from harness.checkpoints.safetensors_stream import INDEX_FILE, SINGLE_FILE

_FUSED_RE = re.compile(r"^(layers\.\d+\.feed_forward\.experts)\.(gate_up_proj|down_proj)$")
_IGNORED = {"lm_head.weight"}


def _strip(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


class HFCheckpoint(Checkpoint):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such checkpoint folder (expected config.json + *.safetensors; "
                                  "make a synthetic one with `python -m harness make-model`)")
        try:
            self.config = ModelConfig.from_json(self.path / "config.json")
        except ConfigError as e:
            raise CheckpointError(f"{self.path / 'config.json'}: {e}") from None
        self._handles = {f: self._open(f) for f in self._files()}
        # name -> (file, key on disk, selector); selector (expert, first row, end row) picks one
        # expert's weight out of a fused tensor, None for a tensor stored as is
        self._where: dict[str, tuple[str, str, tuple | None]] = {}
        self._fused_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._index_files()

    # ----- opening --------------------------------------------------------------------------
    def _files(self) -> list[str]:
        index = self.path / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e}); "
                                      "delete it if the folder holds a single model.safetensors") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.path / f).exists()]
            if missing:
                raise CheckpointError(f"{index} lists shard(s) that are not in the folder: {missing[:3]}"
                                      f"{' ...' if len(missing) > 3 else ''}; the download or copy is incomplete")
            self._weight_map = weight_map
            return files
        self._weight_map = None
        if (self.path / SINGLE_FILE).exists():
            return [SINGLE_FILE]
        files = sorted(p.name for p in self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors files (and no {INDEX_FILE})")
        return files

    def _open(self, file: str):
        p = self.path / file
        try:
            return safe_open(str(p), framework="pt")
        except Exception as e:  # the Rust error types are not importable as a stable API
            raise CheckpointError(f"{p}: cannot read this safetensors file ({type(e).__name__}: {e}); "
                                  "it is corrupt or truncated: copy or regenerate it") from None

    def _index_files(self) -> None:
        cfg = self.config
        E, Im, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        where_file: dict[str, str] = {}
        fused_bad: list[str] = []
        for file, h in self._handles.items():
            for key in h.keys():
                if self._weight_map is not None and self._weight_map.get(key) not in (None, file):
                    continue  # the index says this name lives in another shard
                name = _strip(key)
                shape = tuple(h.get_slice(key).get_shape())
                m = _FUSED_RE.match(name)
                if m:
                    prefix, kind = m.groups()
                    want = (E, 2 * Im, H) if kind == "gate_up_proj" else (E, H, Im)
                    if shape != want:
                        fused_bad.append(f"{name} in {file}: {shape} != {want}")
                        continue
                    # (per-expert name, rows of the fused [e] slice, shape)
                    parts = ([("w1", 0, Im, (Im, H)), ("w3", Im, 2 * Im, (Im, H))] if kind == "gate_up_proj"
                             else [("w2", 0, H, (H, Im))])
                    for e in range(E):
                        for w, lo, hi, shp in parts:
                            self._add(f"{prefix}.{e}.{w}.weight", file, key, (e, lo, hi), shp, shapes, where_file)
                elif name not in _IGNORED:
                    self._add(name, file, key, None, shape, shapes, where_file)
        if self._weight_map is not None:
            on_disk = {key for h in self._handles.values() for key in h.keys()}
            absent = [k for k in self._weight_map if k not in on_disk]
            if absent:
                raise CheckpointError(f"{self.path / INDEX_FILE} maps {len(absent)} tensor(s) to shards that do not "
                                      f"hold them, e.g. {absent[:3]}")
        if fused_bad:
            raise CheckpointError(f"{self.source}: fused expert tensor(s) with the wrong shape: {fused_bad[:3]}")
        try:
            self.validate_shapes(shapes)
        except CheckpointError as e:
            want = expected_shapes(cfg)
            files = sorted({where_file[n] for n in want if n in shapes and shapes[n] != want[n]})
            raise CheckpointError(f"{e}" + (f" (in {', '.join(files)})" if files else "")
                                  + f"; does {self.path / 'config.json'} describe these weights?") from None

    def _add(self, name, file, key, selector, shape, shapes, where_file) -> None:
        if name in self._where and self._where[name][2] is None and selector is not None:
            return  # a per-expert tensor wins over a fused copy of the same weight
        self._where[name] = (file, key, selector)
        shapes[name] = shape
        where_file[name] = file

    # ----- access ---------------------------------------------------------------------------
    def raw(self, name: str) -> torch.Tensor:
        try:
            file, key, sel = self._where[name]
        except KeyError:
            raise KeyError(f"{name} is not a tensor of {self.source}") from None
        if sel is None:
            return self._handles[file].get_tensor(key)
        t = self._fused_cache.get((file, key))
        if t is None:  # memory-mapped view: caching it costs no memory
            t = self._fused_cache[(file, key)] = self._handles[file].get_tensor(key)
        e, lo, hi = sel
        return t[e, lo:hi]

    def files(self) -> list[Path]:
        return [self.path / f for f in self._handles]

    def close(self) -> None:
        self._handles.clear()
        self._fused_cache.clear()
