"""A/B of the host side of the logits download (session 8), alternating in one process:
torch's copy with all threads (the committed LogitsDownload), the same at 4 threads, numpy copies
of the chunks on a 4-thread pool, and the old one-shot numpy copy."""
import statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np, torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.logits_download import LogitsDownload

POOL = ThreadPoolExecutor(4)

class OneShot:
    def __init__(self, pinned):
        self.pinned, self.chunks, self.ev = pinned, [(0, pinned.shape[0])], torch.cuda.Event()
    def enqueue(self, logits):
        self.pinned.copy_(logits, non_blocking=True); self.ev.record()
    def prepare(self): pass
    def collect(self):
        self.ev.synchronize(); return self.pinned.numpy().copy()

class Pool(LogitsDownload):
    def collect(self):
        out, self.out = self.out, None
        o, p = out.numpy(), self.pinned.numpy()
        futs = []
        for (a, b), event in zip(self.chunks, self.done):
            event.synchronize()
            futs.append(POOL.submit(np.copyto, o[a:b], p[a:b]))
        for f in futs: f.result()
        return o

dtype = sys.argv[1]
cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype=dtype, progress=False)
nthreads = torch.get_num_threads()
makers = {"oneshot": (OneShot, nthreads), "torch-all": (LogitsDownload, nthreads), "torch-4": (LogitsDownload, 4),
          "pool-4": (Pool, nthreads)}
B, S = 64, 16
tokens = synthetic_prompts(cfg.vocab_size, B, S, seed=B * 1000 + S)
want = eng.forward(tokens)
P = eng.plans[(B, S)]
res = {k: [] for k in makers}
for rnd in range(6):
    for name, (mk, nt) in makers.items():
        torch.set_num_threads(nt)
        P.download = mk(P.logits_host)
        assert np.array_equal(eng.forward(tokens), want), name
        keep = []
        for _ in range(8):
            t = time.perf_counter(); keep.append(eng.forward(tokens)); res[name].append(time.perf_counter() - t)
torch.set_num_threads(nthreads)
for name, ts in res.items():
    print(f"{dtype} {B}x{S} {name:10s} median {statistics.median(ts)*1e3:8.3f} ms  min {min(ts)*1e3:8.3f}  n={len(ts)}", flush=True)
eng.close()
