"""Session 10, call 4: batch-1 decode with the MoE GEMVs built for more blocks per SM (gemv_probe2.cu's
launch bounds), alternating with the engine's kernels in one process: the decode graph alone (best
of 3 x 40 replays) and the first 10 greedy tokens (they must not change)."""
import sys, json
from pathlib import Path
import numpy as np
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from harness.gpu import load_module
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
G = eng.G
probe = load_module(Path(__file__).with_name("gemv_probe2.cu"), include_dirs=[str(Path("optimized").resolve())])
orig = (G.k_gateup, G.k_down)
variants = {"base": orig, "gateup_lb3": (probe.kernel("gateup_lb3"), orig[1]),
            "down_lb5": (orig[0], probe.kernel("down_lb5")), "down_lb6": (orig[0], probe.kernel("down_lb6")),
            "gateup_lb3+down_lb5": (probe.kernel("gateup_lb3"), probe.kernel("down_lb5"))}


def run(name, B=1, reps=40):
    G.k_gateup, G.k_down = variants[name]
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
    G.k_gateup, G.k_down = orig
    return best, toks


res, toks = {}, {}
for rnd in range(3):
    for n in variants:
        ms, t = run(n)
        res.setdefault(n, []).append(ms)
        toks.setdefault(n, t)
        print(f"{rnd} {n:22s} {ms:.4f} ms", flush=True)
eng.close()
json.dump({"ms": res, "tokens": toks}, open(sys.argv[1], "w"), indent=1)
b = float(np.mean(res["base"]))
print("\nvariant                 GPU ms/step (3 rounds)        vs base (us)  tokens == base")
for n in variants:
    print(f"{n:22s} " + " ".join(f"{v:.4f}" for v in res[n]) + f"   {1e3 * (np.mean(res[n]) - b):+7.1f}   "
          f"{toks[n] == toks['base']}")
