"""Session 10, call 1: what removing links from the batch-1 decode chain would save.
Each variant changes some launches of the decode step, captures the decode graph, and times the graph
alone (best of 3 x 40 back-to-back replays). Variants marked (timing only) compute wrong values by
construction; `lastnorm` is a correct fusion and its first 8 greedy tokens are checked against base."""
import sys, json
from pathlib import Path
import numpy as np
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from harness.gpu import launch, load_module
from optimized.kernels import ptr, i32, f32
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
K, G, DK = eng.K, eng.G, eng._decode_kernels()
W = eng.W
probe = load_module(Path(__file__).with_name("gemv_probe.cu"), include_dirs=[str(Path("optimized").resolve())])
k_noroute = probe.kernel("norm_route_split_noroute_bf16")
k_nocount = probe.kernel("norm_route_split_nocount_bf16")
k_lastnorm = probe.kernel("moe_gemv_down_lastnorm_bf16")
count = torch.zeros(1, dtype=torch.int32, device=eng.W.embed.device)

orig_nrs = G.k_norm_route_split
orig = {(K, "add_norm"): K.add_norm, (G, "moe_down"): G.moe_down, (DK, "qk_norm_rope_step"): DK.qk_norm_rope_step,
        (DK, "_go"): DK._go, (K, "embedding"): K.embedding, (DK, "advance_lengths"): DK.advance_lengths}
layer_of_w2 = {L["w2"].data_ptr(): i for i, L in enumerate(W.layers) if "w2" in L and cfg.is_moe(i)}
pending = []  # the norm weight the last fused down already applied


def restore():
    G.k_norm_route_split = orig_nrs
    for (o, name), fn in orig.items():
        setattr(o, name, fn)


def fused_down(act, w2, ys, idx, wts):
    i = layer_of_w2[w2.data_ptr()]
    nw = W.layers[i + 1]["op_norm"] if i + 1 < len(W.layers) else W.final_norm
    P = eng._dec.work
    E, N, Kd = w2.shape
    npairs = idx.numel()
    launch(k_lastnorm, ((N + 7) // 8, npairs), (256,),
           (ptr(act), ptr(w2), ptr(ys), ptr(idx), ptr(wts), i32(N), i32(Kd), ptr(P.x), ptr(nw), ptr(P.h),
            f32(cfg.norm_eps), ptr(count), i32(npairs // cfg.num_experts_per_tok)), stream=G.stream, pdl=G.pdl)
    pending.append(nw.data_ptr())


def skip_fused_norm(x, y, nadd, w, *a, **k):
    if pending and pending[-1] == w.data_ptr():
        pending.pop()
        return
    orig[(K, "add_norm")](x, y, nadd, w, *a, **k)


def go_no_combine(kernel, *a, **k):
    if kernel is DK.k_combine:
        return
    orig[(DK, "_go")](kernel, *a, **k)


def apply(name):
    if "noroute" in name:
        G.k_norm_route_split = k_noroute
    if "nocount" in name:
        G.k_norm_route_split = k_nocount
    if "lastnorm" in name:
        G.moe_down = fused_down
        K.add_norm = skip_fused_norm
    if "no_qknr" in name:
        DK.qk_norm_rope_step = lambda *a, **k: None
    if "no_combine" in name:
        DK._go = go_no_combine
    if "no_embed_adv" in name:
        K.embedding = lambda *a, **k: None
        DK.advance_lengths = lambda *a, **k: None


def run(name, reps=40):
    restore()
    eng._dec = None
    torch.cuda.empty_cache()
    logits = eng.prefill(synthetic_prompts(cfg.vocab_size, 1, 16, seed=12), max_new_tokens=64)
    D = eng._dec
    apply(name)
    nxt = logits.argmax(1)
    toks = []
    for _ in range(10):  # eager + capture with the changed launches, then replays
        nxt = eng.decode_greedy(nxt)
        toks.append(int(nxt[0]))
    restore()
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


names = ["base", "noroute", "nocount", "lastnorm", "lastnorm+nocount", "no_qknr", "no_combine", "no_embed_adv"]
res = {n: [] for n in names}
toks = {}
for rnd in range(2):
    for n in names:
        ms, t = run(n)
        res[n].append(ms)
        toks.setdefault(n, t)
        print(f"{rnd} {n:18s} {ms:.4f} ms  tokens {t}", flush=True)
json.dump({"ms": res, "tokens": toks}, open(sys.argv[1], "w"), indent=1)
b = float(np.mean(res["base"]))
print("\nvariant              GPU ms/step (2 rounds)   vs base (us)   first 10 greedy tokens == base")
for n in names:
    m = float(np.mean(res[n]))
    print(f"{n:20s} {res[n][0]:.4f} {res[n][1]:.4f}      {1e3 * (m - b):+7.1f}        {toks[n] == toks['base']}")
