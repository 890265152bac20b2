"""Throughput regression gate: CURRENT against REFERENCE, each a run folder or a summary.csv.

Rows match on (engine, dtype, seq_len, ranks, batch). A check fails when
  * a matched variant's tokens/s fell by more than `max_drop` (a fraction: 0.05 = 5%);
  * a variant of CURRENT failed to run (error), matched or not;
  * a variant of CURRENT was INTERRUPTED (Ctrl-C) before it finished: it has no measurement to
    pass the gate with (`--resume` measures it); an interrupted REFERENCE row counts as absent;
  * a variant of CURRENT is INVALID, of any dtype, matched or not, whatever its reference row
    says: every dtype has a gate it can pass (harness.jobs.gate: fp32 at 1e-3, bf16 and fp16
    against plain torch in their dtype), so INVALID means wrong outputs.
Rows only in REFERENCE are listed as missing (failing only with require_all). Several rows
with one key (side-by-side runs in one CSV) are pooled: median throughput, all must be valid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.records import FAILED, INTERRUPTED, OK, record_status

KEY = ["engine", "dtype", "workload", "seq_len", "ranks", "batch"]  # prefill and generate never mix


class RegressError(ValueError):
    """Inputs that cannot be compared (missing files, nothing in common)."""


def parse_drop(text: str) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a bare number of 1 or more is refused as ambiguous."""
    t = str(text).strip()
    try:
        v = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise RegressError(f"--max-drop {t!r}: expected a percentage like 5% or a fraction like 0.05") from None
    if not t.endswith("%") and v >= 1:
        raise RegressError(f"--max-drop {t}: a fraction below 1 (0.05) or a percentage (5%); did you mean {t}%?")
    if not 0 <= v < 1:
        raise RegressError(f"--max-drop {t}: must be between 0% and 100%")
    return v


def load_summary(path: str | Path) -> pd.DataFrame:
    """A summary.csv, or a run folder (its summary.csv, else rebuilt from its records)."""
    path = Path(path)
    if path.is_dir():
        csv = path / "summary.csv"
        if csv.is_file():
            path = csv
        else:
            from harness.report.frame import ReportError, load_records, records_frame
            try:
                return _normalise(records_frame(load_records([path])), str(path))
            except ReportError as e:
                raise RegressError(f"{e}; or give its summary.csv") from None
    if not path.is_file():
        raise RegressError(f"{path}: no such run folder or summary.csv")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RegressError(f"{path}: not a readable CSV ({e})") from None
    return _normalise(df, str(path))


def _as_bool(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    return None  # empty: not validated


def _normalise(df: pd.DataFrame, where: str) -> pd.DataFrame:
    df = df.copy()
    if "workload" not in df.columns:  # summaries written before the generate workload existed
        df["workload"] = "prefill"
    missing = [c for c in KEY + ["tokens_per_s", "valid"] if c not in df.columns]
    if missing:
        raise RegressError(f"{where}: not a harness summary (no column(s) {', '.join(missing)})")
    df["workload"] = df["workload"].fillna("prefill").astype(str)
    df["dtype"] = df["dtype"].fillna("").astype(str)
    df["engine"] = df["engine"].astype(str)
    for c in ("seq_len", "ranks", "batch"):
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(-1).astype(int)
    df["valid"] = [_as_bool(v) for v in df["valid"]]
    if "error" not in df.columns:
        df["error"] = None
    df["error"] = [e if isinstance(e, str) and e.strip() else None for e in df["error"]]
    status = df["status"] if "status" in df.columns else [None] * len(df)
    df["status"] = [record_status(s, e) for s, e in zip(status, df["error"])]
    df["tokens_per_s"] = pd.to_numeric(df["tokens_per_s"], errors="coerce")
    return df


def _pool(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, g in df.groupby(KEY, dropna=False):
        err = next((e for e in g["error"] if isinstance(e, str) and e), None)
        vals = list(g["valid"])
        valid = False if False in vals else (True if True in vals else None)
        statuses = set(g["status"]) if "status" in g.columns else set()  # frames not read by load_summary
        status = next((s for s in (FAILED, INTERRUPTED) if s in statuses), OK)
        rows.append(dict(zip(KEY, key), tokens_per_s=g["tokens_per_s"].median(), valid=valid, error=err,
                         status=status, runs=len(g)))
    return pd.DataFrame(rows, columns=KEY + ["tokens_per_s", "valid", "error", "status", "runs"])


def _label(row) -> str:
    dtype = f" {row['dtype']}" if row["dtype"] else ""
    workload = " generate" if row.get("workload") == "generate" else ""
    return f"{row['engine']}{dtype}{workload} seq_len={row['seq_len']} ranks={row['ranks']} batch={row['batch']}"


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def compare(current: pd.DataFrame, reference: pd.DataFrame, max_drop: float, require_all: bool = False) -> Verdict:
    cur, ref = _pool(current), _pool(reference)
    ref_by_key = {tuple(r[k] for k in KEY): r for _, r in ref.iterrows() if r["status"] != INTERRUPTED}
    cur_keys = set()
    v = Verdict()
    matched = 0
    for _, c in cur.iterrows():
        key = tuple(c[k] for k in KEY)
        cur_keys.add(key)
        r = ref_by_key.get(key)
        label = _label(c)
        matched += int(r is not None)
        if c["status"] == INTERRUPTED:
            v.failures.append(f"{label}: INTERRUPTED before it finished: not measured (`--resume` the run to "
                              "measure it)")
            continue
        if isinstance(c["error"], str):
            first = c["error"].strip().splitlines()[0]
            v.failures.append(f"{label}: FAILED to run ({first})")
            continue
        if c["valid"] is False:
            was = "no reference row" if r is None else (
                "INVALID in the reference too" if r["valid"] is False else
                f"the reference was {'VALID' if r['valid'] else 'not validated'}")
            v.failures.append(f"{label}: validation failed (INVALID; {was})")
            continue
        if r is None:
            v.warnings.append(f"{label}: not in the reference; not compared")
            continue
        ct, rt = c["tokens_per_s"], r["tokens_per_s"]
        if not (np.isfinite(ct) and np.isfinite(rt) and rt > 0):
            v.warnings.append(f"{label}: no throughput to compare ({ct} vs {rt})")
            continue
        change = ct / rt - 1.0
        text = f"{label}: {ct:.4g} vs {rt:.4g} tokens/s ({100 * change:+.1f}%)"
        if -change > max_drop:
            v.failures.append(text + f", a drop beyond {100 * max_drop:g}%")
        else:
            v.passes.append(text)
    for key, r in ref_by_key.items():
        if key not in cur_keys:
            msg = f"{_label(r)}: in the reference, missing here"
            (v.failures if require_all else v.warnings).append(msg)
    if matched == 0 and not v.failures:
        raise RegressError(
            "no variant matched between the two (rows match on engine, dtype, seq_len, ranks, batch).\n"
            f"  current:   {', '.join(sorted(_label(r) for _, r in cur.iterrows())) or 'empty'}\n"
            f"  reference: {', '.join(sorted(_label(r) for _, r in ref.iterrows())) or 'empty'}")
    return v
