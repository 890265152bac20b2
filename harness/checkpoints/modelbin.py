"""The original program's `model.bin`: a tensor table, then float32 data.

Layout (little-endian, as the original program reads it):
    uint32 num_tensors
    per tensor: uint32 name_len, name bytes (HF name without `model.`), uint32 ndim,
                uint32 dims[ndim], uint64 offset (absolute, of its data), uint64 size (bytes)
    float32 data at those offsets
The file is memory-mapped once (np.memmap: ranks on one node share the page cache) and each
tensor is a torch view of it. The format has no config: a `config.json` beside the file is used
when present, otherwise the config is inferred from the tensor table (`infer_config`).
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.checkpoints.base import Checkpoint, CheckpointError, expected_shapes
from harness.checkpoints.prefetch import prefetched
from harness.config import ATTENTION, CONV, ConfigError, ModelConfig, get_preset

_MAX_TENSORS = 1_000_000  # far above the real 2302: a bigger count means a file of another format
_DATA_ALIGN = 64  # the writer starts the data here; offsets are absolute, so readers need not care


class _Reader:
    """Bounds-checked reads from the start of the file, for the tensor table."""

    def __init__(self, path: Path, fh):
        self.path, self.fh = path, fh

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        b = self.fh.read(n)
        if len(b) != n:
            raise CheckpointError(f"{self.path}: tensor table is truncated (file ends at byte {self.fh.tell()}); "
                                  "the file is incomplete or not a model.bin")
        return struct.unpack(fmt, b)


def read_table(path: Path) -> dict[str, tuple[tuple[int, ...], int, int]]:
    """name -> (dims, offset, size) with every entry checked against the file size."""
    file_size = path.stat().st_size
    table: dict[str, tuple[tuple[int, ...], int, int]] = {}
    with open(path, "rb") as fh:
        r = _Reader(path, fh)
        (n,) = r.take("<I")
        if n == 0 or n > _MAX_TENSORS:
            raise CheckpointError(f"{path}: claims {n} tensors; this is not a model.bin")
        for i in range(n):
            (name_len,) = r.take("<I")
            if name_len == 0 or name_len > 4096:
                raise CheckpointError(f"{path}: tensor #{i} has a name length of {name_len}; the table is corrupt")
            raw = fh.read(name_len)
            if len(raw) != name_len:
                r.take(f"{name_len}s")  # raises the truncation error
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CheckpointError(f"{path}: tensor #{i} has a name that is not UTF-8; "
                                      "the table is corrupt") from None
            (ndim,) = r.take("<I")
            if ndim > 8:
                raise CheckpointError(f"{path}: {name} has ndim={ndim}; the table is corrupt")
            dims = r.take(f"<{ndim}I") if ndim else ()
            offset, size = r.take("<QQ")
            numel = 1
            for d in dims:
                numel *= d
            if size != numel * 4:
                raise CheckpointError(f"{path}: {name} has dims {tuple(dims)} (= {numel * 4} float32 bytes) "
                                      f"but size {size}; the table is corrupt")
            if offset + size > file_size:
                raise CheckpointError(f"{path}: {name} points at bytes {offset}..{offset + size} but the file has "
                                      f"{file_size}; the file is truncated")
            if name in table:
                raise CheckpointError(f"{path}: {name} appears twice in the tensor table")
            table[name] = (tuple(int(d) for d in dims), int(offset), int(size))
        if any(off < fh.tell() for _, off, sz in table.values() if sz):
            raise CheckpointError(f"{path}: a tensor's data offset lies inside the tensor table; the table is corrupt")
    return table


def infer_config(shapes: dict[str, tuple[int, ...]], name: str = "model.bin") -> ModelConfig:
    """A config from tensor names and shapes alone.

    The table fixes every width and the layer schedule; what it cannot show comes from the real
    model: num_experts_per_tok = 4 (clamped to the expert count) and the lfm2-8b-a1b scalars
    (eps, RoPE theta, token ids). Put a config.json beside the file to say otherwise.
    """
    real = get_preset("lfm2-8b-a1b")

    def shape(n):
        if n not in shapes:
            raise CheckpointError(f"{name}: cannot infer a config without {n}; put a config.json beside the file")
        return shapes[n]

    vocab, H = shape("embed_tokens.weight")
    layers = sorted({int(n.split(".")[1]) for n in shapes if n.startswith("layers.")})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{name}: layer indices {layers[:5]}... are not 0..N-1")
    types = tuple(ATTENTION if f"layers.{i}.self_attn.q_proj.weight" in shapes else CONV for i in layers)
    moe = [f"layers.{i}.feed_forward.gate.weight" in shapes for i in layers]
    n_dense = moe.index(True) if True in moe else len(moe)
    if not all(moe[n_dense:]):
        raise CheckpointError(f"{name}: dense and MoE layers interleave; only leading dense layers are supported")
    att = [i for i, t in enumerate(types) if t == ATTENTION]
    if att:
        hd = shape(f"layers.{att[0]}.self_attn.q_layernorm.weight")[0]
        heads = shape(f"layers.{att[0]}.self_attn.q_proj.weight")[0] // hd
        kv = shape(f"layers.{att[0]}.self_attn.k_proj.weight")[0] // hd
    else:  # no attention layer: head counts do not matter, keep the real model's
        heads, kv = real.num_attention_heads, real.num_key_value_heads
        hd = H // heads
    conv = [i for i, t in enumerate(types) if t == CONV]
    L = shape(f"layers.{conv[0]}.conv.conv.weight")[2] if conv else real.conv_L_cache
    if n_dense:
        inter = shape("layers.0.feed_forward.w1.weight")[0]
    else:
        inter = real.intermediate_size
    if n_dense < len(types):
        E = shape(f"layers.{n_dense}.feed_forward.gate.weight")[0]
        Im = shape(f"layers.{n_dense}.feed_forward.experts.0.w1.weight")[0]
        use_bias = f"layers.{n_dense}.feed_forward.expert_bias" in shapes
    else:
        E, Im, use_bias = real.num_experts, real.moe_intermediate_size, True
    try:
        return real.replace(vocab_size=vocab, hidden_size=H, intermediate_size=inter, moe_intermediate_size=Im,
                            num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, num_experts=E,
                            num_experts_per_tok=min(real.num_experts_per_tok, E), num_dense_layers=n_dense,
                            layer_types=types, conv_L_cache=L, use_expert_bias=use_bias, name=name)
    except ConfigError as e:
        raise CheckpointError(f"{name}: the inferred config is invalid ({e}); "
                              "put a config.json beside the file") from None


class ModelBinCheckpoint(Checkpoint):
    def __init__(self, path: str | Path, config: ModelConfig | None = None):
        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such model.bin")
        self._table = read_table(self.path)
        shapes = {n: dims for n, (dims, _, _) in self._table.items()}
        beside = self.path.parent / "config.json"
        if config is not None:
            self.config = config
        elif beside.exists():
            try:
                self.config = ModelConfig.from_json(beside)
            except ConfigError as e:
                raise CheckpointError(f"{beside}: {e}") from None
        else:
            self.config = infer_config(shapes, name=self.path.name)
        self.validate_shapes(shapes)
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")

    def raw(self, name: str) -> torch.Tensor:
        try:
            dims, offset, size = self._table[name]
        except KeyError:
            raise KeyError(f"{name} is not a tensor of {self.source}") from None
        if offset % 4:  # a float32 view needs 4-byte alignment; copy the rare unaligned tensor
            arr = np.frombuffer(self._mm[offset:offset + size].tobytes(), dtype="<f4").reshape(dims)
            return torch.from_numpy(arr)
        arr = self._mm[offset:offset + size].view("<f4").reshape(dims)
        with warnings.catch_warnings():  # read-only map: torch warns that writes would be undefined
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)


def write_model_bin(checkpoint: Checkpoint, path: str | Path, progress: bool = True) -> Path:
    """Write `checkpoint` as a float32 model.bin, one tensor in memory at a time.

    The data starts 64-byte aligned after the table, tensors follow back to back in
    expected_shapes order. Written to a temporary name beside `path`, renamed at the end.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = expected_shapes(checkpoint.config)
    names = list(shapes)
    table_len = 4 + sum(4 + len(n.encode()) + 4 + 4 * len(shapes[n]) + 16 for n in names)
    offset = table_len + (-table_len % _DATA_ALIGN)
    table = [struct.pack("<I", len(names))]
    for n in names:
        dims = shapes[n]
        size = 4 * int(np.prod(dims, dtype=np.int64))
        enc = n.encode()
        table.append(struct.pack(f"<I{len(enc)}sI{len(dims)}IQQ", len(enc), enc, len(dims), *dims, offset, size))
        offset += size
    total = offset
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                          desc=f"model.bin {path.parent.name}") as bar:
            head = b"".join(table)
            fh.write(head + b"\0" * (-len(head) % _DATA_ALIGN))
            bar.update(fh.tell())
            for n, t in prefetched(lambda n: checkpoint.get(n, torch.float32).contiguous(), names):
                if tuple(t.shape) != shapes[n]:
                    raise CheckpointError(f"{checkpoint.source}: {n} has shape {tuple(t.shape)}, expected {shapes[n]}")
                fh.write(memoryview(t.numpy()))
                bar.update(t.numel() * 4)
                del t
            if fh.tell() != total:
                raise RuntimeError(f"internal error: wrote {fh.tell()} bytes, planned {total}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
