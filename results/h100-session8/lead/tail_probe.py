"""Where the host time of a forward goes beside the graph (session 8): host stamps around each
step of _forward_chunk and CUDA events around the graph and the download."""
import statistics, sys, time
import numpy as np, torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

dtype = sys.argv[1]
cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype=dtype, progress=False)
for B, S in ((64, 16), (1, 16)):
    tokens = synthetic_prompts(cfg.vocab_size, B, S, seed=B * 1000 + S)
    eng.forward(tokens)
    P = eng.plans[(B, S)]
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    rows = []
    for i in range(25):
        t0 = time.perf_counter()
        tok = tokens.astype(np.int32)
        P.ids_host.numpy()[:] = tok
        with torch.cuda.stream(eng.tstream):
            ev[0].record()
            P.ids.view(B, S).copy_(P.ids_host, non_blocking=True)
            t1 = time.perf_counter()
            P.graph.replay()
            t2 = time.perf_counter()
            ev[1].record()
            P.download.enqueue(P.logits_f32)
            ev[2].record()
        t3 = time.perf_counter()
        P.download.prepare()
        t4 = time.perf_counter()
        P.download.collect()
        t5 = time.perf_counter()
        ev[2].synchronize()
        t6 = time.perf_counter()
        rows.append(dict(prep_upload=t1 - t0, replay_call=t2 - t1, enqueue=t3 - t2, prepare=t4 - t3,
                         total=t5 - t0, gpu_graph=ev[0].elapsed_time(ev[1]) / 1e3, gpu_d2h=ev[1].elapsed_time(ev[2]) / 1e3))
    print(f"{dtype} {B}x{S} medians (ms): " + "  ".join(f"{k} {statistics.median(r[k] for r in rows) * 1e3:.3f}" for k in rows[0]))
    r = {k: statistics.median(x[k] for x in rows) * 1e3 for k in rows[0]}
    print(f"   host not overlapped ~ total - gpu_graph - gpu_d2h = {r['total'] - r['gpu_graph'] - r['gpu_d2h']:.3f} ms")
    t = []
    for i in range(10):
        a = time.perf_counter(); eng.forward(tokens); t.append(time.perf_counter() - a)
    print(f"   engine.forward median {statistics.median(t) * 1e3:.3f} ms")
