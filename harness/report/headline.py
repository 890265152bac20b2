"""The headline of a run: each shape's engine beside its peer, the ratio and the share of the floor.

Rows come from the records' frame, by the role each variant plays (part.json's roles; the engine
itself for folders without one):
  * prefill: `optimized` vs `hf` at each (dtype, batch x seq_len), tokens/s; the ratio is
    optimized / hf; % of floor is optimized's tokens/s over the lower of its compute and
    weight-streaming ceilings (measure.floors) at batch_used x seq_len tokens per forward;
  * decode: `optimized` vs `hf` inter-token latency p50 (the ratio is hf / optimized, so > 1 means
    optimized is faster), % of the decode floor from the record;
  * ladder: each phase vs the one before it (samples/s, fp32), phase 5 vs phase 0, and phase 5 with
    expert parallelism (label `ep`) vs phase 5 without;
  * accuracy (parts of kind "accuracy"): optimized and hf against the fp32 answers: max abs error,
    KL divergence, top-1 and top-5 agreement and the bf16 gate, read from the records when present.
`compact` marks the rows the project README shows. publish and report.html both render these rows.
"""
from __future__ import annotations

import math

import pandas as pd

from harness.engines.base import PHASE_ENGINES
from harness.jobs.gate import low_precision
from harness.measure.floors import PEAK_FLOPS, prefill_floor
from harness.report.part_meta import PartMeta

PEERS = ("optimized", "hf")
COLUMNS = ["kind", "shape", "engine", "peer", "engine_value", "peer_value", "unit", "ratio", "pct_floor", "bound",
           "validity", "compact", "order"]
ACCURACY_FIELDS = [("max_abs_err", "max err", "{:.3g}"), ("kl_mean", "KL", "{:.3g}"),
                   ("top1_agreement", "top-1", "{:.1%}"), ("top5_agreement", "top-5", "{:.1%}")]


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def cell(row, key):
    """row[key] of a frame row (or dict), None where absent, NaN or NA."""
    if row is None:
        return None
    x = row.get(key) if hasattr(row, "get") else None
    return None if _missing(x) else x


def with_roles(df: pd.DataFrame, meta: PartMeta | None) -> pd.DataFrame:
    """df plus `role` (the engine the comparison planned), `role_dtype` and `label` columns."""
    roles = meta.roles if meta else {}
    df = df.copy()
    df["role"] = [roles.get(v, {}).get("role") or e for v, e in zip(df["variant"], df["engine"])]
    df["role_dtype"] = [roles.get(v, {}).get("dtype") or d for v, d in zip(df["variant"], df["dtype"])]
    df["label"] = [roles.get(v, {}).get("label") for v in df["variant"]]
    return df


def model_config_of(df: pd.DataFrame, meta: PartMeta | None):
    """The measured model's config: part.json's, else a preset named in the records' model label."""
    if meta is not None and meta.model_config:
        return meta.config()
    from harness.config import PRESETS
    labels = " ".join(str(m) for m in df["model"].dropna().unique())
    named = [p for p in PRESETS if p in labels]
    return PRESETS[max(named, key=len)] if named else None


def validity(row) -> str:
    """VALID / INVALID (n of N) by the gate of the row's dtype (harness.jobs.gate: fp32 at 1e-3,
    bf16 against plain torch bf16; a generate row also by its greedy tokens in fp32), FAILED, or
    not validated."""
    if row is None:
        return "not run"
    if isinstance(cell(row, "error"), str):
        return "FAILED"
    valid = cell(row, "valid")
    if valid is None:
        return "not validated"
    if valid:
        return "VALID"
    bad = cell(row, "invalid_samples")
    k = cell(row, "greedy_first_divergence")
    if cell(row, "workload") == "generate" and k is not None and low_precision(cell(row, "dtype")) is None:
        return f"INVALID (greedy differs at step {int(k)})"
    return f"INVALID ({int(bad)} of {int(cell(row, 'samples') or 0)})" if bad is not None else "INVALID"


def floor_of(row, cfg, dtype):
    """(% of the floor, bound) of a prefill row; (None, '') where no floor applies."""
    tps = cell(row, "tokens_per_s")
    if cfg is None or tps is None or dtype not in PEAK_FLOPS:
        return None, ""
    per_call = cell(row, "batch_used") or cell(row, "batch") or 1
    f = prefill_floor(cfg, dtype, int(row["seq_len"]), int(per_call), cell(row, "routed_bytes"),
                      gpus=int(cell(row, "gpus") or 1))
    return f.pct(tps), f.bound


def _row(kind, shape, engine, peer, e, p, unit, value_key, higher_is_better=True, pct=None, bound="",
         compact=False, order=0.0) -> dict:
    ev, pv = cell(e, value_key), cell(p, value_key)
    ratio = None
    if ev is not None and pv is not None and ev > 0 and pv > 0:
        ratio = ev / pv if higher_is_better else pv / ev
    return {"kind": kind, "shape": shape, "engine": engine, "peer": peer, "engine_value": ev, "peer_value": pv,
            "unit": unit, "ratio": ratio, "pct_floor": pct, "bound": bound,
            "validity": f"{validity(e)} / {validity(p)}" if peer else validity(e), "compact": compact,
            "order": order}


def _shape(dtype, batch, seq_len, ranks=1, label=None) -> str:
    return (f"{dtype} {batch}x{seq_len}" + (f", {ranks} ranks" if ranks > 1 else "")
            + (f" ({label})" if label else ""))


def _by_key(rows: pd.DataFrame, key: list[str]) -> dict:
    """key tuple -> {role: row}, the first row of each role (rows of one run come once each)."""
    out: dict = {}
    for _, r in rows.iterrows():
        k = tuple(None if _missing(r[c]) else r[c] for c in key)
        out.setdefault(k, {}).setdefault(r["role"], r)
    return out


def _peer_rows(df: pd.DataFrame, cfg) -> list[dict]:
    rows = []
    prefill = df[df["role"].isin(PEERS) & (df["workload"] != "generate")]
    for (dtype, seq_len, batch, ranks, label), got in _by_key(prefill, ["role_dtype", "seq_len", "batch", "ranks",
                                                                        "label"]).items():
        e, p = got.get("optimized"), got.get("hf")
        pct, bound = floor_of(e, cfg, dtype)
        rows.append(_row("prefill", _shape(dtype, batch, seq_len, ranks, label), "optimized", "hf", e, p, "tokens/s",
                         "tokens_per_s", pct=pct, bound=bound, compact=True,
                         order=(dtype != "bf16") * 1e9 + batch * seq_len))
    gen = df[df["role"].isin(PEERS) & (df["workload"] == "generate")]
    for (dtype, seq_len, batch, new), got in _by_key(gen, ["role_dtype", "seq_len", "batch",
                                                           "max_new_tokens"]).items():
        e, p = got.get("optimized"), got.get("hf")
        rows.append(_row("decode", f"{dtype} batch {batch}, {seq_len}-token prompts, {int(new or 0)} new tokens",
                         "optimized", "hf", e, p, "ms inter-token p50", "itl_p50_ms", higher_is_better=False,
                         pct=cell(e, "pct_of_decode_floor"), bound="decode floor", compact=True, order=2e9 + batch))
    return rows


def _ladder_rows(df: pd.DataFrame, cfg) -> list[dict]:
    rows = []
    phases = df[df["role"].isin(PHASE_ENGINES) & (df["workload"] != "generate")]
    for (seq_len, ranks), g in phases.groupby(["seq_len", "ranks"], sort=True):
        plain = {r["role"]: r for _, r in g.iterrows() if _missing(r["label"])}
        order = 3e9 + seq_len * 10 + ranks

        def phase_row(name, e, p, peer_name, compact=False):
            pct, bound = floor_of(e, cfg, "fp32")
            return _row("ladder", f"fp32 {seq_len} tokens, {ranks} rank{'s' if ranks > 1 else ''}", name, peer_name,
                        e, p, "samples/s", "samples_per_s", pct=pct, bound=bound, compact=compact, order=order)
        for i in range(1, len(PHASE_ENGINES)):
            e = plain.get(PHASE_ENGINES[i])
            if e is not None:
                rows.append(phase_row(f"phase {i}", e, plain.get(PHASE_ENGINES[i - 1]), f"phase {i - 1}"))
        last = PHASE_ENGINES[-1]
        if last in plain:
            rows.append(phase_row("phase 5", plain[last], plain.get(PHASE_ENGINES[0]), "phase 0", compact=True))
        for _, r in g[g["label"].notna() & (g["role"] == last)].iterrows():
            rows.append(phase_row(f"phase 5 {r['label']}", r, plain.get(last), "phase 5", compact=True))
    return rows


def _accuracy_text(row) -> str:
    if row is None:
        return "not run"
    parts = [f"{name} {fmt.format(cell(row, key))}" for key, name, fmt in ACCURACY_FIELDS if cell(row, key) is not None]
    return ", ".join(parts) or "no accuracy columns in the record"


def _accuracy_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    prefill = df[df["role"].isin(PEERS) & (df["workload"] != "generate")]
    for (dtype, seq_len, batch), got in _by_key(prefill, ["role_dtype", "seq_len", "batch"]).items():
        e, p = got.get("optimized"), got.get("hf")
        row = _row("accuracy", f"{dtype} {batch}x{seq_len}, {int(cell(e if e is not None else p, 'samples') or 0)} "
                   "prompts vs fp32 answers", "optimized", "hf", e, p, "", "kl_mean", higher_is_better=False,
                   compact=True, order=4e9 + seq_len)
        row["engine_value"], row["peer_value"] = _accuracy_text(e), _accuracy_text(p)
        rows.append(row)
    return rows


def headline_rows(df: pd.DataFrame, meta: PartMeta | None = None) -> pd.DataFrame:
    """The headline rows of one run's frame (records_frame), in reading order."""
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = with_roles(df, meta)
    cfg = model_config_of(df, meta)
    if meta is not None and meta.kind == "accuracy":
        rows = _accuracy_rows(df)
    else:
        rows = _peer_rows(df, cfg) + _ladder_rows(df, cfg)
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.sort_values("order", kind="stable").reset_index(drop=True)


# ---- text -------------------------------------------------------------------------------------
def number(x) -> str:
    if _missing(x):
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def engine_vs_peer(r) -> str:
    if r["kind"] == "accuracy":
        return f"{r['engine']}: {r['engine_value']}; {r['peer']}: {r['peer_value']}"
    if not r["peer"]:
        return f"{r['engine']} {number(r['engine_value'])} {r['unit']}"
    return f"{r['engine']} {number(r['engine_value'])} vs {r['peer']} {number(r['peer_value'])} {r['unit']}"


def ratio_text(r) -> str:
    if _missing(r["ratio"]):
        return "n/a" if r["kind"] != "accuracy" else (f"KL {r['peer']}/{r['engine']} n/a")
    if r["kind"] == "accuracy":
        return f"KL {r['peer']}/{r['engine']} {r['ratio']:.2g}x"
    return f"{r['ratio']:,.0f}x" if r["ratio"] >= 100 else f"{r['ratio']:.3g}x"


def floor_text(r) -> str:
    if _missing(r["pct_floor"]):
        return "n/a"
    pct = r["pct_floor"]
    return (f"{pct:.0f} %" if pct >= 10 else f"{pct:.2g} %") + (f" ({r['bound']})" if r["bound"] else "")


def text_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as the strings a table shows: shape, engine vs peer, ratio, % of floor, validity."""
    return pd.DataFrame({"shape": rows["shape"], "engine vs peer": [engine_vs_peer(r) for _, r in rows.iterrows()],
                         "ratio": [ratio_text(r) for _, r in rows.iterrows()],
                         "% of floor": [floor_text(r) for _, r in rows.iterrows()],
                         "validity": rows["validity"]}, index=rows.index)


