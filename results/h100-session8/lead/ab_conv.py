"""A/B of shortconv_tiled vs the per-channel shortconv in the forward (session 8), alternating in one
process (plans dropped at each switch so the graphs are captured again with the chosen kernel)."""
import statistics, sys, time
import numpy as np, torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

dtype, shapes = sys.argv[1], [tuple(map(int, s.split("x"))) for s in sys.argv[2].split(",")]
cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype=dtype, progress=False)
for B, S in shapes:
    tokens = synthetic_prompts(cfg.vocab_size, B, S, seed=B * 1000 + S)
    res, outs = {True: [], False: []}, {}
    for rnd in range(4):
        for tiled in (True, False):
            eng.K.conv_tiled = tiled
            eng.plans.clear()
            outs[tiled] = eng.forward(tokens)
            for _ in range(8):
                t = time.perf_counter(); eng.forward(tokens); res[tiled].append(time.perf_counter() - t)
    same = np.array_equal(outs[True], outs[False])
    print(f"{dtype} {B}x{S}: tiled {statistics.median(res[True])*1e3:.3f} ms, per-channel "
          f"{statistics.median(res[False])*1e3:.3f} ms (medians of 32), logits bit-equal: {same}", flush=True)
eng.close()
