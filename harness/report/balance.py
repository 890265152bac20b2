"""The load-balance figure of phase 5's expert placement, from harness run records.

    python -m harness run --engine phase5 --preset small --skew 2 --ranks 4 --samples 256 --batch 64 \\
        --no-validate --option expert_parallel=true --run-id ep-skew
    python -m harness run ... --option rebalance=never --run-id ep-skew-never      # optional
    python -m harness.report.balance results/ep-skew [results/ep-skew-never] --out results/ep-skew

Reads each run's phase-5 record, its `expert_placement` (phases/phase5/measured_placement.py, per
node; the first node is drawn): `calibration` holds the expected seconds (the fitted cost model on
the rows each expert received in the calibration forwards) each shard would carry under the
placement the calibration started from (contiguous) and under the one it chose, and the critical
path (per MoE layer the busiest shard, summed: every layer's exchange waits for it) over the even
share; `per_rank` holds what each rank's experts did in the timed loop: rows served, seconds the
cost model predicts for them, and seconds CUDA events measured. Writes load_balance.png (left:
calibration, contiguous vs measured-load placement; right: timed loop per rank, measured and
predicted, for each run) and load_balance.json with the numbers, and prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.atomic import write_text_atomic


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
        nodes = rec.get("expert_placement") or {}
        if not nodes:
            raise SystemExit(f"{name}: not an expert-parallel phase5 run (run it with --option expert_parallel=true)")
        node = next(iter(nodes.values()))
        placement = "contiguous" if rec.get("options", {}).get("rebalance") == "never" else "measured load"
        ranks = node["per_rank"]
        out["measured"][f"{placement} ({name})"] = {
            "rows": [r["rows_served"] for r in ranks], "measured_s": [r["measured_s"] for r in ranks],
            "predicted_s": [r["predicted_s"] for r in ranks], "imbalance_measured": node["imbalance_measured"],
            "imbalance_predicted": node["imbalance_predicted"], "replacements": len(node["replacements"])}
        cal = node.get("calibration")
        if cal and cal.get("applied") and "before" not in out:
            out.update(shards=len(ranks), before=cal["shard_seconds_before"], after=cal["shard_seconds_after"],
                       rows_before=cal["shard_rows_before"], rows_after=cal["shard_rows_after"],
                       imbalance_before=cal["imbalance_before"], imbalance_after=cal["imbalance_after"],
                       critical_seconds_before=cal["critical_seconds_before"],
                       critical_seconds_after=cal["critical_seconds_after"], calibration_rows=cal["rows"],
                       experts_moved=cal["experts_moved"], cost_model=cal["cost_model"], per_layer=cal["layers"],
                       model=rec.get("model"), seq_len=rec.get("seq_len"))
    if "before" not in out:
        raise SystemExit("no run placed its experts by measured load: run one without --option rebalance=never")
    return out


def draw(numbers: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    G = numbers["shards"]
    x = np.arange(G)
    ms = ms_list
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    w = 0.38
    a.bar(x - w / 2, ms(numbers["before"]), w, color="C0",
          label=f"contiguous (critical path {numbers['imbalance_before']:.2f}x even)")
    a.bar(x + w / 2, ms(numbers["after"]), w, color="C1",
          label=f"measured load (critical path {numbers['imbalance_after']:.2f}x even)")
    a.axhline(1e3 * sum(numbers["before"]) / G, color="gray", ls="--", lw=1, label="even share")
    a.set(title="calibration: expected expert time per shard", xlabel="shard (rank on the node)",
          ylabel="ms (cost model, all MoE layers)", xticks=x)
    a.set_ylim(0, 1.3 * max(ms(numbers["before"] + numbers["after"])))  # room for the legend above the bars
    a.legend(fontsize=8, loc="upper left")
    runs = numbers["measured"]
    w = 0.8 / max(1, len(runs))
    for i, (label, run) in enumerate(runs.items()):
        color = "C0" if label.startswith("contiguous") else "C1"  # as in the left panel
        at = x - 0.4 + w * (i + 0.5)
        b.bar(at, ms(run["measured_s"]), w, color=color,
              label=f"{label}: measured, {run['imbalance_measured']:.2f}x even")
        b.bar(at, ms(run["predicted_s"]), w, fill=False, edgecolor="black", ls="--", lw=1,
              label="predicted" if i == 0 else None)
    b.set(title="timed loop: each rank's expert time", xlabel="rank", ylabel="ms (CUDA events)", xticks=x)
    b.set_ylim(0, 1.3 * max(max(ms(r["measured_s"] + r["predicted_s"])) for r in runs.values()))
    b.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Expert placement over {G} shards: {numbers.get('model')}, seq_len {numbers.get('seq_len')}",
                 fontsize=10)
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report.balance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (results/RUN_ID) or record .json files of phase5 "
                    "runs with expert parallelism on")
    ap.add_argument("--out", help="folder for load_balance.png and load_balance.json (default: the first run's)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.runs]
    numbers = numbers_of([(p.name, find_record(p)) for p in paths])
    out = Path(args.out) if args.out else (paths[0] if paths[0].is_dir() else paths[0].parent)
    out.mkdir(parents=True, exist_ok=True)
    draw(numbers, out / "load_balance.png")
    write_text_atomic(out / "load_balance.json", json.dumps(numbers, indent=1))
    print(f"calibration ({numbers['calibration_rows']} rows), expected ms per shard: contiguous "
          f"{[round(v, 3) for v in ms_list(numbers['before'])]} -> measured load "
          f"{[round(v, 3) for v in ms_list(numbers['after'])]}; critical path {numbers['imbalance_before']:.2f}x -> "
          f"{numbers['imbalance_after']:.2f}x the even share; {numbers['experts_moved']} expert(s) moved")
    for label, run in numbers["measured"].items():
        print(f"timed loop, {label}: rows served per rank {run['rows']}, measured ms "
              f"{[round(v, 3) for v in ms_list(run['measured_s'])]} ({run['imbalance_measured']:.2f}x even), "
              f"predicted ms {[round(v, 3) for v in ms_list(run['predicted_s'])]}")
    print(f"wrote {out / 'load_balance.png'} and {out / 'load_balance.json'}")
    return 0


def ms_list(seconds) -> list[float]:
    return [1e3 * s for s in seconds]


if __name__ == "__main__":
    sys.exit(main())
