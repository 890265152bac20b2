"""Which shard (rank of a node's expert-parallel group) holds which expert, per MoE layer (plan 4.3).

Pure Python/numpy, no GPU, no MPI: the engine feeds it measured per-expert token counts.

    contiguous_placement(E, G)       the original layout: experts 0..E/G-1 on shard 0, and so on
    balanced_placement(loads, G)     greedy longest-processing-time: busiest expert first, each to the
                                     least-loaded shard that still has room (E/G experts per shard,
                                     rounded up), so hot experts are spread out and memory stays equal
    balanced_layers(loads, G)        that per layer, ties decided by the load earlier layers placed
    shard_loads(loads, placement, G) rows per shard under a placement
    critical_rows(loads, placement)  sum over layers of the busiest shard's rows (what EP waits for)
    shard_order(placement, G)        experts sorted by (shard, id): the order of the exchange buffers

A placement is an int array [E]: placement[e] = shard of expert e. Every expert is placed exactly
once by construction; ties are broken by expert id and then by shard index, so every rank
computes the same placement from the same counts.
"""
from __future__ import annotations

import numpy as np


def contiguous_placement(num_experts: int, shards: int) -> np.ndarray:
    """Expert e on shard e * G // E: equal contiguous blocks (E=32, G=4: 0-7, 8-15, ...)."""
    _check(num_experts, shards)
    return (np.arange(num_experts) * shards // num_experts).astype(np.int64)


def balanced_placement(loads, shards: int, prior=None) -> np.ndarray:
    """Greedy LPT over measured loads (token-expert pairs per expert): experts in descending load
    (lower id first on equal load) each go to the shard with the least load so far among those
    holding fewer than ceil(E / G) experts. Equal loads are decided by `prior` (per-shard load
    carried from the layers placed before, so that layer after layer the same shards do not take
    the hot experts), then by the lowest shard index."""
    loads = np.asarray(loads, dtype=np.int64)
    prior = np.zeros(shards, np.int64) if prior is None else np.asarray(prior, np.int64)
    if loads.ndim != 1:
        raise ValueError(f"loads must be one count per expert, got shape {loads.shape}")
    if (loads < 0).any():
        raise ValueError("expert loads are token counts and cannot be negative")
    E = loads.size
    _check(E, shards)
    capacity = -(-E // shards)
    placement = np.full(E, -1, dtype=np.int64)
    shard_load = np.zeros(shards, dtype=np.int64)
    shard_count = np.zeros(shards, dtype=np.int64)
    for e in np.argsort(-loads, kind="stable"):
        open_shards = np.flatnonzero(shard_count < capacity)
        s = int(open_shards[np.lexsort((open_shards, prior[open_shards], shard_load[open_shards]))[0]])
        placement[e] = s
        shard_load[s] += loads[e]
        shard_count[s] += 1
    return placement


def shard_loads(loads, placement, shards: int) -> np.ndarray:
    """Total load per shard: sum of loads[e] over the experts e placed on it."""
    return np.bincount(np.asarray(placement), weights=np.asarray(loads, dtype=np.float64),
                       minlength=shards).astype(np.int64)


def shard_order(placement, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, first): order[p] = the expert at position p when experts are sorted by (shard, id);
    shard s holds positions first[s] .. first[s+1]-1. Position of expert e = argsort(order)[e]."""
    placement = np.asarray(placement)
    order = np.lexsort((np.arange(placement.size), placement))
    first = np.concatenate([[0], np.cumsum(np.bincount(placement, minlength=shards))])
    return order.astype(np.int64), first.astype(np.int64)


def balanced_layers(loads_by_layer: dict, shards: int) -> dict:
    """balanced_placement for each layer in key order, each layer's ties decided by the load the
    earlier layers put on each shard (so the totals per shard come out even too)."""
    carried = np.zeros(shards, np.int64)
    out = {}
    for layer in sorted(loads_by_layer):
        out[layer] = balanced_placement(loads_by_layer[layer], shards, prior=carried)
        carried += shard_loads(loads_by_layer[layer], out[layer], shards)
    return out


def critical_rows(loads_by_layer: dict, placement_by_layer: dict, shards: int) -> int:
    """Sum over layers of the busiest shard's rows: what an expert-parallel forward waits for,
    since every MoE layer's exchange waits for the slowest shard."""
    return int(sum(shard_loads(loads_by_layer[l], placement_by_layer[l], shards).max() for l in loads_by_layer))


def imbalance(per_shard) -> float:
    """max / mean of the per-shard loads (1.0 = perfectly even; G = everything on one shard)."""
    per_shard = np.asarray(per_shard, dtype=np.float64)
    mean = per_shard.mean() if per_shard.size else 0.0
    return float(per_shard.max() / mean) if mean > 0 else 1.0


def _check(num_experts: int, shards: int) -> None:
    if shards < 1:
        raise ValueError(f"need at least one shard, got {shards}")
    if num_experts < shards:
        raise ValueError(f"{num_experts} experts cannot be split over {shards} shards (each shard needs at least "
                         "one); run fewer ranks per node with expert_parallel, or turn it off")
