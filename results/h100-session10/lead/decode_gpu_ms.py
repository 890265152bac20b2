"""Session 10: one process's batch-1 and batch-2 decode figures for A/B between two snapshots run in
turn: the decode graph alone (best of 3 x 40 replays, twice) and optimized.__main__.time_decode."""
import sys, json
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.__main__ import time_decode

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)


def graph_ms(B, reps=40):
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


out = {"label": sys.argv[2]}
for B in (1, 2, 1, 2):
    ms, toks = graph_ms(B)
    out.setdefault(f"B{B}", []).append(ms)
    out[f"tokens_B{B}"] = toks
eng._dec = None
out["time_decode"] = time_decode(eng, cfg, 1, 100)
eng.close()
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(f"{sys.argv[2]:10s} GPU alone B=1 {out['B1'][0]:.4f} {out['B1'][1]:.4f}  B=2 {out['B2'][0]:.4f} {out['B2'][1]:.4f}  "
      f"streamed B=1 {out['time_decode']['streamed_ms_median']:.4f} ms/token")
