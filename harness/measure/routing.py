"""How uneven routing is: the share of routed (token, expert) slots the busiest quarter of the
experts takes, per MoE layer, measured on the reference's own router choices.

Uniform routing would give 25 %; the synthetic checkpoints' random router rows already favour
some experts (41 % at skew 0), and `--skew` raises it further by adding skew * linspace(1, 0) to
expert_bias in a random expert order per layer (checkpoints.synthetic). The suite's
`prefill-skew` part needs the skew at which the busiest quarter takes ~70 %. Measured here on the
`small` preset (the real hidden size, 32 experts, top-4 and router init, so the router logits
have the full model's spread; 3 MoE layers) with 16 prompts of 64 tokens, seed 0, fp32:
    skew     0     0.1    0.2    0.3    0.4    0.5    0.55   0.6    1.0
    share   41 %   42 %   48 %   55 %   61 %   67 %   70 %   73 %   87 %   (mean of the 3 MoE layers,
                                                                            each within 3 points of it)
so SKEW_70 = 0.55. Again: python -m harness.measure.routing --preset small --skew 0 0.55
(~30 s per skew on 2 cores). The `prefill-skew` part measures the same share on the full-size
skewed checkpoint it runs (its part.json and report notes).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

SKEW_70 = 0.55  # the busiest quarter of the experts takes ~70 % of the routed slots (table above)


def busiest_quarter_share(indices: np.ndarray, num_experts: int) -> float:
    """indices: the expert ids chosen by every token of one layer, any shape. -> the fraction of
    them that went to the num_experts/4 most chosen experts."""
    counts = np.bincount(np.asarray(indices).reshape(-1), minlength=num_experts)
    quarter = max(1, num_experts // 4)
    return float(np.sort(counts)[::-1][:quarter].sum() / max(1, counts.sum()))


def layer_shares(ckpt, tokens: np.ndarray, device: str = "cpu") -> dict[int, float]:
    """MoE layer -> busiest-quarter share of the reference's routing of `tokens` [B, S] (fp32)."""
    import torch

    from harness.engines.reference import reference_forward
    out = reference_forward(ckpt, tokens, dtype=torch.float32, device=device, debug=True)
    return {layer: busiest_quarter_share(idx.cpu().numpy(), ckpt.config.num_experts)
            for layer, idx in sorted(out.router_indices.items())}


def main(argv: list[str] | None = None) -> int:
    from harness.checkpoints.synthetic import synthetic_checkpoint
    from harness.config import PRESETS, get_preset
    from harness.jobs.files import synthetic_prompts

    ap = argparse.ArgumentParser(prog="python -m harness.measure.routing",
                                 description="Share of routed slots the busiest quarter of the experts takes, "
                                             "on a synthetic checkpoint, for each --skew given.")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skew", type=float, nargs="+", default=[0.0, SKEW_70])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    args = ap.parse_args(argv)
    cfg = get_preset(args.preset)
    tokens = synthetic_prompts(cfg.vocab_size, args.samples, args.seq_len, 0, cfg.bos_token_id)
    for skew in args.skew:
        shares = layer_shares(synthetic_checkpoint(cfg, seed=args.seed, skew=skew), tokens)
        per_layer = ", ".join(f"layer {k}: {100 * v:.0f} %" for k, v in shares.items())
        print(f"skew {skew:g}: busiest quarter takes {100 * np.mean(list(shares.values())):.1f} % ({per_layer})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
