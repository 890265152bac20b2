"""The bugs the correctness gate (harness.jobs.gate) must catch, as tests plant them: in the plain
torch reference on the CPU (test_gate_cpu_mutations.py) and in the optimized engine's bf16 path on
a GPU (gpu/test_gate_mutations.py).

  expert_rows      the first MoE layer's most used expert: its down-projection rows, first and
                   second half swapped (a packing slip confined to one expert)
  rope_plus_one    queries rotated one position further than keys (RoPE off by one position; the
                   same shift on both would cancel in q.k)
  no_expert_bias   expert_bias ignored when choosing experts
  skip_last_layer  the last decoder layer skipped
"""
from __future__ import annotations

import torch

from harness.engines.reference import reference_forward, rope_cos_sin

BUGS = ("expert_rows", "rope_plus_one", "no_expert_bias", "skip_last_layer")


def swap_row_halves(w: torch.Tensor) -> torch.Tensor:
    """A new tensor: w's rows, the second half first."""
    half = w.shape[0] // 2
    return torch.cat([w[half:], w[:half]])


def rotate_one_position(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [..., head_dim] rotated by RoPE's angles of position 1: RoPE at p becomes RoPE at p + 1
    (rotations compose), in x's dtype (computed in fp32)."""
    cos, sin = rope_cos_sin(torch.ones(1, dtype=torch.long, device=x.device), x.shape[-1], theta, torch.float32)
    xf, half = x.float(), x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos[0] + rotated * sin[0]).to(x.dtype)


def most_used_expert(ckpt, tokens, layer: int, device: str = "cpu") -> int:
    """The expert that the reference routes the most of these prompts' tokens to in `layer`."""
    out = reference_forward(ckpt, tokens, dtype=torch.float32, device=device, debug=True)
    return int(torch.bincount(out.router_indices[layer].reshape(-1).cpu()).argmax())
