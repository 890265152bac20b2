"""Which shard (rank of a node's expert-parallel group) holds which expert, per MoE layer (plan 4.3).

Pure Python/numpy, no GPU, no MPI: the engine feeds it per-expert loads, either routed rows or
the expected seconds of expert_cost.ExpertCostModel (any non-negative numbers).

    contiguous_placement(E, G)       the original layout: experts 0..E/G-1 on shard 0, and so on
    balanced_placement(loads, G)     greedy longest-processing-time (busiest expert first, each to the
                                     least-loaded shard that still has room: E/G experts per shard,
                                     rounded up, so memory stays equal), then pairwise moves and
                                     swaps off the busiest shard while they lower it: LPT or better
    balanced_layers(loads, G, cur)   that per layer, ties decided by the load earlier layers placed;
                                     given the placement in use, shards renamed and equal loads
                                     kept home so that fewer experts move (fewer_moves)
    shard_loads(loads, placement, G) load per shard under a placement
    critical_load(loads, placement)  sum over layers of the busiest shard's load (what EP waits for)
    imbalance(per_shard)             max / mean
    shard_order(placement, G)        experts sorted by (shard, id): the order of the exchange buffers

A placement is an int array [E]: placement[e] = shard of expert e. Every expert is placed exactly
once by construction; ties are broken by expert id and then by shard index, so every rank
computes the same placement from the same loads.
"""
from __future__ import annotations

import numpy as np


def contiguous_placement(num_experts: int, shards: int) -> np.ndarray:
    """Expert e on shard e * G // E: equal contiguous blocks (E=32, G=4: 0-7, 8-15, ...)."""
    _check(num_experts, shards)
    return (np.arange(num_experts) * shards // num_experts).astype(np.int64)


def balanced_placement(loads, shards: int, prior=None) -> np.ndarray:
    """Greedy LPT over per-expert loads: experts in descending load (lower id first on equal load)
    each go to the shard with the least load so far among those holding fewer than ceil(E / G)
    experts. Equal loads are decided by `prior` (per-shard load carried from the layers placed
    before, so that layer after layer the same shards do not take the hot experts), then by the
    lowest shard index. Then improve_busiest lowers the busiest shard where a move or swap can."""
    loads = _loads(loads)
    prior = np.zeros(shards) if prior is None else np.asarray(prior, np.float64)
    E = loads.size
    _check(E, shards)
    capacity = -(-E // shards)
    placement = np.full(E, -1, dtype=np.int64)
    shard_load = np.zeros(shards)
    shard_count = np.zeros(shards, dtype=np.int64)
    for e in np.argsort(-loads, kind="stable"):
        open_shards = np.flatnonzero(shard_count < capacity)
        s = int(open_shards[np.lexsort((open_shards, prior[open_shards], shard_load[open_shards]))[0]])
        placement[e] = s
        shard_load[s] += loads[e]
        shard_count[s] += 1
    return improve_busiest(loads, placement, shards)


def improve_busiest(loads, placement, shards: int) -> np.ndarray:
    """Local search after LPT: while moving one expert off the busiest shard (to a shard with room)
    or swapping it with a lighter expert of another shard leaves both shards below the busiest
    one's load, make the best such change. LPT alone can be 4/3 of the optimum; on 32 experts
    this closes most of that gap for a few thousand comparisons. The multiset of shard loads falls
    lexicographically at every step, so it ends; the cap is a guard."""
    loads = _loads(loads)
    placement = np.asarray(placement, np.int64).copy()
    capacity = -(-loads.size // shards)
    eps = 1e-12 * max(1.0, float(loads.sum()))
    for _ in range(loads.size * loads.size):
        per_shard = np.bincount(placement, weights=loads, minlength=shards)
        count = np.bincount(placement, minlength=shards)
        s = int(np.argmax(per_shard))
        top, best = per_shard[s], None
        for e in np.flatnonzero(placement == s):
            for t in range(shards):
                if t == s:
                    continue
                options = [(None, 0.0)] if count[t] < capacity else []
                options += [(f, loads[f]) for f in np.flatnonzero(placement == t) if loads[f] < loads[e]]
                for f, lf in options:
                    new_top = max(per_shard[s] - loads[e] + lf, per_shard[t] + loads[e] - lf)
                    if new_top < top - eps and (best is None or new_top < best[0]):
                        best = (new_top, e, t, f)
        if best is None:
            break
        _, e, t, f = best
        placement[e] = t
        if f is not None:
            placement[f] = s
    return placement


def fewer_moves(loads, placement, current, shards: int) -> np.ndarray:
    """The same per-shard loads with as many experts as possible left where `current` has them:
    two experts of equal load that would trade shards stay home, and an expert without load goes
    back to its shard when that shard has room. Balancing cares about loads only, but every
    expert that changes shard is ~44 MB (fp32, the real model) copied between ranks."""
    loads = _loads(loads)
    placement = np.asarray(placement, np.int64).copy()
    current = np.asarray(current, np.int64)
    capacity = -(-loads.size // shards)
    for e in range(loads.size):
        if placement[e] == current[e]:
            continue
        home, away = current[e], placement[e]
        partner = [f for f in np.flatnonzero((placement == home) & (current == away)) if loads[f] == loads[e]]
        if partner:
            placement[partner[0]], placement[e] = away, home
        elif loads[e] == 0 and (placement == home).sum() < capacity:
            placement[e] = home
    return placement


def shard_loads(loads, placement, shards: int) -> np.ndarray:
    """Total load per shard: sum of loads[e] over the experts e placed on it (integer loads give
    integer sums)."""
    raw = np.asarray(loads)
    per_shard = np.bincount(np.asarray(placement), weights=raw.astype(np.float64), minlength=shards)
    return per_shard.astype(np.int64) if np.issubdtype(raw.dtype, np.integer) else per_shard


def shard_order(placement, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, first): order[p] = the expert at position p when experts are sorted by (shard, id);
    shard s holds positions first[s] .. first[s+1]-1. Position of expert e = argsort(order)[e]."""
    placement = np.asarray(placement)
    order = np.lexsort((np.arange(placement.size), placement))
    first = np.concatenate([[0], np.cumsum(np.bincount(placement, minlength=shards))])
    return order.astype(np.int64), first.astype(np.int64)


def balanced_layers(loads_by_layer: dict, shards: int, current: dict | None = None) -> dict:
    """balanced_placement for each layer in key order, each layer's ties decided by the load the
    earlier layers put on each shard (so the totals per shard come out even too). With `current`
    (the placement in use), each layer's shards are renamed to keep the most experts where they
    are (shard_names_kept; the loads per shard are only permuted) and then fewer_moves."""
    carried = np.zeros(shards)
    out = {}
    for layer in sorted(loads_by_layer):
        loads = np.asarray(loads_by_layer[layer], np.float64)
        placed = balanced_placement(loads, shards, prior=carried)
        if current is not None:
            placed = fewer_moves(loads, shard_names_kept(placed, current[layer], shards), current[layer], shards)
        out[layer] = placed
        carried += shard_loads(loads, placed, shards)
    return out


def shard_names_kept(placement, current, shards: int) -> np.ndarray:
    """`placement` with its shards renamed so that most experts keep the shard `current` gives
    them: greedily, the (new shard, current shard) pair sharing the most experts first."""
    placement, current = np.asarray(placement, np.int64), np.asarray(current, np.int64)
    shared = np.zeros((shards, shards), np.int64)
    np.add.at(shared, (placement, current), 1)
    rename = np.full(shards, -1, np.int64)
    for flat in np.argsort(-shared, axis=None, kind="stable"):
        a, b = divmod(int(flat), shards)
        if rename[a] < 0 and b not in rename:
            rename[a] = b
    return rename[placement]


def critical_load(loads_by_layer: dict, placement_by_layer: dict, shards: int) -> float:
    """Sum over layers of the busiest shard's load: what an expert-parallel forward waits for,
    since every MoE layer's exchange waits for the slowest shard."""
    return float(sum(shard_loads(np.asarray(loads_by_layer[l], np.float64), placement_by_layer[l], shards).max()
                     for l in loads_by_layer))


def imbalance(per_shard) -> float:
    """max / mean of the per-shard loads (1.0 = perfectly even; G = everything on one shard)."""
    per_shard = np.asarray(per_shard, dtype=np.float64)
    mean = per_shard.mean() if per_shard.size else 0.0
    return float(per_shard.max() / mean) if mean > 0 else 1.0


def _loads(loads) -> np.ndarray:
    loads = np.asarray(loads, dtype=np.float64)
    if loads.ndim != 1:
        raise ValueError(f"loads must be one number per expert, got shape {loads.shape}")
    if (loads < 0).any():
        raise ValueError("expert loads are rows or seconds and cannot be negative")
    return loads


def _check(num_experts: int, shards: int) -> None:
    if shards < 1:
        raise ValueError(f"need at least one shard, got {shards}")
    if num_experts < shards:
        raise ValueError(f"{num_experts} experts cannot be split over {shards} shards (each shard needs at least "
                         "one); run fewer ranks per node with expert_parallel, or turn it off")
