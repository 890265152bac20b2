"""The load-balance figure of phase 5's expert parallelism, from harness run records.

    python -m harness run --engine phase5 --preset small --skew 2 --ranks 4 --samples 256 --batch 64 \\
        --no-validate --option expert_parallel=true --run-id ep-skew
    python -m harness run ... --option rebalance=never --run-id ep-skew-never      # optional
    python -m phases.phase5.balance_figure results/ep-skew [results/ep-skew-never] --out results/ep-skew

Reads each run's phase-5 record (per-rank counters): `ep_balance` holds the rows (token-expert
pairs) each shard would serve under the contiguous placement and under the balanced one, on the
same measured calibration histogram (the first forward), and the critical path (per MoE layer
the busiest shard's rows, summed: every layer's exchange waits for it) over the even share;
`ep_rows_served` is what each rank's experts actually served in the timed loop. Writes load_balance.png (left: calibration rows per
shard, contiguous vs balanced; right: measured rows per rank in the timed loop of each run) and
load_balance.json with the numbers, and prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def find_record(path: Path) -> dict:
    """A record JSON, or the one phase-5 record in a run folder's records/."""
    if path.is_file():
        return json.loads(path.read_text())
    records = sorted((path / "records").glob("*.json")) if path.is_dir() else []
    found = [json.loads(p.read_text()) for p in records]
    found = [r for r in found if r.get("engine") == "phase5"]
    if len(found) != 1:
        raise SystemExit(f"{path}: expected one phase5 record (a record .json or a run folder), found {len(found)}")
    return found[0]


def numbers_of(records: list[tuple[str, dict]]) -> dict:
    out: dict = {"measured": {}, "sources": [name for name, _ in records]}
    for name, rec in records:
        per_rank = [r.get("counters") or {} for r in rec.get("per_rank", [])]
        if not per_rank or "ep_shards" not in per_rank[0]:
            raise SystemExit(f"{name}: not an expert-parallel phase5 run (run it with --option expert_parallel=true)")
        placement = "contiguous" if rec.get("options", {}).get("rebalance") == "never" else "balanced"
        out["measured"][f"{placement} ({name})"] = [int(c.get("ep_rows_served", 0)) for c in per_rank]
        bal = per_rank[0].get("ep_balance")
        if bal and "before" not in out:
            out.update(shards=len(per_rank), before=bal["shard_rows_before"], after=bal["shard_rows_after"],
                       imbalance_before=bal["imbalance_before"], imbalance_after=bal["imbalance_after"],
                       critical_rows_before=bal["critical_rows_before"], critical_rows_after=bal["critical_rows_after"],
                       calibration_rows=bal["calibration_rows"], experts_moved=bal["experts_moved"],
                       per_layer=bal["layers"], model=rec.get("model"), seq_len=rec.get("seq_len"))
    if "before" not in out:
        raise SystemExit("no run holds a balancing report (ep_balance): run one with the default rebalance=first")
    return out


def draw(numbers: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    G = numbers["shards"]
    x = np.arange(G)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    w = 0.38
    a.bar(x - w / 2, numbers["before"], w, color="C0",
          label=f"contiguous (critical path {numbers['imbalance_before']:.2f}x even)")
    a.bar(x + w / 2, numbers["after"], w, color="C1",
          label=f"balanced (critical path {numbers['imbalance_after']:.2f}x even)")
    a.axhline(sum(numbers["before"]) / G, color="gray", ls="--", lw=1, label="even share")
    a.set(title="calibration forward: rows per shard", xlabel="shard (rank on the node)",
          ylabel="token-expert rows (all MoE layers)", xticks=x)
    a.set_ylim(0, 1.3 * max(numbers["before"] + numbers["after"]))  # room for the legend above the bars
    a.legend(fontsize=8, loc="upper left")
    runs = numbers["measured"]
    w = 0.8 / max(1, len(runs))
    for i, (label, rows) in enumerate(runs.items()):
        color = "C0" if label.startswith("contiguous") else "C1"  # as in the left panel
        b.bar(x - 0.4 + w * (i + 0.5), rows, w, label=label, color=color)
    b.set(title="timed loop: rows each rank's experts served", xlabel="rank", ylabel="token-expert rows", xticks=x)
    b.set_ylim(0, 1.3 * max(max(rows) for rows in runs.values()))
    b.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Expert placement over {G} shards: {numbers.get('model')}, seq_len {numbers.get('seq_len')}",
                 fontsize=10)
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phases.phase5.balance_figure", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (results/RUN_ID) or record .json files of phase5 "
                    "runs with --option expert_parallel=true")
    ap.add_argument("--out", help="folder for load_balance.png and load_balance.json (default: the first run's)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.runs]
    numbers = numbers_of([(p.name, find_record(p)) for p in paths])
    out = Path(args.out) if args.out else (paths[0] if paths[0].is_dir() else paths[0].parent)
    out.mkdir(parents=True, exist_ok=True)
    draw(numbers, out / "load_balance.png")
    tmp = out / "load_balance.json.tmp"
    tmp.write_text(json.dumps(numbers, indent=1))
    os.replace(tmp, out / "load_balance.json")
    print(f"rows per shard, calibration forward: contiguous {numbers['before']} -> balanced {numbers['after']}; "
          f"critical path (per layer the busiest shard, summed) {numbers['critical_rows_before']} -> "
          f"{numbers['critical_rows_after']} rows = {numbers['imbalance_before']:.2f}x -> {numbers['imbalance_after']:.2f}x "
          f"the even share; {numbers['experts_moved']} expert(s) moved")
    for label, rows in numbers["measured"].items():
        print(f"timed loop, {label}: rows served per rank {rows}")
    print(f"wrote {out / 'load_balance.png'} and {out / 'load_balance.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
