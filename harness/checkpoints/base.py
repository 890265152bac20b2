"""One interface over every source of weights.

Tensor names are the Hugging Face names without the leading `model.` (the original program's
`model.bin` naming), experts stored one per name:
    embed_tokens.weight, embedding_norm.weight,
    layers.{i}.operator_norm.weight, layers.{i}.ffn_norm.weight,
    layers.{i}.conv.{in_proj,out_proj}.weight, layers.{i}.conv.conv.weight,
    layers.{i}.self_attn.{q,k,v,out}_proj.weight, layers.{i}.self_attn.{q,k}_layernorm.weight,
    layers.{i}.feed_forward.{w1,w2,w3}.weight                       (dense layers)
    layers.{i}.feed_forward.gate.weight, layers.{i}.feed_forward.expert_bias,
    layers.{i}.feed_forward.experts.{e}.{w1,w2,w3}.weight           (MoE layers)
Sources (each in its own module of this package): a Hugging Face safetensors folder (`hf`), the
original `model.bin` (`modelbin`), and synthetic checkpoints (`synthetic`); `open.open_checkpoint`
picks by what the path holds.
"""
from __future__ import annotations


import torch

from harness.config import ModelConfig


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, in a fixed order (embedding, layers in order, final norm)."""
    H, hd = cfg.hidden_size, cfg.head_dim
    s: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (cfg.vocab_size, H)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        s[p + "operator_norm.weight"] = (H,)
        if cfg.is_attention(i):
            s[p + "self_attn.q_proj.weight"] = (cfg.num_attention_heads * hd, H)
            s[p + "self_attn.k_proj.weight"] = (cfg.num_key_value_heads * hd, H)
            s[p + "self_attn.v_proj.weight"] = (cfg.num_key_value_heads * hd, H)
            s[p + "self_attn.out_proj.weight"] = (H, cfg.num_attention_heads * hd)
            s[p + "self_attn.q_layernorm.weight"] = (hd,)
            s[p + "self_attn.k_layernorm.weight"] = (hd,)
        else:
            s[p + "conv.in_proj.weight"] = (3 * H, H)
            s[p + "conv.conv.weight"] = (H, 1, cfg.conv_L_cache)
            s[p + "conv.out_proj.weight"] = (H, H)
        s[p + "ffn_norm.weight"] = (H,)
        f = p + "feed_forward."
        if cfg.is_moe(i):
            s[f + "gate.weight"] = (cfg.num_experts, H)
            s[f + "expert_bias"] = (cfg.num_experts,)
            Im = cfg.moe_intermediate_size
            for e in range(cfg.num_experts):
                s[f + f"experts.{e}.w1.weight"] = (Im, H)
                s[f + f"experts.{e}.w3.weight"] = (Im, H)
                s[f + f"experts.{e}.w2.weight"] = (H, Im)
        else:
            s[f + "w1.weight"] = (cfg.intermediate_size, H)
            s[f + "w3.weight"] = (cfg.intermediate_size, H)
            s[f + "w2.weight"] = (H, cfg.intermediate_size)
    s["embedding_norm.weight"] = (H,)
    return s


def keeps_fp32(name: str) -> bool:
    """expert_bias stays float32 whatever the engine dtype (the real checkpoint stores it so, and
    rounding it to bf16 changes which experts win close routing decisions)."""
    return name.endswith("expert_bias")


class Checkpoint:
    """Base class: a config plus named tensors. Subclasses implement `raw`."""

    config: ModelConfig
    source: str = "?"

    def names(self) -> list[str]:
        return list(expected_shapes(self.config))

    def raw(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, memory-mapped where the source allows (no copy)."""
        raise NotImplementedError

    def get(self, name: str, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        """The tensor converted to `dtype` on `device`. expert_bias is never narrowed below fp32."""
        t = self.raw(name)
        if keeps_fp32(name) and dtype in (torch.bfloat16, torch.float16):
            dtype = torch.float32
        return t.to(device=device, dtype=dtype)

    def nbytes(self, dtype_bytes: int = 4) -> int:
        n = 0
        for shape in expected_shapes(self.config).values():
            k = 1
            for d in shape:
                k *= d
            n += k * dtype_bytes
        return n

    def validate_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Raise CheckpointError naming every missing or mis-shaped tensor."""
        want = expected_shapes(self.config)
        missing = [n for n in want if n not in shapes]
        wrong = [f"{n}: {tuple(shapes[n])} != {want[n]}" for n in want if n in shapes and tuple(shapes[n]) != want[n]]
        if missing or wrong:
            msg = []
            if missing:
                msg.append(f"{len(missing)} tensor(s) missing, e.g. {missing[:3]}")
            if wrong:
                msg.append(f"{len(wrong)} tensor(s) with the wrong shape, e.g. {wrong[:3]}")
            raise CheckpointError(f"{self.source}: " + "; ".join(msg))


class DictCheckpoint(Checkpoint):
    """Tensors held in memory (tests, and the synthetic generator before it writes)."""

    def __init__(self, config: ModelConfig, tensors: dict[str, torch.Tensor], source: str = "memory"):
        self.config = config
        self.source = source
        self._t = tensors
        self.validate_shapes({k: tuple(v.shape) for k, v in tensors.items()})

    def raw(self, name: str) -> torch.Tensor:
        return self._t[name]
