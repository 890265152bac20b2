"""Model configuration: read a Hugging Face config.json, or pick a named preset.

Every engine is built from a `ModelConfig`. Values: LFM2-8B-A1B's published config.json.
The HF class defaults are wrong for LFM2-8B-A1B (32 layers, eos 2), so nothing here falls back
to them: a config without `layer_types` is rejected rather than guessed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

ATTENTION = "full_attention"
CONV = "conv"


class ConfigError(ValueError):
    """A config.json or preset that cannot describe an LFM2-MoE model."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense SwiGLU width (layers < num_dense_layers)
    moe_intermediate_size: int  # per-expert SwiGLU width
    num_attention_heads: int
    num_key_value_heads: int
    num_experts: int
    num_experts_per_tok: int
    num_dense_layers: int
    layer_types: tuple[str, ...]
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    conv_L_cache: int = 3
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    use_expert_bias: bool = True
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 128_000
    bos_token_id: int = 1
    eos_token_id: int = 7
    pad_token_id: int = 0
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        bad = [t for t in self.layer_types if t not in (ATTENTION, CONV)]
        if bad:
            raise ConfigError(f"unknown layer type(s) {sorted(set(bad))}; expected '{CONV}' or '{ATTENTION}'")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("num_attention_heads must be a multiple of num_key_value_heads (GQA)")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError("num_experts_per_tok must be in 1..num_experts")
        if self.num_dense_layers > self.num_layers:
            raise ConfigError("num_dense_layers exceeds the number of layers")
        if self.head_dim % 2:
            raise ConfigError("head_dim must be even for RoPE")

    # ----- derived shape facts -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == ATTENTION]

    @property
    def conv_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == CONV]

    def is_attention(self, layer: int) -> bool:
        return self.layer_types[layer] == ATTENTION

    def is_moe(self, layer: int) -> bool:
        return layer >= self.num_dense_layers

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if self.is_moe(i)]

    # ----- (de)serialisation ---------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        """A config.json that transformers' Lfm2MoeConfig reads to the same model."""
        return {
            "architectures": ["Lfm2MoeForCausalLM"],
            "model_type": "lfm2_moe",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_dense_layers": self.num_dense_layers,
            "norm_topk_prob": self.norm_topk_prob,
            "use_expert_bias": self.use_expert_bias,
            "routed_scaling_factor": self.routed_scaling_factor,
            "conv_L_cache": self.conv_L_cache,
            "conv_bias": False,
            "layer_types": list(self.layer_types),
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "bfloat16",
        }

    @classmethod
    def from_hf_dict(cls, d: dict, name: str = "custom") -> "ModelConfig":
        if d.get("model_type") not in (None, "lfm2_moe"):
            raise ConfigError(f"model_type is {d.get('model_type')!r}; this project runs 'lfm2_moe' models")
        layer_types = d.get("layer_types")
        if not layer_types:
            raise ConfigError(
                "config.json has no 'layer_types'. LFM2-MoE interleaves conv and attention layers and the "
                "HF defaults do not match LFM2-8B-A1B; add the explicit list (18 'conv' and 6 'full_attention' entries for LFM2-8B-A1B)."
            )
        n = d.get("num_hidden_layers", len(layer_types))
        if n != len(layer_types):
            raise ConfigError(f"num_hidden_layers={n} but layer_types lists {len(layer_types)} layers")
        rope = d.get("rope_parameters") or {}
        theta = rope.get("rope_theta", d.get("rope_theta", 1_000_000.0))
        if rope.get("rope_type", "default") != "default" or d.get("rope_scaling"):
            raise ConfigError("only rope_type 'default' (no RoPE scaling) is supported")
        tie = d.get("tie_word_embeddings", d.get("tie_embedding", True))
        required = ["vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                    "num_attention_heads", "num_key_value_heads", "num_experts", "num_experts_per_tok",
                    "num_dense_layers"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"config.json lacks {missing}")
        eos = d.get("eos_token_id", 7)
        return cls(
            **{k: int(d[k]) for k in required},
            layer_types=tuple(layer_types),
            head_dim=d.get("head_dim"),
            conv_L_cache=int(d.get("conv_L_cache", 3)),
            norm_eps=float(d.get("norm_eps", 1e-5)),
            rope_theta=float(theta),
            norm_topk_prob=bool(d.get("norm_topk_prob", True)),
            routed_scaling_factor=float(d.get("routed_scaling_factor", 1.0)),
            use_expert_bias=bool(d.get("use_expert_bias", True)),
            tie_word_embeddings=bool(tie),
            max_position_embeddings=int(d.get("max_position_embeddings", 128_000)),
            bos_token_id=int(d.get("bos_token_id", 1)),
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
            pad_token_id=int(d.get("pad_token_id", 0) or 0),
            name=name,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"no config.json at {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf_dict(d, name=path.parent.name)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# ----- presets ------------------------------------------------------------------------------
_LFM2_8B_LAYERS = tuple(ATTENTION if i in (2, 6, 10, 14, 18, 21) else CONV for i in range(24))

PRESETS: dict[str, ModelConfig] = {
    # The real shape (LFM2-8B-A1B's config.json).
    "lfm2-8b-a1b": ModelConfig(
        vocab_size=65536, hidden_size=2048, intermediate_size=7168, moe_intermediate_size=1792,
        num_attention_heads=32, num_key_value_heads=8, num_experts=32, num_experts_per_tok=4,
        num_dense_layers=2, layer_types=_LFM2_8B_LAYERS, name="lfm2-8b-a1b",
    ),
    # Test presets: every block kind (dense conv, MoE attention, MoE conv), GQA, small vocab.
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
        num_dense_layers=1, layer_types=(CONV, ATTENTION, CONV, ATTENTION), name="tiny",
    ),
    "tiny-top3": ModelConfig(
        vocab_size=384, hidden_size=96, intermediate_size=160, moe_intermediate_size=48,
        num_attention_heads=6, num_key_value_heads=2, num_experts=8, num_experts_per_tok=3,
        num_dense_layers=2, layer_types=(CONV, CONV, ATTENTION, CONV, CONV, ATTENTION), name="tiny-top3",
    ),
    # Real hidden size and expert count on a few layers: kernels meet real tile shapes quickly.
    "small": ModelConfig(
        vocab_size=4096, hidden_size=2048, intermediate_size=7168, moe_intermediate_size=1792,
        num_attention_heads=32, num_key_value_heads=8, num_experts=32, num_experts_per_tok=4,
        num_dense_layers=1, layer_types=(CONV, ATTENTION, CONV, CONV), name="small",
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
