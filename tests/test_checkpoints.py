"""Checkpoint sources: synthetic weights, HF safetensors folders (single, sharded, pre-fused),
the original model.bin, and the streaming writers behind them. CPU only, tiny models."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import harness.checkpoints.synthetic as synthetic
from harness.checkpoints.base import CheckpointError, expected_shapes
from harness.checkpoints.open import open_checkpoint
from harness.cli.make_model import _cli as make_model_cli
from harness.config import get_preset
from harness.checkpoints.hf import HFCheckpoint
from harness.checkpoints.modelbin import ModelBinCheckpoint, write_model_bin
from harness.checkpoints.safetensors_stream import INDEX_FILE, SINGLE_FILE, SafetensorsStreamWriter, TensorSpec
from harness.checkpoints.synthetic import (cached_synthetic, synthetic_checkpoint, synthetic_tensor, write_synthetic)

TINY = get_preset("tiny")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern, so comparisons are exact (also for -0.0 and NaN)."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    assert torch.equal(bits(a), bits(b)), name


def assert_same_checkpoint(got, want) -> None:
    assert got.config == want.config
    for name in want.names():
        assert_same(got.raw(name), want.raw(name), name)


@pytest.fixture(scope="module")
def tiny_ckpt():
    return synthetic_checkpoint(TINY, seed=3)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_ckpt):
    return write_synthetic(TINY, tmp_path_factory.mktemp("hf") / "tiny", seed=3, progress=False)


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ----- round trips ---------------------------------------------------------------------------
def test_hf_folder_is_bit_identical(tiny_folder, tiny_ckpt):
    assert sorted(p.name for p in tiny_folder.iterdir()) == ["config.json", SINGLE_FILE, "synthetic.json"]
    ck = HFCheckpoint(tiny_folder)
    assert_same_checkpoint(ck, tiny_ckpt)
    assert ck.raw("embed_tokens.weight").dtype == torch.bfloat16
    assert ck.raw("layers.1.feed_forward.expert_bias").dtype == torch.float32
    assert isinstance(open_checkpoint(tiny_folder), HFCheckpoint)


def test_sharded_folder_loads_like_single_file(tmp_path, tiny_ckpt):
    folder = write_synthetic(TINY, tmp_path, seed=3, shard_bytes=40_000, progress=False)
    index = json.loads((folder / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 5 and not (folder / SINGLE_FILE).exists()
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in (tiny_ckpt.raw(n) for n in tiny_ckpt.names()))
    assert set(index["weight_map"]) == {"model." + n for n in tiny_ckpt.names()}
    assert_same_checkpoint(HFCheckpoint(folder), tiny_ckpt)
    # Rewriting the same folder as one file removes the shards and the index.
    write_synthetic(TINY, tmp_path, seed=3, shard_bytes=None, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", SINGLE_FILE, "synthetic.json"]


def test_model_bin_round_trip_and_inferred_config(tmp_path, tiny_ckpt):
    path = write_model_bin(tiny_ckpt, tmp_path / "model.bin", progress=False)
    ck = ModelBinCheckpoint(path)  # no config.json beside: inferred from the tensor table
    assert ck.config == TINY.replace(num_experts_per_tok=4)  # top-k is not in the file: real model's 4
    for name in tiny_ckpt.names():
        assert_same(ck.raw(name), tiny_ckpt.get(name, torch.float32), name)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    assert ModelBinCheckpoint(path).config == TINY
    assert isinstance(open_checkpoint(tmp_path), ModelBinCheckpoint)
    # bf16 from the bin converts back to the same bits
    name = "layers.0.conv.in_proj.weight"
    assert_same(ck.get(name, torch.bfloat16), tiny_ckpt.raw(name), name)


def test_model_bin_infers_two_dense_layers(tmp_path):
    cfg = get_preset("tiny-top3")
    path = write_model_bin(synthetic.SyntheticCheckpoint(cfg, seed=1), tmp_path / "model.bin", progress=False)
    assert ModelBinCheckpoint(path).config == cfg.replace(num_experts_per_tok=4)


def test_prefused_expert_layout_loads_per_expert(tmp_path, tiny_ckpt):
    cfg = TINY
    tensors = {}
    for name in tiny_ckpt.names():
        if ".experts." not in name:
            tensors["model." + name] = tiny_ckpt.raw(name)
    for i in cfg.moe_layers:
        p = f"layers.{i}.feed_forward.experts."
        w = lambda e, k: tiny_ckpt.raw(f"{p}{e}.{k}.weight")  # noqa: E731
        experts = range(cfg.num_experts)
        tensors[f"model.{p}gate_up_proj"] = torch.stack([torch.cat([w(e, "w1"), w(e, "w3")]) for e in experts])
        tensors[f"model.{p}down_proj"] = torch.stack([w(e, "w2") for e in range(cfg.num_experts)])
    tensors["lm_head.weight"] = torch.zeros_like(tiny_ckpt.raw("embed_tokens.weight"))  # tied: ignored
    save_file(tensors, str(tmp_path / SINGLE_FILE), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    assert_same_checkpoint(HFCheckpoint(tmp_path), tiny_ckpt)


def test_transformers_loads_the_synthetic_folder(tiny_folder, tiny_ckpt):
    transformers = pytest.importorskip("transformers")
    model, info = transformers.Lfm2MoeForCausalLM.from_pretrained(tiny_folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    sd = model.state_dict()
    assert_same(sd["model.embed_tokens.weight"], tiny_ckpt.raw("embed_tokens.weight"), "embed")
    assert_same(sd["lm_head.weight"], tiny_ckpt.raw("embed_tokens.weight"), "tied lm_head")
    i, e, Im = TINY.moe_layers[-1], 5, TINY.moe_intermediate_size
    p = f"layers.{i}.feed_forward."
    gate_up = sd[f"model.{p}experts.gate_up_proj"]
    assert_same(gate_up[e, :Im], tiny_ckpt.raw(f"{p}experts.{e}.w1.weight"), "w1")
    assert_same(gate_up[e, Im:], tiny_ckpt.raw(f"{p}experts.{e}.w3.weight"), "w3")
    assert_same(sd[f"model.{p}experts.down_proj"][e], tiny_ckpt.raw(f"{p}experts.{e}.w2.weight"), "w2")
    assert_same(sd[f"model.{p}expert_bias"], tiny_ckpt.raw(f"{p}expert_bias"), "expert_bias")


# ----- synthetic values -------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_order_independent(tmp_path):
    names = list(expected_shapes(TINY))
    forward = {n: synthetic_tensor(TINY, n, seed=7) for n in names}
    backward = {n: synthetic_tensor(TINY, n, seed=7) for n in reversed(names)}
    other = {n: synthetic_tensor(TINY, n, seed=8) for n in names}
    for n in names:
        assert_same(forward[n], backward[n], n)
        assert not torch.equal(forward[n], other[n]), n
    a = write_synthetic(TINY, tmp_path / "a", seed=7, progress=False)
    b = write_synthetic(TINY, tmp_path / "b", seed=7, progress=False)
    c = write_synthetic(TINY, tmp_path / "c", seed=8, progress=False)
    assert file_digests(a) == file_digests(b)
    assert file_digests(a)[SINGLE_FILE] != file_digests(c)[SINGLE_FILE]


def test_synthetic_values_look_like_an_initialised_model():
    cfg = get_preset("small")  # real hidden size: statistics over many values
    t = lambda n: synthetic_tensor(cfg, n, seed=0)  # noqa: E731
    w = t("layers.2.feed_forward.experts.9.w1.weight")
    assert w.dtype == torch.bfloat16 and abs(w.float().std().item() - 0.02) < 0.001 and abs(w.float().mean()) < 1e-3
    norm = t("layers.0.operator_norm.weight").float()
    assert abs(norm.mean().item() - 1.0) < 0.01 and 0.03 < norm.std().item() < 0.07
    assert abs(t("layers.1.self_attn.q_layernorm.weight").float().mean().item() - 1.0) < 0.03
    conv = t("layers.0.conv.conv.weight").float()
    assert conv.abs().max() <= 1 / 3**0.5 + 1e-2 and conv.std().item() > 0.25  # uniform(+-0.577): std 0.333
    bias = t("layers.3.feed_forward.expert_bias")
    assert bias.dtype == torch.float32 and bias.abs().min() > 0 and bias.std() > 0.01
    assert t("embed_tokens.weight").dtype == torch.bfloat16


def busiest_expert_share(ck, seed=0, tokens=4096) -> float:
    """Share of top-k slots taken by the busiest expert, with sigmoid + bias routing on random
    RMS-normalised hidden states (before the router), averaged over MoE layers."""
    cfg = ck.config
    g = torch.Generator().manual_seed(seed)
    shares = []
    for i in cfg.moe_layers:
        h = torch.randn(tokens, cfg.hidden_size, generator=g)
        h = h / h.pow(2).mean(-1, keepdim=True).sqrt()
        scores = torch.sigmoid(h @ ck.get(f"layers.{i}.feed_forward.gate.weight").T)
        idx = (scores + ck.get(f"layers.{i}.feed_forward.expert_bias")).topk(cfg.num_experts_per_tok).indices
        shares.append(torch.bincount(idx.flatten(), minlength=cfg.num_experts).max().item() / idx.numel())
    return sum(shares) / len(shares)


def test_skew_makes_a_few_experts_dominate():
    # wider than tiny, so router scores (not the bias alone) spread the tokens, as in the real model
    cfg = TINY.replace(hidden_size=512, num_experts=32, num_experts_per_tok=4)
    even, half, skewed = (busiest_expert_share(synthetic_checkpoint(cfg, seed=0, skew=s)) for s in (0.0, 0.5, 1.0))
    assert even < 0.12  # uniform would be 1/32 = 0.031
    assert even < half < skewed and skewed > 0.18
    # skew touches only expert_bias
    a, b = synthetic_checkpoint(cfg, seed=0), synthetic_checkpoint(cfg, seed=0, skew=1.0)
    changed = [n for n in a.names() if not torch.equal(a.raw(n), b.raw(n))]
    assert changed and all(n.endswith("expert_bias") for n in changed)


# ----- cache and command line ---------------------------------------------------------------
def test_cached_synthetic_reuses_complete_and_regenerates_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path))
    folder = cached_synthetic("tiny", seed=2, skew=0.5, progress=False)
    assert folder.parent == tmp_path and folder.name == "tiny-seed2-skew0.5-bf16"
    stamp = (folder / SINGLE_FILE).stat().st_mtime_ns
    assert cached_synthetic("tiny", seed=2, skew=0.5, progress=False) == folder
    assert (folder / SINGLE_FILE).stat().st_mtime_ns == stamp  # reused, not rewritten
    good = file_digests(folder)
    with open(folder / SINGLE_FILE, "r+b") as fh:  # a truncated copy is noticed and regenerated
        fh.truncate(1000)
    cached_synthetic("tiny", seed=2, skew=0.5, progress=False)
    assert file_digests(folder) == good
    (folder / "synthetic.json").unlink()  # an interrupted generation (no marker) is regenerated
    cached_synthetic("tiny", seed=2, skew=0.5, progress=False)
    assert file_digests(folder) == good
    other = cached_synthetic("tiny", seed=2, skew=0.5, cache_dir=tmp_path / "elsewhere", progress=False)
    assert other.parent == tmp_path / "elsewhere"


def test_make_model_command(tmp_path, capsys):
    assert make_model_cli(["--preset", "tiny", "--out", str(tmp_path / "hf"), "--quiet"]) == 0
    assert str(tmp_path / "hf") in capsys.readouterr().out
    assert make_model_cli(["--preset", "tiny", "--format", "model-bin", "--out", str(tmp_path / "bin"), "--quiet"]) == 0
    assert "model.bin" in capsys.readouterr().out
    assert_same_checkpoint(ModelBinCheckpoint(tmp_path / "bin" / "model.bin"), open_checkpoint(tmp_path / "bin"))
    hf, mb = HFCheckpoint(tmp_path / "hf"), ModelBinCheckpoint(tmp_path / "bin" / "model.bin")
    assert mb.config == hf.config == TINY
    for n in hf.names():
        assert_same(mb.raw(n), hf.get(n, torch.float32), n)
    with pytest.raises(SystemExit):
        make_model_cli(["--help"])
    assert "synthetic" in capsys.readouterr().out


def test_streaming_write_memory_stays_near_one_tensor(tmp_path):
    """A 350 MB model is written with far less than 350 MB of extra memory."""
    code = textwrap.dedent(f"""
        import resource
        from harness.config import get_preset
        from harness.checkpoints.synthetic import write_synthetic, synthetic_tensor
        cfg = get_preset("small").replace(vocab_size=1024, hidden_size=1024, intermediate_size=2048,
                                          moe_intermediate_size=512, num_attention_heads=16, num_key_value_heads=4)
        synthetic_tensor(cfg, "embed_tokens.weight", 0)  # warm up allocator and torch kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        write_synthetic(cfg, {str(tmp_path)!r}, progress=False, shard_bytes=2**27)
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    before, after = (int(x) * 1024 for x in out.stdout.split())
    written = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert written > 300e6
    assert after - before < 80e6, f"peak RSS grew by {(after - before) / 1e6:.0f} MB writing {written / 1e6:.0f} MB"
    for p in tmp_path.glob("*.safetensors"):
        p.unlink()  # do not leave 350 MB in pytest's kept temp folders


# ----- errors -----------------------------------------------------------------------------
def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_missing_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        HFCheckpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="make-model"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no such model.bin"):
        ModelBinCheckpoint(tmp_path / "nope.bin")


def test_missing_shard(tmp_path):
    folder = write_synthetic(TINY, tmp_path, seed=3, shard_bytes=100_000, progress=False)
    shard = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))[1]
    (folder / shard).unlink()
    with pytest.raises(CheckpointError, match=f"not in the folder.*{shard}"):
        HFCheckpoint(folder)


@pytest.mark.parametrize("damage", ["garbage", "bad_json", "truncated"])
def test_corrupt_safetensors(tmp_path, tiny_folder, damage):
    folder = copy_folder(tiny_folder, tmp_path / "f")
    f = folder / SINGLE_FILE
    data = f.read_bytes()
    if damage == "garbage":
        data = os.urandom(64) + data[64:]
    elif damage == "bad_json":
        data = data[:8] + b"{nonsense" + data[17:]
    else:
        data = data[:-100]
    f.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"{SINGLE_FILE}.*corrupt or truncated"):
        HFCheckpoint(folder)


def test_wrong_tensor_shape_is_named(tmp_path, tiny_ckpt):
    tensors = {"model." + n: tiny_ckpt.raw(n) for n in tiny_ckpt.names()}
    H = TINY.hidden_size
    tensors["model.layers.2.conv.out_proj.weight"] = torch.zeros(H, H + 1, dtype=torch.bfloat16)
    save_file(tensors, str(tmp_path / SINGLE_FILE), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    want = rf"layers\.2\.conv\.out_proj\.weight: \({H}, {H + 1}\) != \({H}, {H}\).*in model\.safetensors"
    with pytest.raises(CheckpointError, match=want):
        HFCheckpoint(tmp_path)
    del tensors["model.layers.2.conv.out_proj.weight"]
    save_file(tensors, str(tmp_path / SINGLE_FILE), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="1 tensor.* missing"):
        HFCheckpoint(tmp_path)


def test_config_without_layer_types(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder, tmp_path / "f")
    d = json.loads((folder / "config.json").read_text())
    del d["layer_types"]
    (folder / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="config.json.*layer_types"):
        HFCheckpoint(folder)


def bin_table_entry(name: str, dims, offset: int, size: int) -> bytes:
    enc = name.encode()
    return struct.pack(f"<I{len(enc)}sI{len(dims)}IQQ", len(enc), enc, len(dims), *dims, offset, size)


def test_model_bin_errors(tmp_path):
    def write(table: bytes, data_len: int, n: int = 1) -> Path:
        p = tmp_path / "model.bin"
        p.write_bytes(struct.pack("<I", n) + table + b"\0" * data_len)
        return p

    e = bin_table_entry("embed_tokens.weight", (4, 2), 200, 32)
    with pytest.raises(CheckpointError, match="points at bytes 200..232 but the file has"):
        ModelBinCheckpoint(write(e, 100))
    bad_size = bin_table_entry("embed_tokens.weight", (4, 2), 100, 16)
    with pytest.raises(CheckpointError, match="size 16"):
        ModelBinCheckpoint(write(bad_size, 200))
    with pytest.raises(CheckpointError, match="truncated"):
        ModelBinCheckpoint(write(e[:20], 0))
    with pytest.raises(CheckpointError, match="truncated"):
        ModelBinCheckpoint(write(e, 0, n=2))
    with pytest.raises(CheckpointError, match="not a model.bin"):
        ModelBinCheckpoint(write(b"", 10, n=0))


def test_model_bin_truncated_data(tmp_path, tiny_ckpt):
    path = write_model_bin(tiny_ckpt, tmp_path / "model.bin", progress=False)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 4)
    with pytest.raises(CheckpointError, match="embedding_norm.weight points at bytes .* truncated"):
        ModelBinCheckpoint(path)


def test_failed_writes_leave_nothing_behind(tmp_path, monkeypatch):
    real = synthetic.synthetic_tensor

    def failing(cfg, name, seed, skew=0.0):
        if name == "layers.2.conv.in_proj.weight":
            raise RuntimeError("disk full (simulated)")
        return real(cfg, name, seed, skew)

    monkeypatch.setattr(synthetic, "synthetic_tensor", failing)
    for shard_bytes in (None, 50_000):
        out = tmp_path / f"hf{shard_bytes}"
        with pytest.raises(RuntimeError, match="simulated"):
            write_synthetic(TINY, out, seed=0, shard_bytes=shard_bytes, progress=False)
        assert not out.exists()  # the folder appears only when complete (harness.checkpoints.staging)
    assert list(tmp_path.iterdir()) == []  # no temporary folder left beside it either
    with pytest.raises(RuntimeError, match="simulated"):
        write_model_bin(synthetic.SyntheticCheckpoint(TINY), tmp_path / "bin" / "model.bin", progress=False)
    assert list((tmp_path / "bin").iterdir()) == []


def test_stream_writer_checks_order_and_shape(tmp_path):
    specs = [TensorSpec("a", (2, 3), torch.float32), TensorSpec("b", (4,), torch.bfloat16)]
    with pytest.raises(ValueError, match="expected a, got b"):
        with SafetensorsStreamWriter(tmp_path, specs) as w:
            w.write("b", torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="declared"):
        with SafetensorsStreamWriter(tmp_path, specs) as w:
            w.write("a", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="before all tensors"):
        with SafetensorsStreamWriter(tmp_path, specs) as w:
            w.write("a", torch.zeros(2, 3))
    assert list(tmp_path.iterdir()) == []
    with SafetensorsStreamWriter(tmp_path, specs) as w:
        w.write("a", torch.arange(6.0).reshape(2, 3))
        w.write("b", torch.ones(4, dtype=torch.bfloat16))
    from safetensors import safe_open
    with safe_open(str(tmp_path / SINGLE_FILE), "pt") as f:
        assert torch.equal(f.get_tensor("a"), torch.arange(6.0).reshape(2, 3))
        assert f.get_tensor("b").dtype == torch.bfloat16 and f.metadata() == {"format": "pt"}
