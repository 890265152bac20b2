"""A/B of the logits download at fp32 64x16 and 1x16 (session 8): the old one-shot copy after the
sync vs LogitsDownload (chunked, pages touched early) and its two halves, alternating in one process."""
import statistics, sys, time
import numpy as np, torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.logits_download import LogitsDownload

class OneShot:  # the session-7 path
    def __init__(self, pinned):
        self.pinned, self.chunks, self.ev = pinned, [(0, pinned.shape[0])], torch.cuda.Event()
    def enqueue(self, logits):
        self.pinned.copy_(logits, non_blocking=True); self.ev.record()
    def prepare(self): pass
    def collect(self):
        self.ev.synchronize(); return self.pinned.numpy().copy()

class NoPrefault(LogitsDownload):  # chunked, the array allocated after the GPU ends (pages untouched)
    def prepare(self): pass
    def collect(self):
        self.out = torch.empty(self.pinned.shape, dtype=torch.float32)
        return super().collect()

dtype = sys.argv[1]
cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype=dtype, progress=False)
print("torch threads", torch.get_num_threads(), flush=True)
makers = {"oneshot": OneShot, "chunked+prefault": LogitsDownload, "chunked": NoPrefault,
          "1chunk+prefault": lambda p: LogitsDownload(p, 1 << 40)}
for B, S in ((64, 16), (1, 16)):
    tokens = synthetic_prompts(cfg.vocab_size, B, S, seed=B * 1000 + S)
    want = eng.forward(tokens)
    P = eng.plans[(B, S)]
    res = {k: [] for k in makers}
    for rnd in range(5):
        for name, mk in makers.items():
            P.download = mk(P.logits_host)
            out = eng.forward(tokens)
            assert np.array_equal(out, want), name
            keep = []
            for _ in range(8):
                t = time.perf_counter(); keep.append(eng.forward(tokens)); res[name].append(time.perf_counter() - t)
    for name, ts in res.items():
        print(f"{dtype} {B}x{S} {name:18s} median {statistics.median(ts)*1e3:8.3f} ms  min {min(ts)*1e3:8.3f}  "
              f"max {max(ts)*1e3:8.3f}  n={len(ts)}", flush=True)
    # GPU time of the graph alone (events around a replay), to see the host tail
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    g = []
    for _ in range(10):
        with torch.cuda.stream(eng.tstream):
            s.record(); P.graph.replay(); e.record()
        e.synchronize(); g.append(s.elapsed_time(e))
    print(f"{dtype} {B}x{S} graph alone median {statistics.median(g):8.3f} ms", flush=True)
