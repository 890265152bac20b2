"""Write safetensors files one tensor at a time, so a model larger than memory can be saved.

The `safetensors` library writes a whole dict of tensors at once; the 8.3B-parameter model does
not fit beside everything else in memory, so this module writes the format by hand:
    8-byte little-endian header length N, N bytes of JSON header (padded with spaces to a
    multiple of 8), then the tensors' bytes back to back in header order.
The header needs every tensor's offset, so the caller declares all tensors (name, shape, dtype)
up front; the writer then takes the tensors in that order and holds at most the one it is given.
Reading stays with the library (`safetensors.safe_open`).

Output is either one `model.safetensors` or shards `model-0000k-of-0000N.safetensors` with a
`model.safetensors.index.json` (weight_map, metadata.total_size), as Hugging Face writes them.
Everything is written under temporary names in the destination and renamed at the end; on error
the temporary files are removed, so a failed write leaves nothing half-written.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: list[TensorSpec], shard_bytes: int | None) -> list[list[TensorSpec]]:
    """Greedy split in order: a shard closes before the tensor that would push it past shard_bytes
    (a tensor larger than shard_bytes gets a shard of its own)."""
    if shard_bytes is None:
        return [list(specs)]
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def _header_bytes(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for s in specs:
        if s.dtype not in DTYPE_NAMES:
            raise ValueError(f"{s.name}: dtype {s.dtype} cannot be stored in safetensors")
        header[s.name] = {"dtype": DTYPE_NAMES[s.dtype], "shape": [int(d) for d in s.shape],
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer pads so the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsStreamWriter:
    """Declare all tensors, then `write` them in that order; `close` commits, `abort` cleans up.

    Use as a context manager: leaving the block normally commits, an exception aborts.
    shard_bytes=None (or a model that fits in one shard) gives a single `model.safetensors`.
    On commit, safetensors files of an earlier write in the same folder that this write does
    not replace (other shard counts, a stale index) are removed, so the folder stays consistent.
    """

    def __init__(self, out_dir: str | Path, specs: list[TensorSpec], shard_bytes: int | None = None,
                 metadata: dict[str, str] | None = None):
        self.out_dir = Path(out_dir)
        self.specs = list(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names")
        if shard_bytes is not None and shard_bytes <= 0:
            raise ValueError("shard_bytes must be positive")
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(self.specs, shard_bytes)
        n = len(self.shards)
        self.files = [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self.total_size = sum(s.nbytes for s in self.specs)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = [self.out_dir / f".{f}.partial-{os.getpid()}" for f in self.files]
        self._shard = -1  # index of the open shard
        self._pos = 0  # position within that shard's specs
        self._fh = None
        self._expected_end = 0
        self._done = False

    # ----- writing ------------------------------------------------------------------------
    def _open_next_shard(self) -> None:
        self._close_shard()
        self._shard += 1
        self._pos = 0
        header = _header_bytes(self.shards[self._shard], self.metadata)
        self._fh = open(self._tmp[self._shard], "wb")
        self._fh.write(header)
        self._expected_end = len(header) + sum(s.nbytes for s in self.shards[self._shard])

    def _close_shard(self) -> None:
        if self._fh is not None:
            size = self._fh.tell()
            self._fh.close()
            self._fh = None
            if size != self._expected_end:
                raise RuntimeError(f"internal error: {self._tmp[self._shard]} has {size} bytes, "
                                   f"expected {self._expected_end}")

    def next_spec(self) -> TensorSpec | None:
        """The tensor `write` expects next (None when all are written)."""
        shard, pos = self._shard, self._pos
        if shard < 0 or pos >= len(self.shards[shard]):
            shard, pos = shard + 1, 0
        return self.shards[shard][pos] if shard < len(self.shards) else None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._done:
            raise RuntimeError("writer already closed")
        spec = self.next_spec()
        if spec is None:
            raise ValueError(f"{name}: all declared tensors were already written")
        if name != spec.name:
            raise ValueError(f"tensors must come in declared order: expected {spec.name}, got {name}")
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, declared {spec.shape} {spec.dtype}")
        if self._shard < 0 or self._pos >= len(self.shards[self._shard]):
            self._open_next_shard()
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._pos += 1

    # ----- finishing ----------------------------------------------------------------------
    def close(self) -> list[Path]:
        """Check every tensor was written, move the files into place, write the index."""
        if self._done:
            return [self.out_dir / f for f in self.files]
        try:
            if self.next_spec() is not None:
                raise ValueError(f"closed before all tensors were written (next: {self.next_spec().name})")
            self._close_shard()
            index_tmp = None
            if len(self.files) > 1:
                index = {"metadata": {"total_size": self.total_size},
                         "weight_map": {s.name: f for f, shard in zip(self.files, self.shards) for s in shard}}
                index_tmp = self.out_dir / f".{INDEX_FILE}.partial-{os.getpid()}"
                self._tmp.append(index_tmp)
                index_tmp.write_text(json.dumps(index, indent=2) + "\n")
        except BaseException:
            self.abort()
            raise
        for tmp, f in zip(self._tmp, self.files):
            os.replace(tmp, self.out_dir / f)
        if index_tmp is not None:
            os.replace(index_tmp, self.out_dir / INDEX_FILE)
        self._done = True
        self._remove_stale(keep=set(self.files) | ({INDEX_FILE} if index_tmp else set()))
        return [self.out_dir / f for f in self.files]

    def _remove_stale(self, keep: set[str]) -> None:
        for p in self.out_dir.iterdir():
            stale = p.name == SINGLE_FILE or p.name == INDEX_FILE or _SHARD_RE.match(p.name)
            if stale and p.name not in keep:
                p.unlink()

    def abort(self) -> None:
        """Remove every temporary file; the destination keeps whatever it held before."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for tmp in self._tmp:
            tmp.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> "SafetensorsStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
