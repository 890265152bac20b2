"""Session 10: batch-1 (and 2) decode with the routing in the MoE GEMVs (route_in_moe) on and off,
alternating in one process: the decode graph alone (best of 3 x 40 replays) and, once per mode,
optimized.__main__.time_decode (per-step, streamed and GPU-alone figures)."""
import sys, json
import numpy as np
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.__main__ import time_decode

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)


def graph_ms(B, in_moe, reps=40):
    eng.route_in_moe = in_moe
    eng._dec = None
    torch.cuda.empty_cache()
    logits = eng.prefill(synthetic_prompts(cfg.vocab_size, B, 16, seed=12), max_new_tokens=64)
    D = eng._dec
    nxt = logits.argmax(1)
    toks = []
    for _ in range(10):
        nxt = eng.decode_greedy(nxt)
        toks.append(nxt.tolist())
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 1e9
    with torch.cuda.stream(eng.tstream):
        for _ in range(3):
            s.record(eng.tstream)
            for _ in range(reps):
                D.graph.replay()
            e.record(eng.tstream)
            e.synchronize()
            best = min(best, s.elapsed_time(e) / reps)
    D.active = False
    return best, toks


out = {"graph": {}, "tokens": {}, "time_decode": {}}
for B in (1, 2):
    for rnd in range(3):
        for in_moe in (False, True):
            ms, toks = graph_ms(B, in_moe)
            out["graph"].setdefault(f"B{B}_{in_moe}", []).append(ms)
            out["tokens"].setdefault(f"B{B}_{in_moe}", toks)
            print(f"B={B} round {rnd} route_in_moe={in_moe!s:5}  GPU alone {ms:.4f} ms/step", flush=True)
for in_moe in (False, True, False, True):
    eng.route_in_moe = in_moe
    eng._dec = None
    print(f"-- time_decode route_in_moe={in_moe}", flush=True)
    out["time_decode"].setdefault(str(in_moe), []).append(time_decode(eng, cfg, 1, 100))
json.dump(out, open(sys.argv[1], "w"), indent=1)
print("\nmode                 GPU alone ms/step (3 rounds)        tokens == off")
for B in (1, 2):
    for in_moe in (False, True):
        k = f"B{B}_{in_moe}"
        print(f"B={B} route_in_moe={in_moe!s:5}  " + " ".join(f"{v:.4f}" for v in out["graph"][k])
              + f"   mean {np.mean(out['graph'][k]):.4f}   {out['tokens'][k] == out['tokens'][f'B{B}_False']}")
for k, rows in out["time_decode"].items():
    for r in rows:
        print(f"time_decode route_in_moe={k:5}  per-step {r['ms_median']:.3f}  streamed {r['streamed_ms_median']:.3f}  "
              f"GPU alone {r['gpu_ms']:.3f} ms  {r['pct_of_floor']:.1f}% of floor (per-step)")
