"""Session 10, call 9: what the router folded through out_proj would save. The decode graph with each
MoE layer's norm_route_cluster replaced by norm_route_folded (one block: ffn_norm, then routing from
precomputed logits) fed a fixed random logit buffer (timing only: the out_proj launch does not yet
compute the logits, and the routing is arbitrary but valid), alternating with the engine's graph."""
import sys, json
import numpy as np
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from harness.gpu import launch
from optimized.kernels import ptr, i32, f32
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
G = eng.G
k_folded = G.k_norm_route_split.module.kernel("norm_route_folded_bf16")
r = torch.randn(2, 2 * cfg.num_experts, device="cuda")
orig = G.norm_route


def folded(x, y, w, h, eps, gate, bias, k, norm_topk, scale, idx, wts):
    E, H = gate.shape
    T = x.numel() // H
    launch(k_folded, (1,), (H // 8,), (ptr(x), ptr(y), ptr(w), ptr(h), f32(eps), ptr(r), ptr(bias), i32(H), i32(E),
                                       i32(k), i32(bool(norm_topk)), f32(scale), ptr(idx), ptr(wts), i32(T)),
           stream=G.stream, pdl=G.pdl)


def run(name, reps=40):
    G.norm_route = folded if name == "folded" else orig
    eng._dec = None
    torch.cuda.empty_cache()
    try:
        logits = eng.prefill(synthetic_prompts(cfg.vocab_size, 1, 16, seed=12), max_new_tokens=64)
        D = eng._dec
        nxt = logits.argmax(1)
        for _ in range(10):
            nxt = eng.decode_greedy(nxt)
    finally:
        G.norm_route = orig
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
    return best


res = {}
for rnd in range(3):
    for n in ("base", "folded"):
        res.setdefault(n, []).append(run(n))
        print(f"{rnd} {n:8s} {res[n][-1]:.4f} ms", flush=True)
eng.close()
json.dump(res, open(sys.argv[1], "w"), indent=1)
print(f"\nfolded - base: {1e3 * (np.mean(res['folded']) - np.mean(res['base'])):+.1f} us per step "
      f"(base {np.mean(res['base']):.4f}, folded {np.mean(res['folded']):.4f} ms)")
