"""Where the fp32 64x16 forward's tail goes (session 8): a 16.8 MB D2H into pinned memory (events),
and host copies of it (numpy one thread; torch with 16 threads into touched and fresh pages)."""
import statistics, time
import numpy as np, torch
B, V = 64, 65536
src = torch.randn(B, V, device="cuda")
pinned = torch.empty(B, V, pin_memory=True)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
def med(f, n=20):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
for chunk in (B, 16, 8, 4):
    g = []
    for _ in range(20):
        s.record()
        for a in range(0, B, chunk):
            pinned[a:a + chunk].copy_(src[a:a + chunk], non_blocking=True)
        e.record(); e.synchronize(); g.append(s.elapsed_time(e))
    print(f"D2H 16.8 MB in chunks of {chunk} rows: {statistics.median(g):.3f} ms ({B*V*4/statistics.median(g)/1e6:.1f} GB/s)")
print(f"numpy copy (fresh pages): {med(lambda: pinned.numpy().copy()):.3f} ms")
touched = torch.empty(B, V); touched.view(-1)[::1024] = 0
print(f"torch copy into touched pages, {torch.get_num_threads()} threads: {med(lambda: touched.copy_(pinned)):.3f} ms")
def fresh():
    o = torch.empty(B, V); o.copy_(pinned)
print(f"torch copy into fresh pages: {med(fresh):.3f} ms")
def touch():
    o = torch.empty(B, V); o.view(-1)[::1024] = 0
print(f"allocate + touch each page: {med(touch):.3f} ms")
o2 = torch.empty(B // 8, V); o2.zero_()
print(f"torch copy of one 2 MB chunk into touched pages: {med(lambda: o2.copy_(pinned[:8])):.3f} ms")
