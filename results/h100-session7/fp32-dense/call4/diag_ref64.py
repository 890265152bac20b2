"""Call 4: is the 3xTF32 engine's invalid sample (256x16, vs the fp32 GPU reference) a routing
near-tie where the fp32 reference itself is off? The float32 and float64 references (GPU) of the
same 256 prompts as `python -m optimized --accuracy 256x16`, the fp32 engine plain and with
tf32x3 (1, 4, 8 chunks), each validated against both; the float64 routing margins of bad rows."""
import time
import numpy as np
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts, validate
from harness.reference import reference_forward, reference_logits
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

cfg = get_preset("lfm2-8b-a1b")
ckpt = GPUSyntheticCheckpoint(cfg, seed=0)
tokens = synthetic_prompts(cfg.vocab_size, 256, 16, seed=1234)
t = time.perf_counter()
ref32 = reference_logits(ckpt, tokens, dtype=torch.float32, device="cuda")
print(f"float32 reference {time.perf_counter() - t:.1f} s", flush=True)
torch.cuda.empty_cache()
t = time.perf_counter()
out64 = reference_forward(ckpt, tokens, dtype=torch.float64, device="cuda", debug=True)
ref64 = out64.logits
margins = torch.stack([m.double().cpu() for m in out64.router_margins.values()])  # [layers, B, S]
del out64
torch.cuda.empty_cache()
print(f"float64 reference {time.perf_counter() - t:.1f} s", flush=True)
row_margin = margins.amin(dim=(0, 2)).numpy()  # each prompt's smallest routing margin (float64)


def report(name, got):
    bad = set()
    for rname, ref in (("float32 ref", ref32), ("float64 ref", ref64)):
        v = validate(got, ref)
        err = np.abs(got.astype(np.float64) - ref)
        ok = np.ones(len(got), bool)
        ok[list(v.invalid_rows)] = False
        print(f"{name:>22} vs {rname}: {v}; mean abs err {err.mean():.3g}; valid rows' max {err[ok].max():.3g}; "
              f"bad rows {list(v.invalid_rows)}", flush=True)
        bad |= set(v.invalid_rows)
    return bad


bad = report("fp32 reference", ref32)
for opts in ({"tf32x3": False}, {"tf32x3": True, "tf32x3_chunks": 1}, {"tf32x3": True, "tf32x3_chunks": 4},
             {"tf32x3": True, "tf32x3_chunks": 8}):
    eng = OptimizedEngine(ckpt, 0, dtype="fp32", progress=False, **opts)
    try:
        got = eng.forward(tokens)
    finally:
        eng.close()
        torch.cuda.empty_cache()
    bad |= report(" ".join(f"{k}={v}" for k, v in opts.items()), got)
print(f"smallest float64 routing margin per prompt: median {np.median(row_margin):.3g}, "
      f"5th percentile {np.percentile(row_margin, 5):.3g}")
for r in sorted(bad):
    print(f"  bad row {r}: smallest float64 routing margin {row_margin[r]:.3g} "
          f"(rank {int((row_margin < row_margin[r]).sum())} of 256)")
