"""Phase 5's weight loading over a node (phases/phase5/node_loading.py) under a real mpiexec with 2
ranks, on the CPU: with load="bcast" only local rank 0 reads the checkpoint and the other rank
receives every tensor bit-identical (the stored bf16 bytes cross, each rank converts); with expert parallelism each expert reaches only its owner;
load="each" reads on every rank (the original). This file is also the per-rank program
(`python tests/test_phase5_loading.py OUT MODE PARALLEL` under mpiexec)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def rank_program(out_dir: str, mode: str, parallel: str) -> None:
    """One rank: load the tiny synthetic checkpoint through the node source and record what came."""
    from mpi4py import MPI  # noqa: F401  (MPI initialised first: NodeGroup uses COMM_WORLD)

    import numpy as np

    from harness.checkpoints.base import expected_shapes
    from harness.config import get_preset
    from harness.checkpoints.synthetic import synthetic_checkpoint
    from phases.phase5.expert_parallel import EXPERT_NAME
    from phases.phase5.node_group import NodeGroup
    from phases.phase5.node_loading import NodeTensorSource
    from phases.phase5.placement import contiguous_placement

    cfg = get_preset("tiny")
    ckpt = synthetic_checkpoint(cfg, seed=4)
    reads = []
    raw = ckpt.raw
    ckpt.raw = lambda name: reads.append(name) or raw(name)  # count checkpoint reads
    group = NodeGroup()
    shards = contiguous_placement(cfg.num_experts, group.size)

    def owner(name):
        m = EXPERT_NAME.match(name)
        return int(shards[int(m.group(2))]) if (m and parallel == "ep") else None

    source = NodeTensorSource(ckpt, group, mode)
    names = list(expected_shapes(cfg))
    got = dict(source.tensors(names, owner))
    wrong = [n for n, a in got.items() if not np.array_equal(a, raw(n).float().numpy()) or a.dtype != np.float32]
    result = {"rank": group.rank, "size": group.size, "names": sorted(got), "wrong": wrong, "reads": len(reads),
              "stats": source.stats, "expected": sorted(n for n in names if owner(n) in (None, group.rank))}
    Path(out_dir, f"rank{group.rank}.json").write_text(json.dumps(result))
    group.free()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    rank_program(*sys.argv[1:4])
    sys.exit(0)

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                                 reason="no mpiexec on PATH (pip install mpich)")]
pytest.importorskip("mpi4py")


def run_ranks(tmp_path, mode: str, parallel: str, ranks: int = 2) -> list[dict]:
    from harness.run.launch import build_command, detect_flavour, find_mpiexec, worker_env
    mpiexec = find_mpiexec()
    out = tmp_path / f"{mode}-{parallel}"
    out.mkdir()
    cmd = build_command(mpiexec, detect_flavour(mpiexec), ranks, [sys.executable, __file__, str(out), mode, parallel])
    env = worker_env() | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def tensor_bytes(names, stored: bool = False) -> int:
    """fp32 bytes of `names`, or (stored=True) the synthetic checkpoint's stored bytes: bf16, but
    expert_bias in fp32."""
    from harness.checkpoints.base import expected_shapes, keeps_fp32
    from harness.config import get_preset
    shapes = expected_shapes(get_preset("tiny"))
    total = 0
    for n in names:
        k = 4 if (keeps_fp32(n) or not stored) else 2
        for d in shapes[n]:
            k *= d
        total += k
    return total


def test_bcast_one_reader_per_node_same_values(tmp_path):
    r0, r1 = run_ranks(tmp_path, "bcast", "all")
    for r in (r0, r1):
        assert r["size"] == 2 and r["wrong"] == [] and r["names"] == r["expected"]
    stored = tensor_bytes(r0["names"], stored=True)  # bf16 crosses, not fp32: half the bytes
    assert r0["reads"] == len(r0["names"]) and r1["reads"] == 0  # rank 1 never touches the checkpoint
    assert r0["stats"]["load_bytes_read"] == stored < tensor_bytes(r0["names"]) * 0.51
    assert r1["stats"]["load_bytes_read"] == 0
    assert r1["stats"]["load_bytes_received"] == stored and r0["stats"]["load_bytes_sent"] == stored
    print(f"\nbcast, 2 ranks: rank 0 read {r0['stats']['load_bytes_read']:,} B and sent "
          f"{r0['stats']['load_bytes_sent']:,} B; rank 1 read 0 B, received {r1['stats']['load_bytes_received']:,} B")


def test_each_rank_reads_everything_itself(tmp_path):
    r0, r1 = run_ranks(tmp_path, "each", "all")
    for r in (r0, r1):
        assert r["wrong"] == [] and r["names"] == r["expected"] and r["reads"] == len(r["names"])
        assert r["stats"]["load_bytes_received"] == 0 and r["stats"]["load_bytes_sent"] == 0
    assert r0["stats"]["load_bytes_read"] == r1["stats"]["load_bytes_read"] == tensor_bytes(r0["names"], stored=True)


@pytest.mark.parametrize("mode", ["bcast", "each"])
def test_expert_parallel_ranks_get_only_their_experts(tmp_path, mode):
    r0, r1 = run_ranks(tmp_path, mode, "ep")
    for r in (r0, r1):
        assert r["wrong"] == [] and r["names"] == r["expected"]
    mine0, mine1 = ({n for n in r["names"] if ".experts." in n} for r in (r0, r1))
    assert mine0 and mine1 and not mine0 & mine1  # split, nothing twice
    assert all(".experts.0." in n or ".experts.1." in n or ".experts.2." in n or ".experts.3." in n for n in mine0)
    dense0 = set(r0["names"]) - mine0
    assert dense0 == set(r1["names"]) - mine1  # dense weights everywhere
    if mode == "bcast":
        assert r1["reads"] == 0
        assert r1["stats"]["load_bytes_received"] == tensor_bytes(r1["names"], stored=True)  # only what it holds
    else:
        assert r1["reads"] == len(r1["names"])  # reads its own part only
