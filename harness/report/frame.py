"""The summary table of one or more runs: records loaded into a pandas frame, with speedups.

Speedups are computed here, not in the worker, because they relate rows: within one
(run_id, seq_len, ranks, batch) group, `speedup_vs_phase0` divides by phase 0's samples/s and
`speedup_vs_prev` by the previous phase present (phases 0..5, then `optimized` after phase 5);
the peers (`hf`, `reference`) get only the first. Failed variants get neither. With `merge`
(several runs read as one comparison, e.g. slow phases measured in separate jobs) the
group is (seq_len, ranks) across runs, and each engine may appear once per group.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.records import EXTRA_COLUMNS, FAILED, INTERRUPTED, SUMMARY_COLUMNS, VariantRecord, record_status

GROUP = ["run_id", "seq_len", "ranks", "batch"]
MERGED_GROUP = ["seq_len", "ranks"]  # --merge: one comparison across runs (and their batch sizes)
OPTIMIZED_ORDER = 6  # `optimized` follows phase 5 in the speedup_vs_prev chain


class ReportError(ValueError):
    """A folder with no records, or records that cannot be read."""


# ---- loading ---------------------------------------------------------------------------------
def load_records(run_dirs: list[str | Path]) -> list[VariantRecord]:
    records = []
    for d in run_dirs:
        d = Path(d)
        folder = d / "records"
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            raise ReportError(f"{d}: no records/*.json; give a run folder made by `python -m harness run` or "
                              "`compare` (runs/<run-id>)")
        for f in files:
            try:
                rec = VariantRecord.read(f)
            except (OSError, ValueError, TypeError) as e:
                raise ReportError(f"{f}: not a harness record ({e})") from None
            rec.run_id = rec.run_id or d.name
            records.append(rec)
    return records


def records_frame(records: list[VariantRecord], merge: bool = False) -> pd.DataFrame:
    df = pd.DataFrame([r.summary_row() for r in records], columns=SUMMARY_COLUMNS + EXTRA_COLUMNS)
    for c in ("phase", "batch_used"):  # whole numbers with gaps, not floats
        df[c] = df[c].astype("Int64")
    if merge:
        _check_mergeable(df)
    df = add_speedups(df, MERGED_GROUP if merge else GROUP)
    runs = {r: i for i, r in enumerate(dict.fromkeys(df["run_id"]))}  # the order the runs were given
    df["_run"] = df["run_id"].map(runs)
    order = ["seq_len", "ranks", "_order", "engine"] if merge else ["_run", "seq_len", "ranks", "batch", "_order", "engine"]
    return df.sort_values(order, na_position="last", kind="stable").drop(columns=["_order", "_run"]).reset_index(drop=True)


def _check_mergeable(df: pd.DataFrame) -> None:
    """Merged runs form one comparison only on one model, and if no engine ran twice at the same
    (seq_len, ranks) (not even at two batch sizes: which would phase 0 be divided by?)."""
    models = sorted(df["model"].dropna().astype(str).unique())
    if len(models) > 1:
        raise ReportError(f"--merge: the runs measured different models ({'; '.join(models)}); speedups "
                          "across them mean nothing: report them side by side without --merge")
    key = ["engine", "dtype", "seq_len", "ranks", "workload"]
    dup = df[df.duplicated(key, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        runs = ", ".join(dup[(dup[key] == first[key]).all(axis=1)]["run_id"].astype(str))
        raise ReportError(f"--merge: {first['engine']} ({first['dtype']}) at seq_len {first['seq_len']} and "
                          f"{first['ranks']} rank(s) is in more than one run ({runs}); merge runs that measured "
                          "different variants, or report them side by side without --merge")


def _order(engine: str, phase) -> float:
    if phase is not None and not pd.isna(phase):
        return float(phase)
    return float(OPTIMIZED_ORDER) if engine == "optimized" else np.nan


def add_speedups(df: pd.DataFrame, group: list[str] = GROUP) -> pd.DataFrame:
    df = df.copy()
    df["_order"] = [_order(e, p) for e, p in zip(df["engine"], df["phase"])]
    ok = df["error"].isna() & df["samples_per_s"].notna()
    df["speedup_vs_phase0"] = np.nan
    df["speedup_vs_prev"] = np.nan
    for _, g in df.groupby(group, dropna=False):
        good = g[ok.loc[g.index]]
        base = good[good["_order"] == 0]["samples_per_s"]
        chain = good[good["_order"].notna()].sort_values("_order")
        for i in good.index:
            thr = df.at[i, "samples_per_s"]
            if len(base):
                df.at[i, "speedup_vs_phase0"] = thr / base.iloc[0]
            o = df.at[i, "_order"]
            prev = chain[chain["_order"] < o]
            if not np.isnan(o) and len(prev):
                df.at[i, "speedup_vs_prev"] = thr / prev["samples_per_s"].iloc[-1]
    return df


def write_summary_csv(df: pd.DataFrame, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def fmt(x):
    if x is None or x is pd.NA:
        return ""
    if isinstance(x, float):
        return "" if np.isnan(x) else f"{x:.4g}"
    return x


def outcome_labels(df: pd.DataFrame, not_validated: str = "-") -> list[str]:
    """One word per row: INTERRUPTED, FAILED, VALID, INVALID or `not_validated`."""
    status = df["status"] if "status" in df.columns else [None] * len(df)
    return [("INTERRUPTED" if record_status(s, e) == INTERRUPTED else "FAILED" if record_status(s, e) == FAILED
             else "VALID" if v is True else "INVALID" if v is False else not_validated)
            for v, e, s in zip(df["valid"], df["error"], status)]


def short_table(df: pd.DataFrame) -> str:
    """The few columns a terminal has room for."""
    cols = ["variant", "samples", "samples_per_s", "tokens_per_s", "latency_p50_ms", "speedup_vs_phase0",
            "gpu_util_mean", "valid"]
    t = df[cols].copy()
    t["valid"] = outcome_labels(df)
    return t.map(fmt).to_string(index=False, na_rep="")
