"""The expert-parallel exchange's bookkeeping (phases/phase5/exchange_plan.py), simulated on the
CPU for G ranks: every (token, slot) row reaches the rank that owns its expert, lands in that
expert's contiguous block (so each expert runs once over all ranks' rows), and its result comes
back to the exact row it left from. Ranks with no tokens (idle forwards) take part too. The same
exchange then runs through the real MPI collectives of NodeGroup under mpiexec with 3 ranks (this
file is also that per-rank program)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phases.phase5.exchange_plan import receive_plan, shard_rows
from phases.phase5.placement import balanced_placement, shard_order

H = 4  # row = (rank, token, slot, expert): every row says where it came from and where it must go


def grouped_rows(rank: int, tokens: int, k: int, E: int, position_of, rng):
    """One rank's routed rows grouped by (position, token, slot), as route + map_ids + group_dev do."""
    idx = np.array([rng.choice(E, size=k, replace=False) for _ in range(tokens)], np.int64).reshape(tokens, k)
    pairs = idx.ravel()
    grouped = np.argsort(position_of[pairs], kind="stable")  # pair = token*k + slot: stable = (token, slot)
    rows = np.stack([np.full(pairs.size, rank), grouped // k, grouped % k, pairs[grouped]], axis=1).astype(np.float32)
    counts = np.bincount(position_of[pairs], minlength=E).astype(np.int32)
    return rows, counts


def alltoallv(sends: list[np.ndarray], send_rows: list[np.ndarray]) -> list[np.ndarray]:
    """What MPI Alltoallv delivers: rank m gets, in rank order, each rank's block for m."""
    G = len(sends)
    starts = [np.concatenate([[0], np.cumsum(s)]) for s in send_rows]
    return [np.concatenate([sends[r][starts[r][m]:starts[r][m + 1]] for r in range(G)]).reshape(-1, H)
            for m in range(G)]


@pytest.mark.parametrize("G,E,k", [(2, 8, 2), (4, 8, 3), (4, 32, 4), (3, 7, 2), (8, 32, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_rows_reach_their_expert_and_come_back(G, E, k, seed):
    rng = np.random.default_rng(seed)
    placement = balanced_placement(rng.integers(0, 100, E), G)
    order, first = shard_order(placement, G)
    position_of = np.argsort(order)
    tokens = [int(t) for t in rng.integers(0, 9, G)]
    tokens[-1] = 0  # an idle rank: sends nothing, still serves its experts
    ranks = [grouped_rows(r, tokens[r], k, E, position_of, rng) for r in range(G)]
    everyone = np.stack([c for _, c in ranks])
    send_rows = [shard_rows(c, first) for _, c in ranks]
    received = alltoallv([rows for rows, _ in ranks], send_rows)

    for m in range(G):
        plan = receive_plan(everyone, first, m)
        assert np.array_equal(plan.recv_rows, [s[m] for s in send_rows]) and plan.total == len(received[m])
        device = np.full((plan.total, H), np.nan, np.float32)
        for row, at, n in plan.segments:
            device[row:row + n] = received[m][at:at + n]
        assert not np.isnan(device).any()  # every received row placed once
        mine = order[first[m]:first[m + 1]]
        assert list(mine) == sorted(mine) and all(placement[e] == m for e in mine)
        start = 0
        for e, n in zip(mine, plan.expert_rows):  # expert-major, ascending id: experts_dev's layout
            block = device[start:start + n]
            assert (block[:, 3] == e).all()
            device[start:start + n] = block * 10 + e  # "run expert e" on its rows, once
            start += n
        for row, at, n in plan.segments:  # results over the rows they came from
            received[m][at:at + n] = device[row:row + n]

    back = alltoallv(received, [receive_plan(everyone, first, m).recv_rows for m in range(G)])
    for r, (rows, _) in enumerate(ranks):
        assert np.array_equal(back[r], rows * 10 + rows[:, 3:4])  # each row's own expert, in its own place


def test_shard_rows_handles_empty_shards():
    first = np.array([0, 2, 2, 5])
    assert shard_rows([1, 2, 3, 4, 5], first).tolist() == [3, 0, 12]


def mpi_rank_program(out_dir: str) -> None:
    """One rank of the real exchange: NodeGroup's Allgather + two Alltoallv, the engine's order."""
    from mpi4py import MPI  # noqa: F401  (initialised first: NodeGroup uses COMM_WORLD)

    from phases.phase5.node_group import NodeGroup
    g = NodeGroup()
    G, E, k = g.size, 8, 2
    rng = np.random.default_rng(0)  # the same placement on every rank
    placement = balanced_placement(rng.integers(0, 100, E), G)
    order, first = shard_order(placement, G)
    rows, counts = grouped_rows(g.rank, [5, 0, 3][g.rank % 3], k, E, np.argsort(order),
                                np.random.default_rng(10 + g.rank))
    everyone = g.allgather_counts(counts)
    send_rows, plan = shard_rows(counts, first), receive_plan(everyone, first, g.rank)
    send = np.ascontiguousarray(np.vstack([rows, np.zeros((1, H), np.float32)]))  # room to spare, as staging
    recv = np.zeros((plan.total + 1, H), np.float32)
    g.alltoallv_rows(send, send_rows, recv, plan.recv_rows, H)
    got = recv[:plan.total]
    ok_experts = bool(np.isin(got[:, 3], order[first[g.rank]:first[g.rank + 1]]).all())  # only my experts' rows
    recv[:plan.total] = got * 10 + got[:, 3:4]  # "run" each row's expert
    g.alltoallv_rows(recv, plan.recv_rows, send, send_rows, H)
    seconds = g.allgather_floats([g.rank + 0.5, 2.0 * g.rank])  # what the drift checks share
    points = g.gather_object([(g.rank, g.rank * 10, 0.1)])  # what the calibration gathers at rank 0
    result = {"rank": g.rank, "size": G, "experts_ok": ok_experts,
              "round_trip_ok": bool(np.array_equal(send[:len(rows)], rows * 10 + rows[:, 3:4])),
              "agreed": g.allreduce_max(g.rank * 7), "sent": int(send_rows.sum()), "served": plan.total,
              "seconds": seconds.tolist(), "points": points, "gpus": g.allgather_object(f"bus{g.rank % 2}")}
    Path(out_dir, f"rank{g.rank}.json").write_text(json.dumps(result))
    g.free()


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None, reason="no mpiexec")
def test_real_mpi_exchange_three_ranks(tmp_path):
    pytest.importorskip("mpi4py")
    from harness.run.launch import build_command, detect_flavour, find_mpiexec, worker_env
    mpiexec = find_mpiexec()
    cmd = build_command(mpiexec, detect_flavour(mpiexec), 3, [sys.executable, __file__, str(tmp_path)])
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=worker_env(),
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    for r in results:
        assert r["size"] == 3 and r["experts_ok"] and r["round_trip_ok"] and r["agreed"] == 14
        assert r["seconds"] == [[0.5, 0.0], [1.5, 2.0], [2.5, 4.0]] and r["gpus"] == ["bus0", "bus1", "bus0"]
    assert results[0]["points"] == [[[0, 0, 0.1]], [[1, 10, 0.1]], [[2, 20, 0.1]]]
    assert results[1]["points"] is None and results[2]["points"] is None
    assert results[1]["sent"] == 0 and results[1]["served"] > 0  # the idle rank still serves its experts
    assert sum(r["sent"] for r in results) == sum(r["served"] for r in results) == (5 + 3) * 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    mpi_rank_program(sys.argv[1])
