"""`info`: what a model is (config, parameters, FLOPs and bytes per token) and what this machine has."""
from __future__ import annotations

import argparse
import importlib.util
import shutil

from harness.config import get_preset
from harness.measure.model_stats import model_stats


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="config, parameter counts, FLOPs/bytes per token, and the GPU/MPI/PyCUDA found",
                       description="Print a model's configuration and its napkin numbers: "
                                   "total and active parameters, FLOPs per token of the job, bytes of weights "
                                   "in fp32 and bf16; then which GPU, MPI and PyCUDA this machine has.")
    p.add_argument("--preset", default="lfm2-8b-a1b", help="a named shape (default: %(default)s)")
    p.add_argument("--model", metavar="DIR", help="read config.json from this checkpoint folder instead")
    p.add_argument("--seq-len", type=int, default=16, help="prompt length for the FLOPs line (default: 16)")
    p.set_defaults(func=main)


def _environment() -> list[str]:
    lines = []
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch"
        lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}); GPU: {gpu}")
    except ImportError:
        lines.append("torch: not installed")
    lines.append("PyCUDA: " + ("installed" if importlib.util.find_spec("pycuda") else
                               "not installed (GPU engines need: pip install '.[gpu]')"))
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    lines.append(f"mpiexec: {mpiexec or 'not found (pip install mpich, or a system MPI)'}")
    lines.append("mpi4py: " + ("installed" if importlib.util.find_spec("mpi4py") else "not installed"))
    lines.append("nvcc: " + (shutil.which("nvcc") or "not found"))
    return lines


def main(args: argparse.Namespace) -> int:
    if args.model:
        from harness.config import ModelConfig
        cfg = ModelConfig.from_json(args.model)
    else:
        cfg = get_preset(args.preset)
    st = model_stats(cfg)
    S = args.seq_len
    print(f"model {cfg.name}: {cfg.num_layers} layers ({len(cfg.conv_layers)} ShortConv + "
          f"{len(cfg.attention_layers)} attention at {cfg.attention_layers}), hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}")
    print(f"  experts {cfg.num_experts} top-{cfg.num_experts_per_tok} x {cfg.moe_intermediate_size} in layers "
          f"{cfg.num_dense_layers}..{cfg.num_layers - 1}; dense SwiGLU {cfg.intermediate_size} before; "
          f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv x {cfg.head_dim}")
    print(f"parameters: {st.total_params / 1e9:.2f} B total / {st.active_params / 1e9:.2f} B active "
          f"({st.total_params:,} / {st.active_params:,})")
    print(f"weights: {st.total_params * 4 / 1e9:.1f} GB fp32, {st.total_params * 2 / 1e9:.1f} GB bf16")
    flops = st.job_flops(S)
    print(f"job FLOPs at seq_len {S} (LM head on the last position): {flops / 1e9:.2f} GFLOP/sample, "
          f"{flops / S / 1e9:.3f} GFLOP/token; all-position logits would be "
          f"{(2 * (st.matmul_params_job + st.lm_head_params)) / 1e9:.3f} GFLOP/token")
    for line in _environment():
        print(line)
    return 0
